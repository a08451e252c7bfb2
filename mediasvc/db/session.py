"""Engine and sessions. Opened in the app's lifespan, never at import."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from mediasvc.db.commit_window import CommitWindow
from mediasvc.db.outages import is_outage
from mediasvc.db.outbox import PENDING_EVENTS_KEY
from mediasvc.errors import DatabaseUnavailable


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


#: Told the msg ids of the events a transaction wrote, once it committed (db/outbox.py).
#: Called on the event loop's thread; must not block or raise.
OnEvents = Callable[[list[str]], None]


class Database:
    """Owns the engine; hands out sessions whose outage errors become ``DatabaseUnavailable``
    (503). Every other database error is a bug and propagates as it is (500, logged)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
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
        try:
            async with self._sessions() as session:
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
        await self.engine.dispose()
