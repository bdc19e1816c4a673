"""Markdown for the report.md a command writes beside its results: tables, code blocks and escaped text.

Reports are plain files a person opens in an editor and ``lmlab serve --runs`` renders (CommonMark
plus tables, raw HTML shown as text). Text a model generated, a file name or a prompt goes in a
code block or through :func:`escape`, so that its ``*``, ``|``, ``#`` or backticks read as written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# what can start markup anywhere in a line; an underscore inside a word (N_opt) cannot, so it stays
_INLINE = re.compile(r"([\\`*\[\]<>|&~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
_LINE_START = re.compile(r"^([#>+=-]|\d+(?=[.)]))")  # what starts a heading, quote or list at its start


def escape(text: str) -> str:
    """Return ``text`` on one line (newlines become spaces) with the characters that could start
    markdown markup backslash-escaped, so it renders as written inside a paragraph, list item or
    table cell; other punctuation is left alone, so the file reads plainly too."""
    text = _INLINE.sub(r"\\\1", " ".join(str(text).split()))
    m = _LINE_START.match(text)
    if m is None:
        return text
    if m.group(1)[0].isdigit():  # "1." starts a list: escape the dot, not the digits
        end = m.end()
        return text[:end] + "\\" + text[end:]
    return "\\" + text


def code_block(text: str, lang: str = "text") -> str:
    """Return ``text`` as a fenced code block whose fence is longer than any backtick run inside it."""
    runs = [len(m) for m in re.findall(r"`+", text)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return f"{fence}{lang}\n{text.rstrip(chr(10))}\n{fence}"


def table(columns: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Return a markdown table: ``columns`` as its header, ``rows`` of already formatted cells; the
    first ``left`` columns are left-aligned, the others (figures) right-aligned. A ``|`` in a cell that
    is not escaped yet is escaped, so it cannot split the cell."""
    def cells(row: Sequence[str]) -> str:
        return "| " + " | ".join(_UNESCAPED_PIPE.sub(r"\\|", str(c)) for c in row) + " |"

    rule = "|" + "|".join("---" if i < left else "---:" for i in range(len(columns))) + "|"
    return "\n".join([cells(columns), rule, *(cells(r) for r in rows)])


def settings_list(settings: dict[str, object]) -> str:
    """Return ``settings`` as a bullet list of ``name: value`` lines, values in inline code."""
    return "\n".join(f"- {escape(k)}: {inline_code(v)}" for k, v in settings.items())


def inline_code(value: object) -> str:
    """Return ``value`` as inline code (fenced by more backticks than it holds), on one line."""
    text = " ".join(str(value).split())
    if not text:
        return "(empty)"
    runs = [len(m) for m in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
