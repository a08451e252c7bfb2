"""Access times for LRU eviction, kept in memory and written in batches.

A download never waits on this write, nor fails with it (a full disk or a read-only database
still serves files): the time is best effort, at most once a minute per file, flushed every
``access_time_flush_s`` and on shutdown.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import anyio

from mediasvc.db import repository
from mediasvc.db.file_row import FileRow
from mediasvc.db.session import Database

logger = logging.getLogger(__name__)

RESOLUTION = timedelta(minutes=1)
# If the database stays unwritable, keep at most this many files' times (newest wins).
MAX_PENDING_FILES = 100_000


class AccessLog:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: dict[str, datetime] = {}

    def record(self, record: FileRow, now: datetime) -> None:
        if record.last_accessed_at and now - record.last_accessed_at < RESOLUTION:
            return
        if len(self._pending) < MAX_PENDING_FILES or record.uid in self._pending:
            self._pending[record.uid] = now

    async def flush(self) -> int:
        """Write what was recorded; the number of files written (0 on failure, kept for later)."""
        pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            async with self._db.session() as session:
                await repository.touch_many(session, pending)
        except Exception:
            logger.warning("could not record access times of %d files", len(pending), exc_info=True)
            for uid, when in pending.items():
                if len(self._pending) < MAX_PENDING_FILES:
                    self._pending.setdefault(uid, when)
            return 0
        return len(pending)

    async def run(self, every_s: float) -> None:
        try:
            while True:
                await anyio.sleep(every_s)
                await self.flush()
        finally:
            with anyio.CancelScope(shield=True):
                await self.flush()
