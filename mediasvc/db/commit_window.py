"""The window between a file's rename into place and the commit of its row.

A file at ``<uid[:2]>/<uid>`` whose row is not committed yet looks exactly like the leftover of
a process killed in that window. A grace period alone cannot tell them apart (an INSERT may
wait on a lock for longer than any grace), so the two sides share a lock named after the uid:

- the committer takes it in the row's transaction *before* the rename and keeps it until that
  transaction ends (commit, rollback, or its process dies);
- the sweeper removes a rowless file only while holding the same lock, after looking for the
  row again; if the lock is taken, the commit is still in progress and the file stays.

PostgreSQL: a transaction-scoped advisory lock. The server releases it when the transaction
ends, including when the committing process was killed (once its backend sees the connection
gone), so a crash never leaves it held. SQLite (the embedded default, where uploads and the
cleanup run in one process): a set of uids kept by this process; other processes on the same
SQLite file are covered only by the sweeper's grace period.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

# First key of our advisory locks (pg_advisory_xact_lock(int4, int4)), so they never collide
# with locks other code takes on single bigint keys or another namespace. "mdsv" in ASCII.
ADVISORY_NAMESPACE = 0x6D647376


def advisory_key(uid: str) -> int:
    """A signed 32-bit key for ``uid``; two uids sharing one only make a sweep wait a run."""
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:4], "big", signed=True)


class CommitWindow:
    """The lock between committing a file and sweeping rowless files (module docstring)."""

    def __init__(self, dialect_name: str) -> None:
        self._advisory = dialect_name == "postgresql"
        self._in_window: set[str] = set()  # SQLite: uids this process is committing

    @asynccontextmanager
    async def committing(self, session: AsyncSession, uid: str) -> AsyncIterator[None]:
        """Hold ``uid``'s lock; the caller renames the file and commits the row inside.

        On PostgreSQL the lock lasts until ``session``'s transaction ends, so the commit (or
        rollback) must happen inside this block or right after it, in the same session.
        """
        if self._advisory:
            await session.execute(
                select(func.pg_advisory_xact_lock(ADVISORY_NAMESPACE, advisory_key(uid)))
            )
        self._in_window.add(uid)
        try:
            yield
        finally:
            self._in_window.discard(uid)

    async def try_sweeping(self, session: AsyncSession, uid: str) -> bool:
        """Take ``uid``'s lock for ``session``'s transaction if nobody is committing it."""
        if uid in self._in_window:
            return False
        if not self._advisory:
            return True
        taken = await session.scalar(
            select(func.pg_try_advisory_xact_lock(ADVISORY_NAMESPACE, advisory_key(uid)))
        )
        return bool(taken)
