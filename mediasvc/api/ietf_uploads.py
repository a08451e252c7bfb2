"""The IETF resumable upload draft on ``/api/v1/uploads``, beside tus (api/tus.py): the same
paths and uploads, told apart per request. A request carrying ``Upload-Draft-Interop-Version``
and no ``Tus-Resumable`` is the draft's (``IetfRoute``); any other goes on to tus's routes.

    OPTIONS /api/v1/uploads         Upload-Limit (and Accept-Patch for interop 8)
    POST    /api/v1/uploads         upload creation (Upload-Complete, Upload-Length, a body or not)
    HEAD    /api/v1/uploads/{uid}   offset retrieval (GET too, from interop 8)
    PATCH   /api/v1/uploads/{uid}   append (application/partial-upload, Upload-Offset)
    DELETE  /api/v1/uploads/{uid}   cancellation

The rules per interop version, the fields and creation are in api/ietf.py. The OpenAPI schema
holds one operation per path and method, tus's: api/ietf_openapi.py adds the draft's to them, so
these routes are left out of it as such.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from mediasvc.api import ietf
from mediasvc.api.common import Caller, services_of
from mediasvc.api.ietf import Interop
from mediasvc.api.uploads import Options
from mediasvc.auth import Principal
from mediasvc.errors import (
    BadRequest,
    InconsistentUploadLength,
    MediaServiceError,
    UnsupportedMediaType,
)
from mediasvc.ingest.names import name_from_request
from mediasvc.resumable.engine import Body


class IetfRoute(APIRoute):
    """Matches only requests of the draft, so the same path's tus route takes the others."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or not ietf.speaks_ietf(scope):
            return Match.NONE, {}
        return super().matches(scope)


router = APIRouter(prefix=ietf.PREFIX, route_class=IetfRoute, include_in_schema=False)


def _interop(request: Request) -> Interop:
    return ietf.interop_of(request.headers)


InteropOf = Annotated[Interop, Depends(_interop)]


async def _speaking(
    interop: Interop, request: Request, handle: Callable[[], Awaitable[Response]]
) -> Response:
    """Run ``handle``; its errors carry the draft's fields."""
    try:
        return await handle()
    except MediaServiceError as exc:
        raise ietf.decorate(interop, exc, services_of(request).uploads) from exc


def _owner(caller: Principal | None) -> str | None:
    return caller.name if caller else None


def _refuse_upload_fields(interop: Interop, request: Request, what: str) -> None:
    """-05: offset retrieval and cancellation carry none of the upload's fields."""
    if not interop.strict_fields:
        return
    for field in ("Upload-Offset", "Upload-Complete", "Upload-Length"):
        if field in request.headers and not (what == "cancellation" and field == "Upload-Length"):
            raise BadRequest(f"an upload {what} request carries no {field}")


@router.options("")
@router.options("/{uid}")
async def ietf_options(request: Request, interop: InteropOf) -> Response:
    engine = services_of(request).uploads
    headers = {"Upload-Limit": ietf.upload_limit(interop, engine, None)}
    if interop.accept_patch_on_options:
        headers["Accept-Patch"] = ietf.PARTIAL_UPLOAD
    return Response(status_code=204, headers=headers)


@router.post("")
async def ietf_create(request: Request, interop: InteropOf, options: Options) -> Response:
    async def handle() -> Response:
        complete = ietf.sf_boolean(request.headers.get("upload-complete"))
        if complete is None:
            raise BadRequest("an upload creation request carries Upload-Complete: ?0 or ?1")
        name = name_from_request(request.headers, request.scope.get("query_string", b""), None)
        return await ietf.create(request, interop, name=name, options=options, complete=complete)

    return await _speaking(interop, request, handle)


async def _offset(
    request: Request, uid: str, interop: Interop, caller: Principal | None
) -> Response:
    async def handle() -> Response:
        _refuse_upload_fields(interop, request, "offset retrieval")
        engine = services_of(request).uploads
        state = await engine.settled_state(uid, _owner(caller))
        headers = {
            "Upload-Offset": str(state.offset),
            "Upload-Complete": "?1" if state.complete else "?0",
            "Upload-Limit": ietf.upload_limit(interop, engine, state),
            "Cache-Control": "no-store",
        }
        if state.length is not None:
            headers["Upload-Length"] = str(state.length)
        if state.complete:
            headers["Content-Location"] = f"{ietf.FILES}/{uid}"
        if state.complete or ietf.wants_repr_digest(request.headers):
            headers["Repr-Digest"] = ietf.repr_digest(state)
        return Response(status_code=204, headers=headers)

    return await _speaking(interop, request, handle)


@router.head("/{uid}")
async def ietf_head(request: Request, uid: str, interop: InteropOf, caller: Caller) -> Response:
    return await _offset(request, uid, interop, caller)


@router.get("/{uid}")
async def ietf_get(request: Request, uid: str, interop: InteropOf, caller: Caller) -> Response:
    if not interop.get_retrieves_offset:
        return Response(status_code=405, headers={"Allow": "HEAD, PATCH, DELETE, OPTIONS"})
    return await _offset(request, uid, interop, caller)


@router.patch("/{uid}")
async def ietf_patch(request: Request, uid: str, interop: InteropOf, caller: Caller) -> Response:
    async def handle() -> Response:
        headers = request.headers
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != ietf.PARTIAL_UPLOAD:
            raise UnsupportedMediaType(f"an upload append is a PATCH of {ietf.PARTIAL_UPLOAD}")
        offset = ietf.sf_offset(headers.get("upload-offset"))
        if offset is None:
            raise BadRequest("an upload append carries Upload-Offset (a non-negative Integer)")
        complete = ietf.sf_boolean(headers.get("upload-complete"))
        if complete is None and interop.patch_needs_complete:
            raise BadRequest("an upload append carries Upload-Complete: ?0 or ?1")
        declared = ietf.content_length(headers)
        length = ietf.sf_offset(headers.get("upload-length"))
        if complete and declared is not None:
            if length is not None and length != offset + declared:
                raise InconsistentUploadLength(
                    f"Upload-Length says {length} bytes; Upload-Offset and Content-Length with "
                    f"Upload-Complete: ?1 say {offset + declared}"
                )
            length = offset + declared
        engine, owner = services_of(request).uploads, _owner(caller)
        state = await engine.state(uid, owner)
        if state.complete and ietf.has_body(headers):
            raise interop.completed_problem(
                "the upload is complete: it takes no more bytes",
                headers={"Upload-Offset": str(state.offset)},
            )
        body = Body(
            chunks=request.stream(),
            offset=offset,
            length=declared,
            upload_length=length,
            checksum=ietf.content_digest(headers),
            client=request.client.host if request.client else None,
            last=bool(complete),
        )
        appended = await engine.append(uid, owner, body)
        return ietf.appended_response(
            request, interop, appended, status=interop.append_status, complete=bool(complete)
        )

    return await _speaking(interop, request, handle)


@router.delete("/{uid}")
async def ietf_delete(request: Request, uid: str, interop: InteropOf, caller: Caller) -> Response:
    async def handle() -> Response:
        _refuse_upload_fields(interop, request, "cancellation")
        await services_of(request).uploads.terminate(uid, _owner(caller))
        return Response(status_code=204)

    return await _speaking(interop, request, handle)
