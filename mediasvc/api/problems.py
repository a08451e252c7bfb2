"""Every error as RFC 9457 ``application/problem+json``: ours, the framework's, the unexpected."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from mediasvc.api import misroutes
from mediasvc.errors import MediaServiceError, UnsupportedMediaType

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(
    *,
    status: int,
    title: str,
    detail: str,
    type_uri: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    body = {"type": type_uri, "title": title, "status": status, "detail": detail, **extensions}
    return JSONResponse(
        jsonable_encoder(body), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


def problem_for(exc: MediaServiceError) -> Response:
    return problem_response(
        status=exc.status,
        title=exc.title,
        detail=exc.detail,
        type_uri=exc.type_uri,
        headers=exc.headers,
        **exc.extensions,
    )


async def _domain_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MediaServiceError)
    if exc.status >= 500:
        logger.warning("%s: %s", type(exc).__name__, exc.detail, exc_info=exc.__cause__)
    return problem_for(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        return _method_not_allowed(request)
    if exc.status_code == 404 and (other := misroutes.slash_variant(request)):
        if form := misroutes.misdirected_form(request):
            return problem_for(UnsupportedMediaType(form))  # not a redirect that cannot succeed
        return _slash_redirect(request, other)
    title = HTTPStatus(exc.status_code).phrase
    return problem_response(
        status=exc.status_code,
        title=title,
        detail=str(exc.detail) if exc.detail != title else title,
        headers=dict(exc.headers or {}),
    )


def _method_not_allowed(request: Request) -> Response:
    """405 with every method the path takes, and how to upload if that was the aim."""
    allowed = misroutes.allowed_methods(request)
    path = request.url.path
    detail = f"{request.method} is not allowed on {path}: use {' or '.join(allowed)} {path}"
    headers = {"Allow": ", ".join(allowed)}
    return _misroute(request, 405, "method-not-allowed", detail, headers, allow=allowed)


def _slash_redirect(request: Request, other: str) -> Response:
    """307 (the method and body are kept) to the path without, or with, its trailing slash."""
    location = str(request.url.replace(path=other))
    detail = f"the URL is {other}: send {request.method} {location} (curl follows with -L)"
    headers = {"Location": location}
    return _misroute(request, 307, "moved", detail, headers, location=location)


def _misroute(
    request: Request, status: int, slug: str, detail: str, headers: dict[str, str], **extra: Any
) -> Response:
    """A request that missed its route, told where to go (on the upload paths, how to upload)."""
    return problem_response(
        status=status,
        title=HTTPStatus(status).phrase,
        detail=misroutes.with_upload_hint(request, detail),
        type_uri=f"urn:mediasvc:problem:{slug}",
        headers=headers,
        **extra,
    )


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type")}
        for error in exc.errors()
    ]
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
    return problem_response(
        status=422,
        title="Unprocessable Content",
        detail=detail or "invalid request",
        type_uri="urn:mediasvc:problem:invalid-input",
        errors=errors,
    )


async def _client_disconnect(_request: Request, _exc: Exception) -> Response:
    # Nobody reads this: the client is gone. The upload was already cleaned up.
    return problem_response(
        status=400, title="Bad Request", detail="the client disconnected before the body ended"
    )


def internal_error() -> Response:
    """The answer to an unexpected exception (its traceback is logged, never sent)."""
    return problem_response(
        status=500, title="Internal Server Error", detail="an unexpected error occurred"
    )


async def _unexpected(_request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error", exc_info=exc)
    return internal_error()


def install(app: FastAPI) -> None:
    app.add_exception_handler(MediaServiceError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unexpected)
