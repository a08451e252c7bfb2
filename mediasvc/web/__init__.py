"""The web page: upload with progress, the list of files, a file page with a player.

Plain static files (``static/``): ``/`` answers ``index.html`` and ``/static/`` the rest. The
page is one document; file pages are ``/#/files/<uid>``, so a deep link needs no route here.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"

# The page loads only its own script and style and fetches only this origin; media and
# previews come from the API on the same origin. Nothing inline, nothing from a CDN.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate (ETag) on every load, so a new release's page never mixes with an old script.
    "Cache-Control": "no-cache",
}


class _StaticFiles(StaticFiles):
    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(_PAGE_HEADERS)
        return response


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its assets at ``/static/``."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    app.add_api_route("/", index, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount("/static", _StaticFiles(directory=STATIC_DIR), name="static")
