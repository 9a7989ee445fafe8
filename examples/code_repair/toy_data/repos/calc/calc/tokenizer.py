"""Split an arithmetic expression into tokens."""

from __future__ import annotations

from dataclasses import dataclass

OPERATORS = "+-*/%^()"


@dataclass(frozen=True)
class Token:
    kind: str  # "num", "op" or "name"
    text: str
    pos: int


class TokenizeError(ValueError):
    """Raised on a character that cannot start a token."""


def _read_number(source: str, start: int) -> int:
    """Index just past the number that starts at `start` (digits with at most one dot)."""
    end = start
    seen_dot = False
    while end < len(source) and (source[end].isdigit() or source[end] == "."):
        if source[end] == ".":
            if seen_dot:
                break
            seen_dot = True
        end += 1
    return end


def _read_name(source: str, start: int) -> int:
    """Index just past the identifier that starts at `start`."""
    end = start
    while end < len(source) and (source[end].isalnum() or source[end] == "_"):
        end += 1
    return end


def tokenize(source: str) -> list[Token]:
    """Turn `source` into a list of tokens, skipping whitespace."""
    tokens: list[Token] = []
    i = 0
    while i < len(source):
        ch = source[i]
        if ch.isspace():
            i += 1
        elif ch.isdigit() or ch == ".":
            end = _read_number(source, i)
            tokens.append(Token("num", source[i:end], i))
            i = end
        elif ch.isalpha() or ch == "_":
            end = _read_name(source, i)
            tokens.append(Token("name", source[i:end], i))
            i = end
        elif ch in OPERATORS:
            tokens.append(Token("op", ch, i))
            i += 1
        else:
            raise TokenizeError(f"unexpected character {ch!r} at position {i}")
    return tokens
