"""The IETF draft "Resumable Uploads for HTTP" (draft-ietf-httpbis-resumable-upload): its rules
per interop version, its header fields, and upload creation, which two places start: ``POST
/api/v1/uploads`` (api/ietf_uploads.py, with the rest of the protocol) and a plain ``POST``/``PUT``
to ``/api/v1/files/stream`` carrying ``Upload-Complete`` (api/uploads.py: the upgrade of a plain
upload to a resumable one).

Offsets, hashing, checkpoints, takeover, limits and completion are the engine's
(mediasvc/resumable/engine.py), as for tus (api/tus.py): one upload may be driven by either.

Interop versions spoken (a client names its own in ``Upload-Draft-Interop-Version``; the rules
differ), each checked against the draft text in httpwg/http-extensions
(draft-ietf-httpbis-resumable-upload.md; docs/facts.md lists the commits):

- 6, drafts -04/-05 (tus-js-client's ``ietf-draft-05``; tag -05, commit 9ec3abf4): append
  answers ``201`` with ``Upload-Offset``; HEAD and DELETE refuse ``Upload-Offset``/
  ``Upload-Complete``/``Upload-Length`` (400); a PATCH may omit ``Upload-Complete`` (an incomplete
  append); appending to a complete upload is the ``completed-upload`` problem; ``Upload-Limit``'s
  lifetime key is ``expires``.
- 7, drafts -06 to -08 (tag -08, commit 4e45dd61): as 8 but GET is not offset retrieval (405),
  bytes for a complete upload are the ``completed-upload`` problem, and OPTIONS names no
  ``Accept-Patch`` (-10 added it).
- 8, drafts -09 to -11 (tag -11, commit 605dc5af; Apple's URLSession): append answers ``204``;
  PATCH must carry ``Upload-Complete``; bytes for a complete upload are the
  ``inconsistent-upload-length`` problem; OPTIONS carries ``Accept-Patch:
  application/partial-upload`` (-10, -11: MUST); GET retrieves the offset like HEAD (the text
  after -11 defines it; harmless for an 8 client, which sends HEAD); ``max-age``.
- 9, draft -12: the editor's copy after -11 (main at commit b1b1c72f, 2026-07-01, whose
  changelog "Since draft-ietf-httpbis-resumable-upload-11" lists what changed), which
  httpwg/http-extensions pull request #3476 ("RESUMABLE: Bump interop version to 9", merged
  2026-07-05: "numerous changes since release -11") declared interop 9. The -12 tag itself was
  not in the repository snapshot read here. Against 8: OPTIONS names no ``Accept-Patch`` (removed;
  ``Upload-Limit`` is the MUST), the ``completed-upload`` problem type is gone (bytes past a
  complete upload's length stay ``inconsistent-upload-length``; a valid empty append to it may
  replay the final response, which is what a repeat gets here), GET is offset retrieval, and every
  creation and append response, 409 included, carries ``Upload-Complete`` (as here for all).

Any other version gets no 104 (the drafts: "MUST NOT send a 104 ... when the interop version ...
is missing or mismatching"): a plain upload stays plain, and a request to ``/api/v1/uploads`` is
refused (400, ``unsupported-interop-version``, with the versions we speak).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import http_sf
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from mediasvc.api import interim
from mediasvc.api.common import base_url_of, file_created, services_of
from mediasvc.errors import (
    BadRequest,
    ChecksumFailed,
    ChecksumMismatch,
    CompletedUpload,
    ContentDigestMismatch,
    InconsistentUploadLength,
    MediaServiceError,
    PayloadTooLarge,
    UnsupportedInteropVersion,
)
from mediasvc.ingest import checksum
from mediasvc.ingest.pipeline import UploadOptions
from mediasvc.resumable.engine import Appended, Body, NewUpload, UploadEngine, UploadState
from mediasvc.resumable.hashing import ResumableSha256
from mediasvc.resumable.metadata import parse_metadata
from mediasvc.resumable.sink import BodyChecksum

PREFIX = "/api/v1/uploads"
FILES = "/api/v1/files"
INTEROP_HEADER = "Upload-Draft-Interop-Version"
_INTEROP = INTEROP_HEADER.lower().encode("latin-1")
PARTIAL_UPLOAD = "application/partial-upload"
UPLOAD_RESUMPTION_SUPPORTED = 104
# RFC 9530 algorithms a Content-Digest may use that we check (others are ignored, as allowed).
CONTENT_DIGESTS = {"sha-256": "sha256", "sha-512": "sha512"}
# For CORS: what a browser's script may send and read.
REQUEST_HEADERS = (
    INTEROP_HEADER,
    "Upload-Complete",
    "Upload-Offset",
    "Upload-Length",
    "Content-Digest",
    "Repr-Digest",
    "Want-Repr-Digest",
    "Content-Disposition",
)
EXPOSED_HEADERS = ("Upload-Complete", "Upload-Limit", "Repr-Digest")


@dataclass(frozen=True, slots=True)
class Interop:
    """What one interop version's draft text says where they differ; the defaults are the
    newest's (9), each older version names what it says otherwise."""

    version: int
    checked_against: str
    age_key: str = "max-age"  # Upload-Limit's key for the upload's remaining lifetime
    append_status: int = 204  # an append that leaves the upload incomplete
    strict_fields: bool = False  # HEAD and DELETE refuse the upload's fields (400)
    patch_needs_complete: bool = True  # a PATCH without Upload-Complete is refused (400)
    get_retrieves_offset: bool = True
    completed_problem: type[BadRequest] = InconsistentUploadLength  # bytes for a complete upload
    accept_patch_on_options: bool = False  # OPTIONS names application/partial-upload

    def problem_headers(self, exc: MediaServiceError) -> None:
        # A whole file with the wrong sha256 is the processing's answer: the upload is over.
        over = isinstance(exc, ChecksumMismatch)
        exc.headers.setdefault("Upload-Complete", "?1" if over else "?0")


INTEROP_VERSIONS = {
    6: Interop(
        6,
        "draft-ietf-httpbis-resumable-upload-05",
        age_key="expires",
        append_status=201,
        strict_fields=True,
        patch_needs_complete=False,
        get_retrieves_offset=False,
        completed_problem=CompletedUpload,
    ),
    7: Interop(
        7,
        "draft-ietf-httpbis-resumable-upload-08",
        get_retrieves_offset=False,
        completed_problem=CompletedUpload,
    ),
    8: Interop(8, "draft-ietf-httpbis-resumable-upload-11", accept_patch_on_options=True),
    9: Interop(9, "httpwg/http-extensions main@b1b1c72f, made interop 9 by pull #3476"),
}


# --- header fields (RFC 9651 structured fields; a value of the wrong type is ignored) -------


def _item(value: str | None) -> Any:
    if value is None:
        return None
    try:
        parsed: Any = http_sf.parse(value.encode("latin-1"), tltype="item")
    except (http_sf.StructuredFieldError, UnicodeEncodeError, ValueError):
        return None
    return parsed[0]  # (the item, its parameters)


def sf_boolean(value: str | None) -> bool | None:
    item = _item(value)
    return item if isinstance(item, bool) else None


def sf_offset(value: str | None) -> int | None:
    """A non-negative Integer (Upload-Offset, Upload-Length), else None."""
    item = _item(value)
    return item if isinstance(item, int) and not isinstance(item, bool) and item >= 0 else None


def _dictionary(value: str | None, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    try:
        parsed: Any = http_sf.parse(value.encode("latin-1"), tltype="dictionary")
    except (http_sf.StructuredFieldError, UnicodeEncodeError, ValueError) as exc:
        raise BadRequest(f"{name} is not a structured field dictionary (RFC 9651)") from exc
    return {key: member[0] for key, member in parsed.items()}  # members without parameters


def speaks_ietf(scope: Scope) -> bool:
    """The request names an interop version of the draft and is no tus request (which then
    is the draft's: its routes, and none of tus's fields on the answer)."""
    names = {name for name, _ in scope.get("headers", ())}
    return _INTEROP in names and b"tus-resumable" not in names


def interop_version(headers: Headers) -> int | None:
    """The interop version a client names (None: none, or not an Integer)."""
    version = sf_offset(headers.get(INTEROP_HEADER))
    return version


def interop_of(headers: Headers) -> Interop:
    version = interop_version(headers)
    interop = INTEROP_VERSIONS.get(version) if version is not None else None
    if interop is None:
        spoken = sorted(INTEROP_VERSIONS)
        error = UnsupportedInteropVersion(
            f"{INTEROP_HEADER}: {headers.get(INTEROP_HEADER)!r} is not a version spoken here "
            f"({', '.join(map(str, spoken))})"
        )
        error.extensions = {"supported-versions": spoken}
        raise error
    return interop


def content_digest(headers: Headers) -> BodyChecksum | None:
    """The request body's Content-Digest we can check (sha-256, sha-512), if any."""
    for key, value in _dictionary(headers.get("content-digest"), "Content-Digest").items():
        if key in CONTENT_DIGESTS:
            if not isinstance(value, bytes):
                raise BadRequest(f"Content-Digest: {key} must be a byte sequence (:base64:)")
            return BodyChecksum(CONTENT_DIGESTS[key], value)
    return None


def wants_repr_digest(headers: Headers) -> bool:
    """Want-Repr-Digest asks for sha-256 (a weight above 0)."""
    wanted = _dictionary(headers.get("want-repr-digest"), "Want-Repr-Digest")
    weight = wanted.get("sha-256")
    return isinstance(weight, int) and not isinstance(weight, bool) and weight > 0


def repr_digest(state: UploadState) -> str:
    """Repr-Digest of the bytes received so far (the whole file's, once complete)."""
    return checksum.repr_digest_header(ResumableSha256(state.hash_state).hexdigest())


def upload_limit(interop: Interop, engine: UploadEngine, state: UploadState | None) -> str:
    """Upload-Limit: the largest file, and the upload's remaining lifetime (for OPTIONS, a new
    upload's: unfinished uploads expire this long after their last byte)."""
    limits: dict[str, Any] = {}
    if engine.max_size_bytes:
        limits["max-size"] = engine.max_size_bytes
    if state is None:
        limits[interop.age_key] = engine.config.expires_after_s
    elif not state.complete:
        left = (state.expires_at - datetime.now(UTC)).total_seconds()
        limits[interop.age_key] = max(0, int(left))
    return http_sf.ser(limits) if limits else "min-size=0"


def content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None or "chunked" in headers.get("transfer-encoding", "").lower():
        return None
    if not value.strip().isdigit():
        raise BadRequest("Content-Length must be a non-negative whole number")
    return int(value.strip())


def has_body(headers: Headers) -> bool:
    length = content_length(headers)
    return length > 0 if length is not None else "transfer-encoding" in headers


def upgrade_of(headers: Headers) -> tuple[Interop, bool] | None:
    """A plain upload that asks to become resumable: ``Upload-Complete`` from a client that
    speaks an interop version we speak (with ``?0``, the body is only the file's beginning).
    Any other plain upload stays plain (the draft: a resource that does not upgrade ignores
    the field)."""
    complete = sf_boolean(headers.get("upload-complete"))
    version = interop_version(headers)
    if complete is None or version not in INTEROP_VERSIONS:
        return None
    return INTEROP_VERSIONS[version], complete


# --- upload creation ---------------------------------------------------------------------


def metadata_header(request: Request, *, name: str | None, options: UploadOptions) -> str | None:
    """The upload's metadata as the engine keeps it (tus ``Upload-Metadata`` pairs), from what
    an IETF creation request says: its own ``Upload-Metadata`` if it sent one (tus-js-client
    does), the file name (Content-Disposition, X-Filename, the path or query), the media type,
    the query's ``max_downloads``/``expires_in``, and the whole file's sha256 (``Repr-Digest``
    or ``X-Checksum-Sha256``). A tus HEAD of the upload shows the same."""
    sent = request.headers.get("upload-metadata")
    pairs: dict[str, bytes | None] = parse_metadata(sent)
    content_type = request.headers.get("content-type")
    found: dict[str, str | None] = {
        "filename": name,
        "filetype": content_type if content_type and content_type != PARTIAL_UPLOAD else None,
        "max_downloads": str(options.max_downloads) if options.max_downloads else None,
        "expires_in": str(options.expires_in_s) if options.expires_in_s else None,
    }
    sha256 = sorted(set(checksum.expected_sha256(request.headers)))
    if len(sha256) > 1:
        raise BadRequest("the request declares two different SHA-256 digests of the file")
    found["sha256"] = sha256[0] if sha256 else None
    for key, value in found.items():
        if value is not None and key not in pairs:
            pairs[key] = value.encode("utf-8")
    if not pairs:
        return None
    return ",".join(
        key if value is None else f"{key} {base64.b64encode(value).decode('ascii')}"
        for key, value in pairs.items()
    )


async def create(
    request: Request,
    interop: Interop,
    *,
    name: str | None,
    options: UploadOptions,
    complete: bool,
) -> Response:
    """Create an upload from a request carrying ``Upload-Complete``, tell its URL in a 104
    (where the server can) before reading the body, then take the body. The response is the
    plain upload's 201 when the body completed it, else 201 with the upload's ``Location``."""
    engine = services_of(request).uploads
    headers = request.headers
    if "upload-offset" in headers:
        raise BadRequest("an upload creation request carries no Upload-Offset")
    declared = content_length(headers)
    length = sf_offset(headers.get("upload-length"))
    if complete and declared is not None:
        if length is not None and length != declared:
            raise InconsistentUploadLength(
                f"Upload-Length says {length} bytes, Content-Length with Upload-Complete: ?1 "
                f"says {declared}"
            )
        length = declared
    digest = content_digest(headers)
    new = NewUpload(
        length=length,
        metadata_header=metadata_header(request, name=name, options=options),
        owner=options.owner,
    )
    state = await engine.create(new)
    location = f"{base_url_of(request)}{PREFIX}/{state.uid}"
    interim.send_informational(
        request.scope,
        UPLOAD_RESUMPTION_SUPPORTED,
        {
            INTEROP_HEADER: str(interop.version),
            "Location": location,
            "Upload-Limit": upload_limit(interop, engine, state),
        },
    )
    try:
        if complete or has_body(headers) or state.length == 0:
            body = Body(
                chunks=request.stream(),
                offset=0,
                length=declared,
                checksum=digest,
                client=request.client.host if request.client else None,
                last=complete,
            )
            appended = await engine.append(state.uid, options.owner, body)
        else:
            appended = Appended(state)
        return appended_response(
            request, interop, appended, status=201, complete=complete, location=location
        )
    except MediaServiceError as exc:
        exc.headers.setdefault("Location", location)
        raise


def appended_response(
    request: Request,
    interop: Interop,
    appended: Appended,
    *,
    status: int,
    complete: bool,
    location: str | None = None,
) -> Response:
    """After a request that brought bytes: the completed file's response, or where the
    upload is. A request that said it completes the upload, whose bytes all came but fell
    short of the length told, is the ``inconsistent-upload-length`` problem."""
    state = appended.upload
    engine = services_of(request).uploads
    if state.complete:
        return completed_response(request, interop, appended, location=location)
    if complete:
        raise InconsistentUploadLength(
            f"the upload ends at {state.length} bytes; the request completing it ended at "
            f"{state.offset}",
            headers={"Upload-Offset": str(state.offset)},
        )
    headers = {
        "Upload-Complete": "?0",
        "Upload-Offset": str(state.offset),
        "Upload-Limit": upload_limit(interop, engine, state),
    }
    if location is not None:
        headers["Location"] = location
    if state.length is not None:
        headers["Upload-Length"] = str(state.length)
    if wants_repr_digest(request.headers):
        headers["Repr-Digest"] = repr_digest(state)
    return Response(status_code=status, headers=headers)


def completed_response(
    request: Request, interop: Interop, appended: Appended, *, location: str | None
) -> Response:
    """The plain upload's 201 (file metadata and delete token) when this request completed the
    upload; for a repeat of the last request (its response was lost), the file's place only."""
    state = appended.upload
    headers = {
        "Upload-Complete": "?1",
        "Upload-Offset": str(state.offset),
        "Content-Location": f"{FILES}/{state.uid}",
        "Repr-Digest": repr_digest(state),
    }
    if interop.version == 6 and location is not None:
        headers["Location"] = location  # -05: the creation response names the upload resource
    if appended.stored is None:
        status = 201 if interop.version == 6 else 200
        return Response(status_code=status, headers=headers)
    response = file_created(request, appended.stored)
    response.headers.update(headers)
    return response


def decorate(interop: Interop, exc: MediaServiceError, engine: UploadEngine) -> MediaServiceError:
    """The draft's fields on an error response; a Content-Digest mismatch as such."""
    if isinstance(exc, ChecksumFailed):
        exc = ContentDigestMismatch(
            "the request's body does not have its Content-Digest: none of it was kept",
            headers=exc.headers,
        )
    interop.problem_headers(exc)
    if isinstance(exc, PayloadTooLarge):
        exc.headers.setdefault("Upload-Limit", upload_limit(interop, engine, None))
    return exc
