"""Who may read a file: one rule for every route that reveals one.

Download (GET and HEAD), ``/metadata`` and ``/preview`` all depend on ``ReadableFile``, so a
route cannot show a file's bytes, name, size or sha256 (which confirms a guess of the content)
under weaker rules than the download, as S3's HeadObject needs GetObject's authorization:

- ``require_signed_downloads`` off: the UID is the capability; ``Authorization`` is not looked at.
- on: a valid, unexpired signed link for this UID (``GET /api/v1/files/{uid}/link``; a link
  opens every route of its file), or the API key that uploaded the file, or an admin key. The
  key may mint such a link anyway, so accepting it directly gives it nothing more.

``/link`` itself needs the owner's (or an admin) key when keys are on (``check_owner``); a
signed link never mints another. Settings refuse signed downloads without keys, else anyone
could mint a link for any UID.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request

from mediasvc.api.common import services_of
from mediasvc.auth import Principal
from mediasvc.db import repository
from mediasvc.db.models import FileRecord, GoneReason, ImportRecord
from mediasvc.delivery import signing
from mediasvc.errors import Forbidden, Gone, NotFound
from mediasvc.ids import is_valid_uid


async def live_record(request: Request, uid: str) -> FileRecord:
    """The file's row: 404 for an unknown or malformed UID, 410 once deleted, expired or used up."""
    if not is_valid_uid(uid):
        raise NotFound("no file has this UID")
    async with services_of(request).db.read() as session:
        record = await repository.get(session, uid)
    if record is None:
        raise NotFound("no file has this UID")
    if record.gone_reason is not None:
        raise Gone(f"the file is gone: {record.gone_reason}")
    if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
        raise Gone(f"the file is gone: {GoneReason.EXPIRED.value}")
    return record


def check_owner(caller: Principal | None, record: FileRecord | ImportRecord) -> None:
    """403 unless keys are off (``caller`` None), the key is an admin's or it uploaded the file
    (or started the import)."""
    if caller is not None and not caller.admin and record.owner != caller.name:
        raise Forbidden("this file belongs to another key")


async def readable_file(request: Request, uid: str) -> FileRecord:
    """The file's row if this request may read the file (see the module docstring)."""
    services = services_of(request)
    settings = services.settings
    secret = settings.signing_secret
    if not settings.require_signed_downloads or secret is None:
        return await live_record(request, uid)
    try:
        # Checked before the row is read: without a credential, an unknown UID is 403 like a
        # known one, so the answer does not tell which UIDs exist.
        signing.verify(secret.get_secret_value(), uid, request.query_params)
    except Forbidden:
        if not services.keyring.enabled or "authorization" not in request.headers:
            raise
        caller = services.keyring.identify(request.headers)  # 401/403 for a bad key
        record = await live_record(request, uid)
        check_owner(caller, record)
        return record
    return await live_record(request, uid)


ReadableFile = Annotated[FileRecord, Depends(readable_file)]
