"""What a cache may do with each response (``Cache-Control``), decided here.

- A file's bytes and its preview: ``private, max-age=86400``, or ``private, no-store`` when the
  file has a download limit or an expiry (a cache must not serve what the service would refuse).
- The web page and its assets: ``no-cache`` (revalidated with their ETag on every load, so a new
  release's page never mixes with an old script; set by ``mediasvc.web``).
- JSON: ``no-store`` (``JsonCacheControlMiddleware``). Metadata, listings and health are a
  file's or the node's changing state (``downloads``, ``cloud_status``, ``local``); an upload's
  response carries the delete token and ``/link`` a signed URL, both credentials; an error is
  true only now. None has a validator, so revalidating would be a full fetch anyway.
  The exception is the OpenAPI schema, ``no-cache``: stable within a release, revalidated so
  that a new release's is seen.
A response that sets its own ``Cache-Control`` keeps it.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mediasvc.db.file_row import FileRow
from mediasvc.db.models import FileRecord

CACHE_PRIVATE_DAY = "private, max-age=86400"
CACHE_NO_STORE = "private, no-store"
JSON_CACHE_CONTROL = "no-store"
SCHEMA_CACHE_CONTROL = "no-cache"


def file_cache_control(record: FileRecord | FileRow) -> str:
    """For a file's bytes and everything derived from them (its preview)."""
    limited = record.max_downloads is not None or record.expires_at is not None
    return CACHE_NO_STORE if limited else CACHE_PRIVATE_DAY


def _is_json(content_type: str) -> bool:
    essence = content_type.split(";", 1)[0].strip().lower()
    return essence == "application/json" or essence.endswith("+json")


class JsonCacheControlMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware around streaming bodies): looks at the start only."""

    def __init__(self, app: ASGIApp, *, schema_paths: frozenset[str]) -> None:
        self.app = app
        self.schema_paths = schema_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = self._saying_cache_control(send, scope["path"])
        await self.app(scope, receive, send)

    def _saying_cache_control(self, send: Send, path: str) -> Send:
        value = SCHEMA_CACHE_CONTROL if path in self.schema_paths else JSON_CACHE_CONTROL

        async def send_with_cache_control(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "cache-control" not in headers and _is_json(headers.get("content-type", "")):
                    headers["Cache-Control"] = value
            await send(message)

        return send_with_cache_control
