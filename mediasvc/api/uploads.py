"""Upload routes: raw bodies (``--data-binary``, ``-T``) and multipart forms.

They declare no body parameter (FastAPI would buffer it): each turns its request into plain
facts (name, type, length, digests, client address) and hands them with the body (api/plain_body.py:
cut if its client is gone) to the ingestor (ingest/pipeline.py); they describe their body in
``openapi_extra``. The API key is checked by a dependency, before any body byte is read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from mediasvc.api import ietf
from mediasvc.api.common import Caller, file_created, services_of
from mediasvc.api.openapi import problem_responses
from mediasvc.api.plain_body import plain_body
from mediasvc.api.schemas import UploadedFile
from mediasvc.errors import UnsupportedMediaType
from mediasvc.events.metadata import parse_metadata
from mediasvc.ingest import checksum
from mediasvc.ingest.names import name_from_request
from mediasvc.ingest.pipeline import UploadFacts, UploadOptions
from mediasvc.ingest.sniff import is_multipart

router = APIRouter(prefix="/api/v1")

MAX_DOWNLOADS_LIMIT = 1_000_000
MAX_EXPIRES_IN_S = 315_360_000  # ten years

MaxDownloads = Annotated[
    int | None,
    Query(ge=1, le=MAX_DOWNLOADS_LIMIT, description="Download budget: this many full downloads"),
]
ExpiresIn = Annotated[
    int | None, Query(ge=1, le=MAX_EXPIRES_IN_S, description="Seconds until the file expires")
]


def _optional(name: str, where: str, description: str, **schema: str) -> dict[str, Any]:
    """An optional string parameter of the OpenAPI schema."""
    return {
        "name": name,
        "in": where,
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


METADATA_HEADER = "x-metadata"
_UPLOAD_HEADERS: list[dict[str, Any]] = [
    _optional(
        "X-Metadata",
        "header",
        "Your own JSON object (at most 4 KiB, 4 levels, 64 keys), echoed in the file's metadata "
        "and its events; bad JSON is 422",
    ),
    _optional(
        "X-Checksum-Sha256",
        "header",
        "SHA-256 of the file, hex; a mismatch is 422 and nothing is kept",
        pattern="^[0-9a-fA-F]{64}$",
    ),
    _optional("Repr-Digest", "header", "RFC 9530 digest, e.g. sha-256=:base64:"),
]
_RAW_UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The file's bytes, as they are (chunked or with Content-Length)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    "parameters": [
        _optional("X-Filename", "header", "Original file name, percent-encoded UTF-8"),
        _optional(
            "Content-Disposition",
            "header",
            "Original file name as filename* (RFC 8187) or filename",
        ),
        _optional("filename", "query", "Original file name"),
        *_UPLOAD_HEADERS,
    ],
}
_MULTIPART_UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "metadata": {
                            "type": "string",
                            "description": "Your own JSON object (as X-Metadata), before or "
                            "after the file",
                        },
                        "file": {"type": "string", "format": "binary"},
                    },
                }
            }
        },
    },
    "parameters": _UPLOAD_HEADERS,
}


# 400 bad checksum header or multipart framing, 401/403 API keys, 408 idle or too slow body,
# 413 too large, 415 wrong body type, 422 options/name/checksum, 429 too many uploads from this
# address, 431 headers, 503 database or too many uploads in flight, 507 disk full.
_UPLOAD_ERRORS = problem_responses(400, 401, 403, 408, 413, 415, 422, 429, 431, 503, 507)


def upload_options(
    request: Request,
    caller: Caller,
    max_downloads: MaxDownloads = None,
    expires_in: ExpiresIn = None,
) -> UploadOptions:
    """Every upload route's options: the query's limits, the key that owns the file and the
    caller's ``X-Metadata`` (a missing or wrong key, or bad metadata, is refused here, before a
    body byte is read)."""
    header = request.headers.get(METADATA_HEADER)
    return UploadOptions(
        max_downloads=max_downloads,
        expires_in_s=expires_in,
        owner=caller.name if caller else None,
        # Header values arrive as latin-1: their bytes again, read as UTF-8 JSON.
        metadata=parse_metadata(header.encode("latin-1")) if header is not None else None,
    )


Options = Annotated[UploadOptions, Depends(upload_options)]


async def upload_raw(request: Request, options: Options) -> Response:
    return await _ingest_raw(request, None, options)


async def upload_raw_named(request: Request, filename: str, options: Options) -> Response:
    return await _ingest_raw(request, _raw_path(request, filename), options)


# The four raw routes: two endpoints (with and without a name in the path), each for POST and
# PUT, every one its own operation in the OpenAPI schema (with the ids FastAPI derived when each
# had a function of its own, so clients generated from the schema keep their names).
_RAW_ROUTES: list[tuple[str, str, Callable[..., Awaitable[Response]], str, str]] = [
    (
        "POST",
        "/files/stream",
        upload_raw,
        "upload_raw_api_v1_files_stream_post",
        "Upload a file as the raw request body",
    ),
    (
        "PUT",
        "/files/stream",
        upload_raw,
        "upload_raw_put_api_v1_files_stream_put",
        "Upload a file as the raw request body (curl -T)",
    ),
    (
        "POST",
        "/files/stream/{filename}",
        upload_raw_named,
        "upload_raw_named_post_api_v1_files_stream__filename__post",
        "Upload a file as the raw request body, named by the path (curl -X POST -T f URL/)",
    ),
    (
        "PUT",
        "/files/stream/{filename}",
        upload_raw_named,
        "upload_raw_named_api_v1_files_stream__filename__put",
        "Upload a file as the raw request body, named by the path (curl -T f URL/)",
    ),
]
for method, path, endpoint, operation_id, summary in _RAW_ROUTES:
    router.add_api_route(
        path,
        endpoint,
        methods=[method],
        status_code=201,
        response_model=UploadedFile,
        responses=_UPLOAD_ERRORS,
        openapi_extra=_RAW_UPLOAD_OPENAPI,
        summary=summary,
        operation_id=operation_id,
    )


def _raw_path(request: Request, filename: str) -> bytes:
    # The name comes from the path's raw bytes: the decoded ``filename`` has U+FFFD where the
    # path was not UTF-8. Servers that give no raw_path (it is optional in ASGI) give this one.
    raw_path: bytes = request.scope.get("raw_path") or quote(filename).encode("ascii")
    return raw_path


async def _ingest_raw(request: Request, raw_path: bytes | None, options: UploadOptions) -> Response:
    """The four raw routes (POST, PUT, each with and without a name in the path): one ingest,
    their own OpenAPI entries."""
    content_type = request.headers.get("content-type")
    if is_multipart(content_type):
        raise UnsupportedMediaType(
            "this endpoint takes the raw file as the body; send multipart/form-data "
            "to POST /api/v1/files"
        )
    name = name_from_request(request.headers, request.scope.get("query_string", b""), raw_path)
    if (upgrade := ietf.upgrade_of(request.headers)) is not None:
        interop, complete = upgrade
        return await ietf.create(request, interop, name=name, options=options, complete=complete)
    stored = await services_of(request).ingestor.ingest(
        plain_body(request),
        _facts(request, name=name),
        options,
    )
    return file_created(request, stored)


def _facts(request: Request, *, name: str | None) -> UploadFacts:
    declared = request.headers.get("content-length")
    return UploadFacts(
        name=name,
        declared_type=request.headers.get("content-type"),
        declared_length=int(declared) if declared and declared.isdigit() else None,
        expected_sha256=tuple(checksum.expected_sha256(request.headers)),
        client=request.client.host if request.client else None,
    )


@router.post(
    "/files",
    status_code=201,
    response_model=UploadedFile,
    responses=_UPLOAD_ERRORS,
    openapi_extra=_MULTIPART_UPLOAD_OPENAPI,
    summary="Upload a file as the multipart/form-data part named 'file'",
)
async def upload_multipart(request: Request, options: Options) -> Response:
    if not is_multipart(request.headers.get("content-type")):
        raise UnsupportedMediaType(
            "this endpoint takes multipart/form-data; send raw bodies to /api/v1/files/stream"
        )
    stored = await services_of(request).ingestor.ingest_form(
        plain_body(request), _facts(request, name=None), options
    )
    return file_created(request, stored)
