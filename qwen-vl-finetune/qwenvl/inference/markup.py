"""Model and user text made safe to show in a Markdown chat (the demo's): nothing in it can make the browser fetch a
URL or render raw HTML, and code shows exactly as written.

Outside code, ``<`` and ``&`` are escaped (so raw HTML is shown as text, not rendered) and Markdown images become
plain links (``![x](url)`` -> ``[x](url)``). Inside code spans and fenced code blocks nothing is escaped: Markdown
escapes code itself and does not decode entities there, so escaping it again would show ``&lt;div&gt;``.

What counts as code follows CommonMark, more strictly: a code span opens with a run of backticks not preceded by a
backslash and closes with the next run of the same length on the same line, and holds no ``|`` (a table row splits
cells at pipes before it finds code spans); a fence is a line of three or more backticks or tildes indented at most
three spaces, closed by a like line at least as long, or by the end of the text. Where this reading and the
renderer's could differ (a span across lines, a fence indented in a list), the text is treated as prose: the error
can only show an entity, never render markup.
"""

from __future__ import annotations

import html
import re


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_BACKTICKS = re.compile(r"`+")


def _prose(text: str) -> str:
    # "![" -> "[": every image (inline, reference, with code in its text) becomes a link.
    return html.escape(text, quote=False).replace("![", "[")


def _line(text: str) -> str:
    """A line with its code spans kept as they are and the rest escaped."""
    out: list[str] = []
    pos = 0  # text before pos is in out
    search = 0
    while (opener := _BACKTICKS.search(text, search)) is not None:
        start = opener.start()
        slashes = len(text[:start]) - len(text[:start].rstrip("\\"))
        run = opener.group()
        if slashes % 2:  # an escaped backtick is literal; the rest of the run may still open a span
            if len(run) == 1:
                search = opener.end()
                continue
            start, run = start + 1, run[1:]
        closer = None
        for candidate in _BACKTICKS.finditer(text, opener.end()):
            if len(candidate.group()) == len(run):
                closer = candidate
                break
        if closer is None or "|" in text[start : closer.end()]:  # literal backticks, or maybe a table's cells
            search = opener.end()
            continue
        out.append(_prose(text[pos:start]))
        out.append(text[start : closer.end()])
        pos = search = closer.end()
    out.append(_prose(text[pos:]))
    return "".join(out)


def safe_markdown(text: str) -> str:
    """``text`` ready for a Markdown renderer that must not fetch URLs or render raw HTML (see the module doc)."""
    out: list[str] = []
    fence: str | None = None
    for line in text.splitlines(keepends=True):
        marker = _FENCE.match(line)
        if fence is not None:
            out.append(line)  # inside a fence: as written
            if marker and marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence):
                if not line.strip().strip(fence[0]):  # a closing fence has nothing after its marker
                    fence = None
            continue
        if marker and not (marker.group(1)[0] == "`" and "`" in line.strip()[len(marker.group(1)) :]):
            fence = marker.group(1)
            out.append(_prose(line))  # the info string is prose
            continue
        out.append(_line(line))
    return "".join(out)


def display_chunks(text: str, size: int = 3000) -> list[str]:
    """``text`` cut into pieces of at most about ``size`` characters, to show as consecutive chat messages: while a
    long answer streams, only its last piece changes, so a browser re-renders that piece and not the whole answer.

    A piece ends after a blank line, else after a line end, else after a space, never inside a fenced code block
    (a fence longer than ``size`` stays whole). Every cut is fixed once the text runs past the piece, so the
    pieces already shown never change as the text grows."""
    pieces: list[str] = []
    start = 0
    while len(text) - start > size:
        window = text[start : start + size]
        cut = _last_break(window)
        if cut <= 0:
            break
        pieces.append(window[:cut])
        start += cut
    pieces.append(text[start:])
    return pieces


def _last_break(window: str) -> int:
    """The best place to cut ``window`` (an index after a blank line, a line end or a space outside fenced code),
    or 0 for none."""
    fence: str | None = None
    blank = line = 0
    pos = 0
    for current in window.splitlines(keepends=True):
        marker = _FENCE.match(current)
        if fence is not None:
            if marker and marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence):
                if not current.strip().strip(fence[0]):
                    fence = None
        elif marker and not (marker.group(1)[0] == "`" and "`" in current.strip()[len(marker.group(1)) :]):
            fence = marker.group(1)
        pos += len(current)
        if fence is None and current.endswith("\n") and pos < len(window):
            line = pos
            if not current.strip():
                blank = pos
    if fence is not None:
        return blank or line
    if blank or line:
        return blank or line
    last_line_start = window.rfind("\n") + 1
    space = window.rfind(" ", last_line_start)
    return space + 1 if space > 0 else 0
