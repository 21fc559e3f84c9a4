"""The service's web page: ``index.html`` at ``/``, its script and style under ``/web/``.

The files need no token; the page asks for the organisation and the token, and its script sends the
token with every API call it makes (the same routes as any client). Nothing is fetched from outside
the server: the page is hand-written HTML, CSS and one script, and its charts are SVG drawn by it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).with_name("web")

# the page runs its own script and style only and talks to its own server only
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def mount_web(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files under ``/web/``."""

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
