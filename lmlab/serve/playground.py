"""The browser playground: ``GET /`` serves ``static/index.html`` and ``GET /static/...`` its CSS and
JavaScript, all public (the page itself asks for the API key and keeps it in memory only). The page's
Content-Security-Policy lets it run only its own script and load only from its own origin (the
reports' plots it fetched with the key show from blob: URLs)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
# style attributes are allowed: parsing a report (inertly, to rebuild it) meets its tables' alignments
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
            "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def mount_playground(app: FastAPI) -> None:
    """Add the playground's routes (``/`` and ``/static``) to ``app``; returns nothing."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP,
                                     "X-Content-Type-Options": "nosniff"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
