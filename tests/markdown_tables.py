"""Read back the markdown tables of a report.md, so tests compare its cells with a command's --json."""

from __future__ import annotations


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Return every pipe table in ``text``, keyed by its first header cell, as rows of {header: cell}."""
    found: dict[str, list[dict[str, str]]] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            head = _cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("| "):
                rows.append(dict(zip(head, _cells(lines[i]))))
                i += 1
            found[head[0]] = rows
        else:
            i += 1
    return found


def _cells(line: str) -> list[str]:
    parts, cell, escaped = [], "", False
    for ch in line.strip()[1:-1]:
        if ch == "|" and not escaped:
            parts.append(cell.strip())
            cell = ""
        else:
            cell += ch
        escaped = ch == "\\" and not escaped
    return [*parts, cell.strip()]
