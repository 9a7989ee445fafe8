"""Small text helpers."""

from textkit.case import split_words, to_camel, to_kebab, to_pascal, to_snake
from textkit.stats import average_word_length, is_palindrome, top_words, word_count, words
from textkit.wrap import center, dedent_lines, truncate, wrap

__all__ = [
    "average_word_length",
    "center",
    "dedent_lines",
    "is_palindrome",
    "split_words",
    "to_camel",
    "to_kebab",
    "to_pascal",
    "to_snake",
    "top_words",
    "truncate",
    "word_count",
    "words",
    "wrap",
]
