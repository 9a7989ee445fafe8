"""Convert identifiers between naming styles."""

from __future__ import annotations

import re

# A position between a lower-case letter or digit and an upper-case letter: "someName" -> "some|Name".
_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def split_words(name: str) -> list[str]:
    """Split an identifier in camelCase, PascalCase, snake_case or kebab-case into lower-case words."""
    spaced = _BOUNDARY.sub(" ", name)
    parts = re.split(r"[\s_\-]+", spaced)
    return [part.lower() for part in parts if part]


def to_snake(name: str) -> str:
    return "_".join(split_words(name))


def to_kebab(name: str) -> str:
    return "-".join(split_words(name))


def to_camel(name: str) -> str:
    """camelCase: the first word stays lower-case."""
    words = split_words(name)
    if not words:
        return ""
    return words[0] + "".join(word.capitalize() for word in words[1:])


def to_pascal(name: str) -> str:
    return "".join(word.capitalize() for word in split_words(name))
