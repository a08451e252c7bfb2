"""Requests that miss a route by a method or a trailing slash, answered with what to send instead.

Starlette answers a wrong method with the ``Allow`` of the first route on the path only (the
upload path has one route per method), and a path that differs from a route by its trailing slash
with a bare 307. The app turns both off (``redirect_slashes=False``) and asks here instead: every
method any route takes on the path, and whether the path with (or without) its slash is a route.
A form sent to the raw-upload path is not redirected: it is told where forms go.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import BaseRoute, Match

from mediasvc.ingest.sniff import is_multipart

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
UPLOAD_PREFIX = "/api/v1/files"
FORM_UPLOAD_PATH = "/api/v1/files"
RAW_UPLOAD_PATH = "/api/v1/files/stream"
UPLOAD_HINT = (
    "to upload: curl -T FILE {base}/api/v1/files/stream/ (PUT or POST; the name from the URL), "
    "curl --data-binary @FILE {base}/api/v1/files/stream (POST), "
    "curl -F file=@FILE {base}/api/v1/files (POST, multipart)"
)


def _routes(request: Request) -> list[BaseRoute]:
    return list(request.app.router.routes)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on this path: each is tried against the routes (FastAPI
    nests included routers, so asking each route for its methods would miss most)."""
    routes = _routes(request)
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    ]


def slash_variant(request: Request) -> str | None:
    """The path with its trailing slash added or removed, if that is a route and this is not."""
    path: str = request.scope["path"]
    if path == "/" or any(
        route.matches(request.scope)[0] != Match.NONE for route in _routes(request)
    ):
        return None
    other = path.rstrip("/") if path.endswith("/") else f"{path}/"
    variant = {**request.scope, "path": other}
    if any(route.matches(variant)[0] != Match.NONE for route in _routes(request)):
        return other
    return None


def misdirected_form(request: Request) -> str | None:
    """What to do with a multipart/form-data body sent to a raw-upload path, else None.

    A 307 to the path with (or without) its slash would be followed (`curl -L`) by the whole
    body again, only for the raw endpoint to refuse the form with a 415: so say where forms go.
    """
    path = request.url.path
    if path != RAW_UPLOAD_PATH and not path.startswith(f"{RAW_UPLOAD_PATH}/"):
        return None
    if not is_multipart(request.headers.get("content-type")):
        return None
    base = str(request.base_url).rstrip("/")
    return (
        f"a multipart/form-data body is an upload form: POST it to {base}{FORM_UPLOAD_PATH} "
        f"(curl -F file=@FILE {base}{FORM_UPLOAD_PATH}); {RAW_UPLOAD_PATH} takes the file itself "
        f"as the body (curl -T FILE {base}{RAW_UPLOAD_PATH}/)"
    )


def with_upload_hint(request: Request, detail: str) -> str:
    """``detail``, and on the upload paths the ways to upload."""
    if not request.url.path.startswith(UPLOAD_PREFIX):
        return detail
    return f"{detail}; {UPLOAD_HINT.format(base=str(request.base_url).rstrip('/'))}"
