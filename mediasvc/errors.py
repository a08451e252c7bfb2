"""Domain errors. Each class knows its HTTP status and RFC 9457 problem type.

Routes and services raise these; ``mediasvc.api.problems`` turns them into
``application/problem+json`` in one place.

    MediaServiceError
    ├── BadRequest (400)
    │   ├── MalformedMultipart
    │   ├── MalformedRange
    │   ├── InconsistentUploadLength (IETF problem type)
    │   ├── CompletedUpload (IETF problem type)
    │   ├── ContentDigestMismatch
    │   └── UnsupportedInteropVersion
    ├── Unauthorized (401)
    ├── Forbidden (403)
    │   └── ForwardingRefused
    ├── NotFound (404)
    ├── RequestTimeout (408)
    ├── Conflict (409)
    │   ├── OffsetMismatch
    │   └── UploadTakenOver
    ├── Gone (410)
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415)
    ├── MisdirectedRequest (421)
    ├── TooManyRequests (429)
    │   └── TooManyUploadsFromClient
    ├── HeadersTooLarge (431)
    ├── RangeNotSatisfiable (416)
    ├── PreconditionFailed (412)
    ├── Locked (423)
    ├── ChecksumFailed (460, tus)
    ├── InvalidInput (422)
    │   ├── InvalidFilename
    │   └── ChecksumMismatch
    ├── ServiceUnavailable (503)
    │   ├── DatabaseUnavailable
    │   ├── UploadOwnerUnavailable (with Retry-After)
    │   ├── TooManyUploads (with Retry-After)
    │   └── DownloadsInProgress (with Retry-After)
    └── InsufficientStorage (507)
"""

from __future__ import annotations

from typing import Any, ClassVar

# Problem types registered by the IETF resumable upload draft (IANA "HTTP Problem Types").
IANA_PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"


class MediaServiceError(Exception):
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    slug: ClassVar[str] = "internal"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        # Members of the problem body beyond type/title/status/detail (RFC 9457 extensions).
        self.extensions: dict[str, Any] = {}

    @property
    def type_uri(self) -> str:
        return f"urn:mediasvc:problem:{self.slug}"


class BadRequest(MediaServiceError):
    status = 400
    title = "Bad Request"
    slug = "bad-request"


class MalformedMultipart(BadRequest):
    slug = "malformed-multipart"


class MalformedRange(BadRequest):
    slug = "malformed-range"


class InconsistentUploadLength(BadRequest):
    """A resumable upload's length told two ways that disagree, or a change of a length once
    told (IETF draft: problem type ``inconsistent-upload-length``)."""

    slug = "inconsistent-upload-length"

    @property
    def type_uri(self) -> str:
        return IANA_PROBLEM_TYPES + self.slug


class CompletedUpload(BadRequest):
    """Bytes for a resumable upload that is complete (IETF draft -05: ``completed-upload``)."""

    slug = "completed-upload"

    @property
    def type_uri(self) -> str:
        return IANA_PROBLEM_TYPES + self.slug


class ContentDigestMismatch(BadRequest):
    """A request's body does not have the ``Content-Digest`` it declared (RFC 9530); none of it
    was kept."""

    slug = "content-digest-mismatch"


class UnsupportedInteropVersion(BadRequest):
    """An ``Upload-Draft-Interop-Version`` of the IETF resumable upload draft we do not speak."""

    slug = "unsupported-interop-version"


class Unauthorized(MediaServiceError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="mediasvc"'})


class Forbidden(MediaServiceError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class ForwardingRefused(Forbidden):
    """A request says it was forwarded by another API node, but its signature does not hold
    (resumable/node_signature.py): believing it would let a client claim another address."""

    slug = "forwarding-refused"


class NotFound(MediaServiceError):
    status = 404
    title = "Not Found"
    slug = "not-found"


class RequestTimeout(MediaServiceError):
    status = 408
    title = "Request Timeout"
    slug = "request-timeout"


class Conflict(MediaServiceError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class OffsetMismatch(Conflict):
    """A resumable upload's request starts somewhere else than where the upload is: the IETF
    draft's ``mismatching-upload-offset`` problem (tus defines no body; the same one serves)."""

    slug = "mismatching-upload-offset"

    def __init__(self, *, expected: int, provided: int, complete: bool = False) -> None:
        where = "complete" if complete else "at"
        super().__init__(
            f"the upload is {where} offset {expected}, not {provided}",
            headers={"Upload-Offset": str(expected)},
        )
        self.extensions = {"expected-offset": expected, "provided-offset": provided}

    @property
    def type_uri(self) -> str:
        return IANA_PROBLEM_TYPES + self.slug


class UploadTakenOver(Conflict):
    """A newer request for the same resumable upload ended this one (what arrived is kept)."""

    slug = "upload-taken-over"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Connection": "close"})


class Gone(MediaServiceError):
    status = 410
    title = "Gone"
    slug = "gone"


class PreconditionFailed(MediaServiceError):
    status = 412
    title = "Precondition Failed"
    slug = "precondition-failed"


class PayloadTooLarge(MediaServiceError):
    status = 413
    title = "Content Too Large"
    slug = "too-large"


class UnsupportedMediaType(MediaServiceError):
    status = 415
    title = "Unsupported Media Type"
    slug = "unsupported-media-type"


class MisdirectedRequest(MediaServiceError):
    """A request another node forwarded here for an upload this node does not hold (a node's
    URL reused, a replay): serving it would disturb the owner's writer; forwarding it again
    could loop. The forwarding node passes this answer on to its client."""

    status = 421
    title = "Misdirected Request"
    slug = "misdirected-request"


class TooManyRequests(MediaServiceError):
    status = 429
    title = "Too Many Requests"
    slug = "too-many-requests"


def _retry_later(retry_after_s: int) -> dict[str, str]:
    # The body was not read: close the connection rather than read (and drop) what follows.
    return {"Retry-After": str(retry_after_s), "Connection": "close"}


class TooManyUploadsFromClient(TooManyRequests):
    """This client address already has ``max_uploads_per_client`` uploads under way."""

    slug = "too-many-uploads-from-client"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, headers=_retry_later(retry_after_s))


class HeadersTooLarge(MediaServiceError):
    status = 431
    title = "Request Header Fields Too Large"
    slug = "headers-too-large"


class RangeNotSatisfiable(MediaServiceError):
    status = 416
    title = "Range Not Satisfiable"
    slug = "range-not-satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(
            f"no requested range starts inside the {size}-byte file",
            headers={"Content-Range": f"bytes */{size}"},
        )


class Locked(MediaServiceError):
    """Another process still writes this resumable upload and did not let go in time."""

    status = 423
    title = "Locked"
    slug = "upload-locked"


class ChecksumFailed(MediaServiceError):
    """tus's checksum extension: the request body does not match its ``Upload-Checksum``
    (nothing of it was kept)."""

    status = 460
    title = "Checksum Mismatch"
    slug = "checksum-failed"


class InvalidInput(MediaServiceError):
    status = 422
    title = "Unprocessable Content"
    slug = "invalid-input"


class InvalidFilename(InvalidInput):
    slug = "invalid-filename"


class ChecksumMismatch(InvalidInput):
    slug = "checksum-mismatch"


class InvalidMetadata(InvalidInput):
    """The caller's ``metadata`` is not a JSON object within the bounds (events/metadata.py)."""

    slug = "invalid-metadata"


class ImportRefused(InvalidInput):
    """A URL to import is not http(s), or leads to an address the guard refuses."""

    slug = "import-refused"


class ServiceUnavailable(MediaServiceError):
    status = 503
    title = "Service Unavailable"
    slug = "unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    slug = "database-unavailable"


class UploadOwnerUnavailable(ServiceUnavailable):
    """The node that holds an unfinished upload's bytes does not answer: only it may write
    them, so the request waits for it rather than get an offset that may be wrong."""

    slug = "upload-owner-unavailable"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class TooManyUploads(ServiceUnavailable):
    """This process already has ``max_uploads_in_flight`` uploads under way."""

    slug = "too-many-uploads"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, headers=_retry_later(retry_after_s))


class DownloadsInProgress(ServiceUnavailable):
    """The budget is held by other downloads still running; what they don't take comes back."""

    slug = "downloads-in-progress"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class InsufficientStorage(MediaServiceError):
    status = 507
    title = "Insufficient Storage"
    slug = "insufficient-storage"
