"""Engine and sessions. Opened in the app's lifespan, never at import."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from mediasvc.db import repository
from mediasvc.db.commit_window import CommitWindow
from mediasvc.db.file_row import FileRow
from mediasvc.db.lookup import LookupSkipped, OutcomeUnknown, lookup_for
from mediasvc.db.models import FileRecord
from mediasvc.db.outages import is_outage
from mediasvc.db.outbox import PENDING_EVENTS_KEY
from mediasvc.errors import DatabaseUnavailable

READ_POOL_SIZE = 4  # per process, beside the main pool's 10 (+20): reads take one statement


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets readers run beside the one writer; busy_timeout waits instead of failing.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=10
    )


def make_read_engine(url: str) -> AsyncEngine:
    """PostgreSQL connections for single reads, kept in autocommit (see ``Database``)."""
    return create_async_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_pre_ping=True,
        pool_size=READ_POOL_SIZE,
        max_overflow=READ_POOL_SIZE,
        pool_timeout=10,
    )


#: Told the msg ids of the events a transaction wrote, once it committed (db/outbox.py).
#: Called on the event loop's thread; must not block or raise.
OnEvents = Callable[[list[str]], None]


class Database:
    """Owns the engine; hands out sessions whose outage errors become ``DatabaseUnavailable``
    (503). Every other database error is a bug and propagates as it is (500, logged)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        # Single reads on the way to a download's first byte: on PostgreSQL from a small pool
        # of connections in autocommit, so the read is one statement and its pre-ping one
        # more, not BEGIN, SELECT, ROLLBACK after a ping that is itself BEGIN, ping, ROLLBACK
        # (SQLAlchemy's asyncpg ping opens a transaction unless the connection is in
        # autocommit). SQLite begins nothing for a read: its engine serves both.
        self._read_engine = make_read_engine(url) if url.startswith("postgresql") else None
        self._reads = async_sessionmaker(self._read_engine or self.engine, expire_on_commit=False)
        # A download's row, and its budget's reservation and settlement, without SQLAlchemy
        # where they can be (db/lookup.py).
        self._lookup = lookup_for(make_url(url), self.engine.dialect, pool_size=READ_POOL_SIZE)
        self.on_events: OnEvents | None = None
        # A Session class of this Database's own, so its commit hooks see only its sessions.
        session_class = type("MediasvcSession", (Session,), {})
        event.listen(session_class, "after_commit", self._after_commit)
        event.listen(session_class, "after_rollback", self._after_rollback)
        self._sessions = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=session_class
        )
        # Shared by every upload and sweep that use this Database (db/commit_window.py).
        self.commit_window = CommitWindow(self.engine.dialect.name)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._translated(self._sessions) as session:
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for one read outside any transaction (it must not write)."""
        async with self._translated(self._reads) as session:
            yield session

    async def file_row(self, uid: str) -> FileRow | None:
        """What a download needs of the file's row (None: no row), read in one step where the
        lookup can, else through a read session (whose errors are the ones raised)."""
        if self._lookup is not None:
            try:
                return await self._lookup.file_row(uid)
            except LookupSkipped:
                pass
        async with self.read() as session:
            record = await session.get(FileRecord, uid)
        return None if record is None else FileRow.of(record)

    async def reserve_bytes(
        self, uid: str, n: int, budget: int, *, now: datetime, lease_until: datetime
    ) -> int | None:
        """``repository.reserve_bytes`` (the new total, None if ``n`` does not fit), in one
        statement where the lookup can, else through a session (whose errors are raised)."""
        if self._lookup is not None:
            try:
                return await self._lookup.reserve_bytes(
                    uid, n, budget, now=now, lease_until=lease_until
                )
            except LookupSkipped:
                pass
        async with self.session() as session:
            return await repository.reserve_bytes(
                session, uid, n, budget, now=now, lease_until=lease_until
            )

    async def settle_reservation(self, uid: str, reserved: int, sent: int) -> None:
        """``repository.settle_reservation``, in one statement where the lookup can, else
        through a session; ``DatabaseUnavailable`` if it cannot be done (or may have been done:
        done twice, it would give back what was sent)."""
        if self._lookup is not None:
            try:
                await self._lookup.settle_reservation(uid, reserved, sent)
                return
            except OutcomeUnknown as exc:
                raise DatabaseUnavailable("a settlement's outcome is unknown") from exc
            except LookupSkipped:
                pass
        async with self.session() as session:
            await repository.settle_reservation(session, uid, reserved, sent)

    @staticmethod
    @asynccontextmanager
    async def _translated(
        sessions: async_sessionmaker[AsyncSession],
    ) -> AsyncIterator[AsyncSession]:
        try:
            async with sessions() as session:
                yield session
        except Exception as exc:
            if is_outage(exc):
                raise DatabaseUnavailable("the metadata database is unavailable") from exc
            raise

    def _after_commit(self, session: Session) -> None:
        committed = session.info.pop(PENDING_EVENTS_KEY, None)
        if committed and self.on_events is not None:
            self.on_events(committed)

    def _after_rollback(self, session: Session) -> None:
        session.info.pop(PENDING_EVENTS_KEY, None)  # rolled back with the change

    async def dispose(self) -> None:
        if self._lookup is not None:
            await self._lookup.close()
        if self._read_engine is not None:
            await self._read_engine.dispose()
        await self.engine.dispose()
