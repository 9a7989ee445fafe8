"""Word statistics."""

from __future__ import annotations

import re
from collections import Counter

WORD_RE = re.compile(r"[A-Za-z']+")
STOP_WORDS = frozenset({"a", "an", "and", "in", "of", "or", "the", "to"})


def words(text: str) -> list[str]:
    """The words of `text`, lower-cased (apostrophes stay inside words)."""
    return [match.group().lower() for match in WORD_RE.finditer(text)]


def word_count(text: str) -> int:
    return len(words(text))


def top_words(text: str, n: int = 3, skip_stop_words: bool = True) -> list[tuple[str, int]]:
    """The `n` most frequent words with their counts, most frequent first, ties in alphabetical order."""
    counts = Counter(word for word in words(text) if not (skip_stop_words and word in STOP_WORDS))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ranked[:n]


def average_word_length(text: str) -> float:
    found = words(text)
    if not found:
        return 0.0
    return sum(len(word) for word in found) / len(found)


def is_palindrome(text: str) -> bool:
    """True when the letters and digits of `text` read the same backwards, ignoring case."""
    letters = [ch.lower() for ch in text if ch.isalnum()]
    return letters == letters[::-1]
