"""A finished part file becomes a file: its row, then rename and commit in the uid's window.

Uploads and derived copies (the faststart remux) both end here, so a new file's row is built in
one place and every new file reaches the media root the same way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import anyio

from mediasvc.db import repository
from mediasvc.db.models import CloudStatus, FileRecord, ProbeStatus
from mediasvc.db.repository import Processing, UploadCompletion
from mediasvc.db.session import Database
from mediasvc.storage.part import PartFile


def new_record(
    part: PartFile,
    *,
    sha256: str,
    created_at: datetime,
    original_name: str | None,
    extension: str | None,
    media_type: str,
    expires_at: datetime | None,
    max_downloads: int | None,
    owner: str | None,
    delete_token_hash: str,
    volume: str,
    derived_from: str | None = None,
    caller_metadata: dict[str, Any] | None = None,
) -> FileRecord:
    """The row of a new local file (``part``, finished): nothing pushed or probed yet."""
    assert part.uid is not None
    return FileRecord(
        uid=part.uid,
        original_name=original_name,
        extension=extension,
        format=media_type,
        size=part.size,
        sha256=sha256,
        created_at=created_at,
        expires_at=expires_at,
        max_downloads=max_downloads,
        bytes_served=0,
        local=True,
        cloud_status=CloudStatus.PENDING.value,
        cloud_updated_at=created_at,
        cloud_attempts=0,
        delete_token_hash=delete_token_hash,
        owner=owner,
        derived_from=derived_from,
        probe_status=ProbeStatus.PENDING.value,
        volume=volume,
        caller_metadata=caller_metadata,
    )


async def commit_part(
    db: Database,
    part: PartFile,
    record: FileRecord,
    *,
    faststart_of: str | None = None,
    completes_upload: UploadCompletion | None = None,
    processing: Processing | None = None,
) -> bool:
    """Rename ``part`` into place and commit ``record``; with ``faststart_of``, the row of that
    original points to the new file in the same transaction (with ``processing``, the original
    it is derived from lists it), and False (nothing kept) if the original is gone; with
    ``completes_upload``, the resumable upload's row is marked complete in it.

    The uid's commit window lock is taken before the rename and held until the row's
    transaction ends, so the sweep of rowless files never takes a file whose row is still on
    its way, however long the INSERT waits (db/commit_window.py). On any failure, or a no,
    nothing of the file is left; if the process dies in between, the file has no row and the
    sweep removes it. A resumable upload's file is linked, not renamed, and keeps its
    ``.upload`` name until the commit: a death in between leaves the upload whole (its next
    request completes it again), and one right after the commit leaves only that name, which
    the cleanup removes (resumable/expiry.py). A failure (the database down at the last
    PATCH) likewise removes only the link: the upload stays whole, to be completed again.
    """
    try:
        async with db.session() as session, db.commit_window.committing(session, record.uid):
            await anyio.to_thread.run_sync(part.commit)
            added = await repository.add_new_file(
                session,
                record,
                faststart_of=faststart_of,
                completes_upload=completes_upload,
                processing=processing,
            )
            if not added:
                await anyio.to_thread.run_sync(part.discard)
                return False
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(part.discard)
        raise
    # Committed: a resumable upload's file, linked into place, drops its ``.upload`` name only
    # now (until the row was committed, the upload could still complete again from it).
    await anyio.to_thread.run_sync(part.forget_source)
    return True
