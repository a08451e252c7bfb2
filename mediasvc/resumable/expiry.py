"""What the cleanup job does for resumable uploads: those past their expiry go (an unfinished
one's bytes and row, a finished one's row: its file lives on under its own rules), and so do
``.upload`` files that no row claims (a process killed between creating the file and its row)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import anyio

from mediasvc.db.session import Database
from mediasvc.resumable import repository
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
            await remove_upload(db, store, row.uid)
            removed += 1
        finally:
            if fd is not None:
                os.close(fd)
    return removed


async def remove_upload(db: Database, store: LocalStore, uid: str) -> None:
    """An upload's bytes, then its row."""
    await anyio.to_thread.run_sync(store.remove_upload, uid)
    async with db.session() as session:
        await repository.remove(session, uid)


async def sweep_orphan_uploads(
    db: Database, store: LocalStore, *, now_s: float, grace_s: float
) -> int:
    """Delete ``.upload`` files untouched for ``grace_s`` whose upload has no row; the count."""
    old = await anyio.to_thread.run_sync(_old_upload_files, store.incoming, now_s - grace_s)
    if not old:
        return 0
    async with db.session() as session:
        claimed = await repository.get_many(session, list(old))
    swept = 0
    for uid in old:
        if uid not in claimed and await anyio.to_thread.run_sync(store.remove_upload, uid):
            swept += 1
    return swept


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
