"""What the cleanup job does for resumable uploads: those past their expiry go (an unfinished
one's bytes and row, a finished one's row: its file lives on under its own rules), and so do
``.upload`` files that no row claims (a process killed between creating the file and its row)
or whose upload is a file now (a process killed between committing the file's row and removing
the ``.upload`` name it was linked from: storage/local.py ``link_into_place``)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from mediasvc.db.models import UploadConcat, UploadRecord
from mediasvc.db.session import Database
from mediasvc.errors import MediaServiceError
from mediasvc.resumable import repository
from mediasvc.resumable.metadata import file_options, parse_metadata
from mediasvc.resumable.writers import try_lock
from mediasvc.storage.local import UPLOAD_SUFFIX, LocalStore


async def expire_uploads(db: Database, store: LocalStore, now: datetime, *, batch: int) -> int:
    """Remove up to ``batch`` expired uploads; one being written right now is left for the next
    run (its writer moves the expiry on). The count removed."""
    async with db.session() as session:
        rows = await repository.expired(session, now, limit=batch)
    removed = 0
    for row in rows:
        path = store.upload_path_for(row.uid)
        fd = await anyio.to_thread.run_sync(try_lock, path)
        if fd is None and await anyio.to_thread.run_sync(path.exists):
            continue
        try:
            await anyio.to_thread.run_sync(store.remove_upload, row.uid)
            async with db.session() as session:
                await repository.remove_expired(session, row, _caller_metadata(row))
            removed += 1
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def _caller_metadata(row: UploadRecord) -> dict[str, Any] | None:
    """The caller's metadata of an upload (checked when it was created)."""
    try:
        return file_options(parse_metadata(row.metadata_header)).metadata
    except MediaServiceError:  # refused at creation, so not expected: the event goes without
        return None


async def remove_upload(db: Database, store: LocalStore, uid: str) -> None:
    """An upload's bytes, then its row."""
    await anyio.to_thread.run_sync(store.remove_upload, uid)
    async with db.session() as session:
        await repository.remove(session, uid)


async def sweep_orphan_uploads(
    db: Database, store: LocalStore, *, now_s: float, grace_s: float
) -> int:
    """Delete ``.upload`` files untouched for ``grace_s`` whose upload has no row, or is a file
    now (a finished partial's bytes wait for a final upload); the count."""
    old = await anyio.to_thread.run_sync(_old_upload_files, store.incoming, now_s - grace_s)
    if not old:
        return 0
    async with db.session() as session:
        rows = await repository.get_many(session, list(old))
    swept = 0
    for uid in old:
        row = rows.get(uid)
        if (row is None or _is_a_file(row)) and await anyio.to_thread.run_sync(
            store.remove_upload, uid
        ):
            swept += 1
    return swept


def _is_a_file(row: UploadRecord) -> bool:
    """The upload is complete and became a file (its file's row committed with this mark), so
    its ``.upload`` name is a second link to that file's bytes, no longer needed."""
    return row.completed_at is not None and row.concat != UploadConcat.PARTIAL.value


def _old_upload_files(incoming: Path, before_s: float) -> dict[str, Path]:
    try:
        entries = list(os.scandir(incoming))
    except FileNotFoundError:
        return {}
    old = {}
    for entry in entries:
        if not entry.name.endswith(UPLOAD_SUFFIX):
            continue
        try:
            if entry.stat().st_mtime < before_s:
                old[entry.name.removesuffix(UPLOAD_SUFFIX)] = Path(entry.path)
        except FileNotFoundError:
            continue
    return old
