"""Who may read a file: one rule for every route that reveals one.

Download (GET and HEAD), ``/metadata`` and ``/preview`` all go through ``_readable``
(``ReadableRow`` for the download, which needs only the lean row of ``db.file_row``;
``ReadableFile`` for the rest), so a route cannot show a file's bytes, name, size or sha256
(which confirms a guess of the content) under weaker rules than the download, as S3's
HeadObject needs GetObject's authorization:

- ``require_signed_downloads`` off: the UID is the capability; ``Authorization`` is not looked at.
- on: a valid, unexpired signed link for this UID (``GET /api/v1/files/{uid}/link``; a link
  opens every route of its file), or the API key that uploaded the file, or an admin key. The
  key may mint such a link anyway, so accepting it directly gives it nothing more.

``/link`` itself needs the owner's (or an admin) key when keys are on (``check_owner``); a
signed link never mints another. Settings refuse signed downloads without keys, else anyone
could mint a link for any UID.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Protocol, TypeVar

from fastapi import Depends, Request

from mediasvc.api.common import services_of
from mediasvc.auth import Principal
from mediasvc.db import repository
from mediasvc.db.file_row import FileRow
from mediasvc.db.models import FileRecord, GoneReason, ImportRecord
from mediasvc.delivery import signing
from mediasvc.errors import Forbidden, Gone, NotFound
from mediasvc.ids import is_valid_uid


async def live_record(request: Request, uid: str) -> FileRecord:
    """The file's row: 404 for an unknown or malformed UID, 410 once deleted, expired or used up."""
    if not is_valid_uid(uid):
        raise NotFound("no file has this UID")
    async with services_of(request).db.read() as session:
        return _live(await repository.get(session, uid))


async def live_row(request: Request, uid: str) -> FileRow:
    """``live_record``'s answer as a ``FileRow``: what a download needs, read in one step."""
    if not is_valid_uid(uid):
        raise NotFound("no file has this UID")
    return _live(await services_of(request).db.file_row(uid))


class _Row(Protocol):
    @property
    def gone_reason(self) -> str | None: ...

    @property
    def expires_at(self) -> datetime | None: ...


_R = TypeVar("_R", bound=_Row)
_F = TypeVar("_F", FileRecord, FileRow)


def _live(row: _R | None) -> _R:
    if row is None:
        raise NotFound("no file has this UID")
    if row.gone_reason is not None:
        raise Gone(f"the file is gone: {row.gone_reason}")
    if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
        raise Gone(f"the file is gone: {GoneReason.EXPIRED.value}")
    return row


def check_owner(caller: Principal | None, record: FileRecord | FileRow | ImportRecord) -> None:
    """403 unless keys are off (``caller`` None), the key is an admin's or it uploaded the file
    (or started the import)."""
    if caller is not None and not caller.admin and record.owner != caller.name:
        raise Forbidden("this file belongs to another key")


async def readable_file(request: Request, uid: str) -> FileRecord:
    """The file's row if this request may read the file (see the module docstring)."""
    return await _readable(request, uid, live_record)


async def readable_row(request: Request, uid: str) -> FileRow:
    """``readable_file`` for the download: the same rule, the lean row (``db.file_row``)."""
    return await _readable(request, uid, live_row)


async def _readable(
    request: Request, uid: str, live: Callable[[Request, str], Awaitable[_F]]
) -> _F:
    services = services_of(request)
    settings = services.settings
    secret = settings.signing_secret
    if not settings.require_signed_downloads or secret is None:
        return await live(request, uid)
    try:
        # Checked before the row is read: without a credential, an unknown UID is 403 like a
        # known one, so the answer does not tell which UIDs exist.
        signing.verify(secret.get_secret_value(), uid, request.query_params)
    except Forbidden:
        if not services.keyring.enabled or "authorization" not in request.headers:
            raise
        caller = services.keyring.identify(request.headers)  # 401/403 for a bad key
        record = await live(request, uid)
        check_owner(caller, record)
        return record
    return await live(request, uid)


ReadableFile = Annotated[FileRecord, Depends(readable_file)]
ReadableRow = Annotated[FileRow, Depends(readable_row)]
