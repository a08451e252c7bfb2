"""tus 1.0.0 (tus.io protocol.md) at ``/api/v1/uploads``: the HTTP face of the resumable upload
engine (mediasvc/resumable/engine.py), with the extensions creation, creation-with-upload,
creation-defer-length, expiration, checksum, termination and concatenation.

Here only the protocol: headers in, headers out. Offsets, hashing, checkpoints, takeover, limits
and completion are the engine's, so another protocol (the IETF resumable upload draft) can be a
second layer on the same uploads.

Statuses tus names: 201 created, 204 appended/terminated/options, 200 HEAD, 400 bad headers,
403 PATCH on a final upload, 404 unknown (or another key's) upload, 409 wrong offset, 410
expired, 412 a ``Tus-Resumable`` we do not speak (with ``Tus-Version``), 413 over
``Tus-Max-Size`` or the upload's length, 415 a PATCH that is not
``application/offset+octet-stream``, 460 ``Upload-Checksum`` mismatch. Every error body is
problem+json; every response carries ``Tus-Resumable`` (``TusMiddleware``).

The completing response (the POST of an upload whose bytes came with it, the last PATCH, the
final POST of a concatenation) says where the file is, ``Content-Location:
/api/v1/files/{uid}``, and carries its delete token in ``X-Delete-Token`` (the plain
upload gives it in its JSON body; a PATCH's 204 has none).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from email.utils import format_datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Header, Request
from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mediasvc.api.common import Caller, base_url_of, services_of
from mediasvc.api.ietf import speaks_ietf
from mediasvc.api.openapi import problem_responses
from mediasvc.api.problems import internal_error
from mediasvc.errors import BadRequest, PreconditionFailed, UnsupportedMediaType
from mediasvc.ids import is_valid_uid
from mediasvc.resumable.engine import Appended, Body, NewUpload, UploadEngine, UploadState
from mediasvc.resumable.sink import BodyChecksum

TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
)
CHECKSUM_ALGORITHMS = ("sha1", "md5", "sha256")
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
PREFIX = "/api/v1/uploads"
# The headers a browser's script may read and send (CORS), per the tus spec's list.
EXPOSED_HEADERS = (
    "Upload-Offset",
    "Location",
    "Upload-Length",
    "Tus-Version",
    "Tus-Resumable",
    "Tus-Max-Size",
    "Tus-Extension",
    "Tus-Checksum-Algorithm",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Expires",
    "X-Delete-Token",
    "Content-Location",
)
REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Offset",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Checksum",
    "X-HTTP-Method-Override",
    "X-Requested-With",
)
METHODS = ("POST", "HEAD", "PATCH", "DELETE", "OPTIONS")
_NUMBER = re.compile(r"^[0-9]{1,19}$")
_LARGEST = 2**63 - 1  # the row's BIGINT: a larger length or offset cannot be stored or reached

router = APIRouter(prefix=PREFIX, tags=["tus"])


class TusMiddleware:
    """``Tus-Resumable`` on every tus response under ``/api/v1/uploads`` (errors included, an
    unexpected exception's 500 too; not on the IETF draft's), and ``X-HTTP-Method-Override``: a
    request that carries it is the method it names (tus: for environments that cannot send PATCH
    or DELETE; usually a POST)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"x-http-method-override":
                scope = {**scope, "method": value.decode("latin-1").strip().upper()}
                break

        # A request of the IETF draft is answered by the draft alone: no tus field.
        tus_answer = not speaks_ietf(scope)
        started = False

        async def send_with_version(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if tus_answer:
                    MutableHeaders(scope=message)["Tus-Resumable"] = TUS_VERSION
            await send(message)

        try:
            await self.app(scope, receive, send_with_version)
        except Exception:
            if not started and tus_answer:
                await _answer_unexpected(scope, receive, send_with_version)
            raise


async def _answer_unexpected(scope: Scope, receive: Receive, send: Send) -> None:
    """A tus request's 500, from inside ``TusMiddleware`` so that it carries ``Tus-Resumable``.

    Starlette answers an unhandled exception in ``ServerErrorMiddleware``, outside every
    middleware of ours. The exception is raised on after this answer: that middleware still
    logs it (problems.py) and, seeing a response begun, sends none of its own."""
    await internal_error()(scope, receive, send)


def require_tus(tus_resumable: Annotated[str | None, Header()] = None) -> None:
    """Every request but OPTIONS says which tus it speaks; 412 (with ours) otherwise."""
    if tus_resumable != TUS_VERSION:
        raise PreconditionFailed(
            f"this server speaks tus {TUS_VERSION}; send Tus-Resumable: {TUS_VERSION}",
            headers={"Tus-Version": TUS_VERSION},
        )


Tus = Depends(require_tus)


def _engine(request: Request) -> UploadEngine:
    return services_of(request).uploads


def _owner(caller: Any) -> str | None:
    return caller.name if caller else None


def _number(value: str | None, header: str) -> int | None:
    if value is None:
        return None
    if not _NUMBER.match(value.strip()) or int(value.strip()) > _LARGEST:
        raise BadRequest(f"{header} must be a whole number from 0 to {_LARGEST}")
    return int(value.strip())


def _checksum(value: str | None) -> BodyChecksum | None:
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise BadRequest(
            f"Upload-Checksum: {algorithm!r} is not one of {', '.join(CHECKSUM_ALGORITHMS)}"
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error as exc:
        raise BadRequest("Upload-Checksum: the digest is not base64") from exc
    if len(digest) != hashlib.new(algorithm).digest_size:
        raise BadRequest(f"Upload-Checksum: that is no {algorithm} digest")
    return BodyChecksum(algorithm, digest)


def _uid_of(url: str) -> str:
    path = urlsplit(url.strip()).path.rstrip("/")
    prefix, _, uid = path.rpartition("/")
    if not prefix.endswith(PREFIX) or not is_valid_uid(uid):
        raise BadRequest(f"Upload-Concat: {url!r} is no upload URL of this server")
    return uid


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def _body(request: Request, *, offset: int, upload_length: int | None = None) -> Body:
    return Body(
        chunks=request.stream(),
        offset=offset,
        length=_number(request.headers.get("content-length"), "Content-Length"),
        upload_length=upload_length,
        checksum=_checksum(request.headers.get("upload-checksum")),
        client=request.client.host if request.client else None,
    )


def _state_headers(state: UploadState, *, with_offset: bool = True) -> dict[str, str]:
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    if with_offset:
        headers["Upload-Offset"] = str(state.offset)
    if state.length is not None:
        headers["Upload-Length"] = str(state.length)
    else:
        headers["Upload-Defer-Length"] = "1"
    if state.complete and state.concat != "partial":  # a finished partial is no file yet
        headers["Content-Location"] = f"/api/v1/files/{state.uid}"
    else:
        headers["Upload-Expires"] = format_datetime(state.expires_at, usegmt=True)
    return headers


def _appended(status: int, appended: Appended, extra: dict[str, str] | None = None) -> Response:
    headers = {**_state_headers(appended.upload), **(extra or {})}
    headers.pop("Cache-Control")
    if appended.stored is not None:
        headers["X-Delete-Token"] = appended.stored.delete_token
    return Response(status_code=status, headers=headers)


def _options_headers(engine: UploadEngine) -> dict[str, str]:
    headers = {
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }
    if engine.max_size_bytes:
        headers["Tus-Max-Size"] = str(engine.max_size_bytes)
    return headers


def _header(description: str, **schema: Any) -> dict[str, Any]:
    """A response header of the OpenAPI schema."""
    return {"description": description, "schema": {"type": "string", **schema}}


_UID_PARAM = {"name": "uid", "in": "path", "required": True, "schema": {"type": "string"}}


_TUS_RESUMABLE_PARAM = {
    "name": "Tus-Resumable",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "enum": [TUS_VERSION]},
}


def _param(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


_BODY = {
    "required": False,
    "content": {OFFSET_OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
}
_OFFSET_HEADERS = {
    "Upload-Offset": _header("Bytes received durably"),
    "Upload-Expires": _header("When the unfinished upload expires"),
    "Content-Location": _header("The file, once the upload is complete"),
    "X-Delete-Token": _header("The file's delete token, in the response that completed it"),
}


@router.options(
    "",
    status_code=204,
    summary="tus: what this server supports",
    responses={204: {"description": "Tus-Version, Tus-Extension, Tus-Max-Size, …"}},
)
@router.options(
    "/{uid}",
    status_code=204,
    summary="tus: what this server supports",
    responses={204: {"description": "Tus-Version, Tus-Extension, Tus-Max-Size, …"}},
    openapi_extra={"parameters": [_UID_PARAM]},
)
async def tus_options(request: Request) -> Response:
    return Response(status_code=204, headers=_options_headers(_engine(request)))


@router.post(
    "",
    status_code=201,
    dependencies=[Tus],
    summary="tus: create an upload (its first bytes may come along)",
    responses={
        201: {
            "description": "Created",
            "headers": {"Location": _header("The upload's URL"), **_OFFSET_HEADERS},
        },
        **problem_responses(
            400, 401, 403, 408, 409, 412, 413, 415, 422, 423, 429, 431, 460, 503, 507
        ),
    },
    openapi_extra={
        "parameters": [
            _TUS_RESUMABLE_PARAM,
            _param("Upload-Length", "The upload's size in bytes", pattern="^[0-9]+$"),
            _param("Upload-Defer-Length", "1: the size comes with a later PATCH", enum=["1"]),
            _param(
                "Upload-Metadata",
                "key base64 pairs; filename, filetype, max_downloads, expires_in and sha256 "
                "mean what the plain upload's options mean",
            ),
            _param("Upload-Concat", "partial, or final;URL URL… of finished partial uploads"),
            _param("Upload-Checksum", "The body's checksum: sha1|md5|sha256 base64"),
        ],
        "requestBody": _BODY,
    },
)
async def tus_create(request: Request, caller: Caller) -> Response:
    engine, owner = _engine(request), _owner(caller)
    headers = request.headers
    metadata = headers.get("upload-metadata")
    concat = headers.get("upload-concat")
    location = f"{base_url_of(request)}{PREFIX}"
    if concat is not None and concat.strip().startswith("final;"):
        if "upload-length" in headers or "upload-defer-length" in headers:
            raise BadRequest("a final upload's length is its parts': send no Upload-Length")
        _, _, urls = concat.partition(";")
        parts = [_uid_of(url) for url in urls.split()]
        appended = await engine.concatenate(parts, metadata_header=metadata, owner=owner)
        return _appended(201, appended, {"Location": f"{location}/{appended.upload.uid}"})
    if concat is not None and concat.strip() != "partial":
        raise BadRequest("Upload-Concat must be 'partial' or 'final;URL URL…'")
    length = _number(headers.get("upload-length"), "Upload-Length")
    deferred = headers.get("upload-defer-length")
    if (length is None) == (deferred is None):
        raise BadRequest("send either Upload-Length or Upload-Defer-Length: 1")
    if deferred is not None and deferred.strip() != "1":
        raise BadRequest("Upload-Defer-Length must be 1")
    body = None
    if _has_body(request):
        if headers.get("content-type") != OFFSET_OCTET_STREAM:
            raise UnsupportedMediaType(f"an upload's bytes come as {OFFSET_OCTET_STREAM}")
        body = _body(request, offset=0)
    new = NewUpload(
        length=length, metadata_header=metadata, owner=owner, partial=concat is not None
    )
    appended = await engine.create_and_append(new, body)
    return _appended(201, appended, {"Location": f"{location}/{appended.upload.uid}"})


@router.head(
    "/{uid}",
    dependencies=[Tus],
    summary="tus: where an upload is",
    responses={
        200: {
            "description": "Upload-Offset, Upload-Length or Upload-Defer-Length, …",
            "headers": {
                **_OFFSET_HEADERS,
                "Upload-Metadata": _header("As created"),
            },
        },
        **problem_responses(401, 403, 404, 410, 412, 423, 431, 503),
    },
    openapi_extra={"parameters": [_UID_PARAM, _TUS_RESUMABLE_PARAM]},
)
async def tus_head(request: Request, uid: str, caller: Caller) -> Response:
    # Settled: a PATCH still running for the upload (a client that gave up on its connection
    # and now asks where to go on) is ended and its bytes counted first. The last checkpoint
    # would be behind what that request still records, and the client's next PATCH from
    # there would meet 409 after its whole chunk crossed the network (tusd ends it too).
    state = await _engine(request).settled_state(uid, _owner(caller))
    headers = _state_headers(state, with_offset=True)
    if state.metadata_header:
        headers["Upload-Metadata"] = state.metadata_header
    if state.concat == "partial":
        headers["Upload-Concat"] = "partial"
    elif state.concat == "final":
        urls = " ".join(f"{PREFIX}/{part}" for part in state.parts)
        headers["Upload-Concat"] = f"final;{urls}"
    return Response(status_code=200, headers=headers)


@router.patch(
    "/{uid}",
    status_code=204,
    dependencies=[Tus],
    summary="tus: append bytes at the upload's offset",
    responses={
        204: {"description": "Appended", "headers": _OFFSET_HEADERS},
        **problem_responses(
            400, 401, 403, 404, 408, 409, 410, 412, 413, 415, 422, 423, 429, 431, 460, 503, 507
        ),
    },
    openapi_extra={
        "parameters": [
            _UID_PARAM,
            _TUS_RESUMABLE_PARAM,
            {**_param("Upload-Offset", "Where the bytes go", pattern="^[0-9]+$"), "required": True},
            _param("Upload-Length", "The deferred length, once known", pattern="^[0-9]+$"),
            _param("Upload-Checksum", "The body's checksum: sha1|md5|sha256 base64"),
        ],
        "requestBody": {**_BODY, "required": True},
    },
)
async def tus_patch(request: Request, uid: str, caller: Caller) -> Response:
    if request.headers.get("content-type") != OFFSET_OCTET_STREAM:
        raise UnsupportedMediaType(f"PATCH takes {OFFSET_OCTET_STREAM}")
    offset = _number(request.headers.get("upload-offset"), "Upload-Offset")
    if offset is None:
        raise BadRequest("PATCH needs Upload-Offset")
    upload_length = _number(request.headers.get("upload-length"), "Upload-Length")
    body = _body(request, offset=offset, upload_length=upload_length)
    appended = await _engine(request).append(uid, _owner(caller), body)
    return _appended(204, appended)


@router.delete(
    "/{uid}",
    status_code=204,
    dependencies=[Tus],
    summary="tus: terminate an upload (its bytes and state go; a finished one's file stays)",
    responses={
        204: {"description": "Terminated"},
        **problem_responses(401, 403, 404, 410, 412, 423, 431, 503),
    },
    openapi_extra={"parameters": [_UID_PARAM, _TUS_RESUMABLE_PARAM]},
)
async def tus_delete(request: Request, uid: str, caller: Caller) -> Response:
    await _engine(request).terminate(uid, _owner(caller))
    return Response(status_code=204)
