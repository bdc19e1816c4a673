"""The browser playground: ``GET /`` serves ``static/index.html`` and ``GET /static/...`` its CSS and
JavaScript, all public (the page itself asks for the API key and keeps it in memory only)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")


def mount_playground(app: FastAPI) -> None:
    """Add the playground's routes (``/`` and ``/static``) to ``app``; returns nothing."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
