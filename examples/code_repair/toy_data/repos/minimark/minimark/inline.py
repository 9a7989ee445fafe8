"""Inline markup: **bold**, *italic*, `code` and [links](url)."""

from __future__ import annotations

import re

from minimark.escape import escape_html

CODE_RE = re.compile(r"`([^`]+)`")
BOLD_RE = re.compile(r"\*\*(.+?)\*\*")
ITALIC_RE = re.compile(r"\*(.+?)\*")
LINK_RE = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def render_inline(text: str) -> str:
    """Render the inline markup of one line of text to HTML; code spans are taken literally."""
    pieces = CODE_RE.split(text)
    out = []
    for index, piece in enumerate(pieces):
        if index % 2 == 1:
            out.append(f"<code>{escape_html(piece)}</code>")
        else:
            out.append(_render_plain(piece))
    return "".join(out)


def _render_plain(text: str) -> str:
    text = escape_html(text)
    text = LINK_RE.sub(r'<a href="\2">\1</a>', text)
    text = BOLD_RE.sub(r"<strong>\1</strong>", text)
    text = ITALIC_RE.sub(r"<em>\1</em>", text)
    return text
