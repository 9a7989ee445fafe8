"""HTML escaping and heading ids."""

from __future__ import annotations

# "&" must be replaced first, or the entities produced by the other replacements would be escaped again.
REPLACEMENTS = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"))


def escape_html(text: str) -> str:
    """Escape the characters that are special in HTML text and attribute values."""
    for char, entity in REPLACEMENTS:
        text = text.replace(char, entity)
    return text


def slugify(text: str) -> str:
    """Heading text -> an id: its lower-case words joined by "-"."""
    words = "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()
    return "-".join(words)
