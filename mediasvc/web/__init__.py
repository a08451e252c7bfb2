"""The web page: upload with progress, the list of files, a file page with a player.

Plain static files (``static/``): ``/`` answers ``index.html`` and ``/static/`` the rest, through
the same response as downloads (``delivery.serve``: ``If-None-Match``/``If-Modified-Since`` →
304, ranges). Only the files found when the app is created are served, by their exact name. The
page is one document; file pages are ``/#/files/<uid>``, so a deep link needs no route here.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from mediasvc.api.common import services_of
from mediasvc.delivery.serve import Representation, deliver
from mediasvc.delivery.sources import ByteSource, LocalFile
from mediasvc.errors import NotFound

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


@dataclass(frozen=True)
class Asset:
    path: Path
    representation: Representation


def _asset(path: Path) -> Asset:
    data = path.read_bytes()
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Asset(
        path,
        Representation(
            # From the content, so every node and every restart agree.
            etag=f'"{hashlib.sha256(data).hexdigest()[:32]}"',
            last_modified=datetime.fromtimestamp(path.stat().st_mtime, UTC),
            media_type=media_type,
            headers=_PAGE_HEADERS,
        ),
    )


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its assets at ``/static/``."""
    assets = {
        path.relative_to(STATIC_DIR).as_posix(): _asset(path)
        for path in sorted(STATIC_DIR.rglob("*"))
        if path.is_file()
    }

    async def serve(request: Request, asset: Asset) -> Response:
        async def open_asset() -> ByteSource:
            return await LocalFile.open(asset.path)

        config = services_of(request).send_config
        return await deliver(request, asset.representation, open_asset, config)

    async def index(request: Request) -> Response:
        return await serve(request, assets["index.html"])

    async def static(request: Request, name: str) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise NotFound("no such file")
        return await serve(request, asset)

    app.add_api_route("/", index, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route(
        "/static/{name:path}", static, methods=["GET", "HEAD"], include_in_schema=False
    )
