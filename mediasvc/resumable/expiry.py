"""Uploads past their expiry go (the cleanup job calls this): an unfinished one's bytes and row,
a finished one's row (its file lives on under its own rules)."""

from __future__ import annotations

import os
from datetime import datetime

import anyio

from mediasvc.db.session import Database
from mediasvc.resumable import repository
from mediasvc.resumable.writers import try_lock
from mediasvc.storage.local import LocalStore


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
