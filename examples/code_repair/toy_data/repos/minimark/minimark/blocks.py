"""Block structure: headings, bullet lists, code fences and paragraphs."""

from __future__ import annotations

from minimark.escape import escape_html, slugify
from minimark.inline import render_inline

FENCE = "```"
MAX_HEADING_LEVEL = 6


def heading_level(line: str) -> int:
    """The number of leading "#" of a heading line ("# Title" -> 1); 0 when the line is no heading."""
    stripped = line.lstrip("#")
    level = len(line) - len(stripped)
    if 1 <= level <= MAX_HEADING_LEVEL and stripped.startswith(" "):
        return level
    return 0


def _code_block(lines: list[str]) -> str:
    return "<pre><code>" + escape_html("\n".join(lines)) + "</code></pre>"


def render(source: str) -> str:
    """Render a whole document to HTML, one block per output line."""
    out: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []
    code: list[str] | None = None

    def flush() -> None:
        if paragraph:
            out.append("<p>" + render_inline(" ".join(paragraph)) + "</p>")
            paragraph.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{render_inline(item)}</li>" for item in items) + "</ul>")
            items.clear()

    for line in source.splitlines():
        if code is not None:
            if line.strip() == FENCE:
                out.append(_code_block(code))
                code = None
            else:
                code.append(line)
            continue
        level = heading_level(line)
        if line.strip() == FENCE:
            flush()
            code = []
        elif level:
            flush()
            title = line[level:].strip()
            out.append(f'<h{level} id="{slugify(title)}">{render_inline(title)}</h{level}>')
        elif line.startswith(("- ", "* ")):
            if paragraph:
                flush()
            items.append(line[2:].strip())
        elif not line.strip():
            flush()
        else:
            if items:
                flush()
            paragraph.append(line.strip())
    flush()
    if code is not None:
        out.append(_code_block(code))
    return "\n".join(out)
