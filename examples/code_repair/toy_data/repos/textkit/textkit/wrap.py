"""Wrapping, truncating, centering and dedenting text."""

from __future__ import annotations


def truncate(text: str, width: int, ellipsis: str = "...") -> str:
    """Shorten `text` to at most `width` characters, ending with `ellipsis` when it was cut."""
    if len(text) <= width:
        return text
    if width <= len(ellipsis):
        return ellipsis[:width]
    return text[: width - len(ellipsis)] + ellipsis


def wrap(text: str, width: int = 70) -> list[str]:
    """Greedy word wrap into lines of at most `width` characters (a longer word gets a line of its own)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= width:
            current += " " + word
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def center(text: str, width: int, fill: str = " ") -> str:
    """Center `text` in `width` characters; when the padding is odd, the extra fill character goes right."""
    total = max(width - len(text), 0)
    left = total // 2
    right = total - left
    return fill * left + text + fill * right


def dedent_lines(lines: list[str]) -> list[str]:
    """Remove the indentation that all non-blank lines share."""
    indents = [len(line) - len(line.lstrip(" ")) for line in lines if line.strip()]
    if not indents:
        return list(lines)
    cut = min(indents)
    return [line[cut:] for line in lines]
