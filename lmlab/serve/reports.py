"""Report browsing: ``GET /reports`` lists the run folders under ``--runs`` that hold a ``report.md``
(lineage, scaling, alignment results); ``GET /reports/{path}`` renders a folder's ``report.md`` (or
any ``.md`` file) as HTML and serves the files it links, such as its PNG plots.

Everything from a run is shown as text: names and titles are HTML-escaped and the markdown renderer
(markdown-it-py, CommonMark plus tables) escapes raw HTML and refuses ``javascript:`` links. Files are
served only from inside the runs folder: a path with ``..``, an absolute path, or one whose resolved
target (symlinks followed) leaves the folder is answered 404, whatever its URL encoding. Served files
are sandboxed by Content-Security-Policy, and only images keep their own content type.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from markdown_it import MarkdownIt
from starlette.exceptions import HTTPException

REPORT = "report.md"
# the page may show its own inline styles and the runs folder's images, nothing else
PAGE_CSP = ("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; base-uri 'self'; "
            "form-action 'none'")
FILE_CSP = "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
IMAGES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
          ".webp": "image/webp", ".svg": "image/svg+xml"}
TEXTS = {".md", ".txt", ".json", ".jsonl", ".yaml", ".yml", ".csv", ".tsv", ".log", ".html", ".htm"}
_STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
          "line-height:1.5}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem}"
          "img{max-width:100%}pre{background:#f4f4f4;padding:.5rem;overflow-x:auto}code{font-size:.9em}")


def markdown_html(text: str) -> str:
    """Return ``text`` (markdown) rendered to HTML with raw HTML escaped and unsafe links dropped."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    return md.render(text)


def find_reports(runs_dir: Path) -> list[Path]:
    """Return the folders under ``runs_dir`` (itself included) holding a ``report.md``, relative to it
    and sorted; symlinked folders are not followed, hidden folders are skipped."""
    root = runs_dir.resolve()
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if REPORT in files and inside(root, Path(folder) / REPORT) is not None:
            found.append(Path(folder).relative_to(root))
    return sorted(found)


def inside(root: Path, path: Path) -> Path | None:
    """Return ``path`` resolved (symlinks followed) when it lies inside ``root`` (resolved), else None."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    return target if target.is_relative_to(root) else None


def locate(runs_dir: Path, rel: str) -> Path | None:
    """Return the existing file or folder that URL path ``rel`` (already percent-decoded) names inside
    ``runs_dir``, or None when it is absolute, has a ``..`` part, leaves the folder or does not exist."""
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith("/") or any(p == ".." for p in parts) or "\x00" in rel:
        return None
    root = runs_dir.resolve()
    target = inside(root, root.joinpath(*[p for p in parts if p not in ("", ".")]))
    return target if target is not None and target.exists() else None


def title_of(report: Path) -> str:
    """The text of the first ``# `` heading in ``report`` (a markdown file), or '' when none."""
    try:
        with report.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("# "):
                    return line[2:].strip()
    except OSError:
        pass
    return ""


def page(title: str, body: str, base: str | None = None) -> HTMLResponse:
    """An HTML page (``title``: plain text, escaped here; ``body``: HTML already escaped) sent with
    a Content-Security-Policy that allows no script."""
    head = f'<base href="{html.escape(base)}">' if base else ""
    doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{head}'
           f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>")
    headers = {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"}
    return HTMLResponse(doc, headers=headers)


def listing(runs_dir: Path | None) -> HTMLResponse:
    """The ``/reports`` page: a link to every report under ``runs_dir`` with its title."""
    if runs_dir is None:
        return page("Reports", "<h1>Reports</h1><p>No runs folder: start the server with "
                               "<code>--runs DIR</code> to browse the reports in it.</p>")
    rows = []
    for rel in find_reports(runs_dir):
        name = rel.as_posix() if rel.parts else "."
        href = "/reports/" + "".join(quote(p, safe="") + "/" for p in rel.parts)
        title = title_of(runs_dir / rel / REPORT)
        rows.append(f'<li><a href="{html.escape(href)}">{html.escape(name)}</a>'
                    + (f" &mdash; {html.escape(title)}" if title else "") + "</li>")
    items = "<ul>" + "".join(rows) + "</ul>" if rows else f"<p>No {REPORT} under this runs folder yet.</p>"
    return page("Reports", f"<h1>Reports</h1>{items}")


def report_page(runs_dir: Path, target: Path, url: str) -> HTMLResponse:
    """``target`` (a markdown file) rendered; ``url`` is its folder's URL, the base of its links."""
    text = target.read_text(encoding="utf-8", errors="replace")
    rel = target.relative_to(runs_dir.resolve()).as_posix()
    nav = f'<p><a href="/reports">&larr; all reports</a> &middot; <code>{html.escape(rel)}</code></p>'
    return page(title_of(target) or rel, nav + markdown_html(text), base=url)


def file_response(target: Path) -> Response:
    """``target`` sent sandboxed: images with their type, text as text/plain, the rest as a download."""
    suffix = target.suffix.lower()
    headers = {"Content-Security-Policy": FILE_CSP, "X-Content-Type-Options": "nosniff"}
    if suffix in IMAGES:
        return FileResponse(target, media_type=IMAGES[suffix], headers=headers)
    if suffix in TEXTS:
        return FileResponse(target, media_type="text/plain; charset=utf-8", headers=headers)
    return FileResponse(target, media_type="application/octet-stream", headers=headers,
                        content_disposition_type="attachment", filename=target.name)


def mount_reports(app: FastAPI, runs_dir: Path | None, auth: Callable[..., None]) -> None:
    """Add ``GET /reports`` and ``GET /reports/{path}`` to ``app``, both behind the ``auth`` dependency
    (the API key when one is set); ``runs_dir`` None: the listing says how to give one, paths are 404."""
    runs = Path(runs_dir) if runs_dir is not None else None

    @app.get("/reports", dependencies=[Depends(auth)], response_class=HTMLResponse)
    def _reports() -> HTMLResponse:
        return listing(runs)

    @app.get("/reports/{rel:path}", dependencies=[Depends(auth)])
    def _report(rel: str) -> Response:
        target = locate(runs, rel) if runs is not None else None
        if target is None:
            raise HTTPException(404)
        if target.is_dir():
            if not (target / REPORT).is_file():
                raise HTTPException(404)
            folder = rel.strip("/")
            return report_page(runs, target / REPORT, "/reports/" + (quote(folder) + "/" if folder else ""))
        if target.suffix.lower() == ".md":
            parent = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
            return report_page(runs, target, "/reports/" + quote(parent))
        return file_response(target)
