"""Report browsing: ``GET /reports`` lists the result folders under ``--runs``: those holding a
``report.md`` (``lmlab lineage``, ``scaling fit``/``sweep``, ``align frontier``, ``sft``, ``reward train``,
``dpo``, ``rlhf``) or else a ``samples.md`` (tool and prompting evaluations);
``GET /reports/{path}`` renders that page (or any ``.md`` file) as HTML, followed by the folder's plots
that the page does not show itself and links to its other files, and serves those files.

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
PAGES = (REPORT, "samples.md")  # the page of a result folder: the first of these it holds
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
    """Return the result folders under ``runs_dir`` (itself included; those holding one of
    :data:`PAGES`), relative to it and sorted; symlinked folders are not followed, hidden ones skipped."""
    root = runs_dir.resolve()
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        page_of = next((Path(folder) / name for name in PAGES if name in files), None)
        if page_of is not None and inside(root, page_of) is not None:
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


def folder_page(folder: Path) -> Path | None:
    """The markdown page of a result folder (the first of :data:`PAGES` it holds), or None."""
    return next((folder / name for name in PAGES if (folder / name).is_file()), None)


def title_of(report: Path) -> str:
    """The text of the first ``# `` heading in ``report`` (a markdown file), or '' when none."""
    try:
        with report.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("# "):
                    return line[2:].strip()
    except OSError:
        pass  # an unreadable report is still listed (by its folder, without a title)
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
        report = folder_page(runs_dir / rel)
        title = title_of(report) if report is not None else ""
        rows.append(f'<li><a href="{html.escape(href)}">{html.escape(name)}</a>'
                    + (f" &mdash; {html.escape(title)}" if title else "") + "</li>")
    none = f"<p>No {' or '.join(PAGES)} under this runs folder yet.</p>"
    items = "<ul>" + "".join(rows) + "</ul>" if rows else none
    return page("Reports", f"<h1>Reports</h1>{items}")


def report_page(runs_dir: Path, target: Path, url: str) -> HTMLResponse:
    """``target`` (a markdown file) rendered; ``url`` is its folder's URL, the base of its links."""
    text = target.read_text(encoding="utf-8", errors="replace")
    rel = target.relative_to(runs_dir.resolve()).as_posix()
    nav = f'<p><a href="/reports">&larr; all reports</a> &middot; <code>{html.escape(rel)}</code></p>'
    body = nav + markdown_html(text) + folder_files(runs_dir, target, text)
    return page(title_of(target) or rel, body, base=url)


def folder_files(runs_dir: Path, report: Path, text: str) -> str:
    """HTML after a report: the images beside it that its markdown ``text`` does not name (such as
    a plot beside a samples.md), then links to every other file beside it (names escaped); files
    whose resolved target leaves ``runs_dir`` are left out."""
    root = runs_dir.resolve()
    beside = report.parent.iterdir()
    files = sorted(f for f in beside if f.is_file() and f != report and not f.name.startswith("."))
    files = [f for f in files if inside(root, f) is not None]
    plots = [f for f in files if f.suffix.lower() in IMAGES and f.name not in text]
    out = ""
    if plots:
        imgs = "".join(f'<p><img src="{_href(f)}" alt="{html.escape(f.name)}"></p>' for f in plots)
        out += f"<h2>Plots</h2>{imgs}"
    if files:
        links = "".join(f'<li><a href="{_href(f)}">{html.escape(f.name)}</a></li>' for f in files)
        out += f"<h2>Files</h2><ul>{links}</ul>"
    return out


def _href(f: Path) -> str:
    """The attribute-safe relative URL of a file beside the page."""
    return html.escape(quote(f.name, safe=""))


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
            report = folder_page(target)
            if report is None:
                raise HTTPException(404)
            folder = rel.strip("/")
            return report_page(runs, report, "/reports/" + (quote(folder) + "/" if folder else ""))
        if target.suffix.lower() == ".md":
            parent = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
            return report_page(runs, target, "/reports/" + quote(parent))
        return file_response(target)
