"""A download's ``FileRow`` in one step: the first byte of a Range waits on this read.

Through SQLAlchemy the read was most of that wait (docs/performance.md, "Cheaper first
byte"): on SQLite, aiosqlite runs each of cursor, execute, fetch, close and the pool's
rollback in its thread, five thread hops; on PostgreSQL the pool's ping and the SELECT are two
round trips, with SQLAlchemy's greenlet and pool work around each. Here:

- SQLite: a connection of our own, in a thread of our own (one worker, which opens the
  connection and alone uses it): one thread hop per read. Not on the event loop: a primary-key
  lookup is microseconds from the page cache, but a miss (or the WAL index rebuilt after a
  crash) is a disk read, which would stall every connection of the worker. In WAL mode a reader
  never waits for the writer, and this one never waits at all (busy timeout 0): whatever it
  cannot read at once goes the usual way (below).
- PostgreSQL: an asyncpg pool of our own: the prepared SELECT, one round trip. Its connections
  only ever run that SELECT outside a transaction, so there is nothing to reset on release
  (asyncpg's default reset is a round trip of its own). No ping: a connection that died is
  found by the SELECT, and the request goes the usual way.

Either raises ``LookupSkipped`` for anything it could not do (a lock, a lost connection, a
database that is down); the caller then reads the row through SQLAlchemy as every other read
does, whose errors (503 for an outage) are the ones a client sees. After a PostgreSQL failure
the lookup stands aside for ``PAUSE_AFTER_FAILURE_S``, so an outage costs requests one attempt
at connecting, not two each.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import quote

import asyncpg
from sqlalchemy.engine import URL, Dialect

from mediasvc.db.file_row import COLUMNS, FileRow, row_query

PAUSE_AFTER_FAILURE_S = 5.0
# The lookup's whole wait: a connection (opening one included) and the SELECT. Short, since
# giving up costs only the usual path, which waits for the database as long as it must
# (db/session.py): a database that does not answer is waited on about once, not twice.
TIMEOUT_S = 1.0
# Keyword arguments SQLAlchemy's asyncpg dialect takes for itself (not asyncpg.connect's).
_SQLALCHEMY_ONLY = frozenset(
    {"async_creator_fn", "prepared_statement_cache_size", "prepared_statement_name_func"}
)


class LookupSkipped(Exception):
    """The row could not be read this way; read it the usual way."""


class RowLookup(Protocol):
    async def file_row(self, uid: str) -> FileRow | None: ...

    async def close(self) -> None: ...


class _Query:
    """``row_query`` as the dialect's SQL, and the dialect's conversion of each column."""

    def __init__(self, dialect: Dialect) -> None:
        query = row_query()
        self.sql = str(query.compile(dialect=dialect))
        self._processors: list[Callable[[Any], Any] | None] = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in query.selected_columns
        ]

    def row(self, values: Sequence[Any]) -> FileRow:
        converted = (
            value if process is None else process(value)
            for process, value in zip(self._processors, values, strict=True)
        )
        return FileRow(**dict(zip(COLUMNS, converted, strict=True)))


class SqliteLookup:
    def __init__(self, path: str, dialect: Dialect) -> None:
        self._path = os.path.abspath(path)
        self._query = _Query(dialect)
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None  # used in the executor's thread only

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            # mode=rw: never create the file (a missing database is the usual path's error);
            # no implicit BEGIN (isolation_level None), and nothing but reads (query_only).
            # Made in the executor's one thread, the only one that uses it.
            connection = sqlite3.connect(
                f"file:{quote(self._path)}?mode=rw", uri=True, timeout=0, isolation_level=None
            )
            connection.execute("PRAGMA query_only = ON")
            self._connection = connection
        return self._connection

    def _read(self, uid: str) -> list[Any]:
        # fetchall, not fetchone: the statement runs to its end, so no read transaction stays
        # open (one would hold back the WAL's checkpoints).
        return self._connect().execute(self._query.sql, (uid,)).fetchall()

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def file_row(self, uid: str) -> FileRow | None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="mediasvc-row-lookup")
        try:
            rows = await asyncio.get_running_loop().run_in_executor(self._executor, self._read, uid)
        except sqlite3.Error as exc:
            raise LookupSkipped(str(exc)) from exc
        return self._query.row(rows[0]) if rows else None

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            # The connection is closed in its own thread, after any read still queued; the
            # thread is idle then, so joining it is immediate.
            try:
                await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
            except BaseException:
                executor.shutdown(wait=False)  # the queued close still runs, then it ends
                raise
            executor.shutdown()


class PostgresLookup:
    def __init__(self, connect_kwargs: dict[str, Any], dialect: Dialect, *, size: int) -> None:
        self._connect_kwargs = connect_kwargs
        self._size = size
        self._query = _Query(dialect)
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._resume_at = 0.0

    async def _opened(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    min_size=0, max_size=self._size, reset=_nothing_to_reset, **self._connect_kwargs
                )
        return self._pool

    async def file_row(self, uid: str) -> FileRow | None:
        if time.monotonic() < self._resume_at:
            raise LookupSkipped("paused after a failure")
        try:
            async with asyncio.timeout(TIMEOUT_S):
                pool = self._pool or await self._opened()
                values = await pool.fetchrow(self._query.sql, uid)
        except _ASYNCPG_FAILURES as exc:
            self._resume_at = time.monotonic() + PAUSE_AFTER_FAILURE_S
            raise LookupSkipped(str(exc)) from exc
        return None if values is None else self._query.row(tuple(values))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


# What asyncpg raises for a server or connection that fails us: the server's errors, a connection
# lost or closed (OSError, InterfaceError), and a connection whose protocol was left mid-way
# (InternalClientError: "another operation is in progress" on one the server terminated).
_ASYNCPG_FAILURES = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def _nothing_to_reset(_connection: asyncpg.Connection) -> None:
    """Our connections hold no session state: one SELECT, outside any transaction."""


def lookup_for(url: URL, dialect: Dialect, *, pool_size: int) -> RowLookup | None:
    """The lookup for the database at ``url``; None where there is none (an in-memory or
    URI-configured SQLite database: the usual path reads it)."""
    if url.get_backend_name() == "sqlite":
        if url.query or url.database in (None, "", ":memory:"):
            return None
        assert url.database is not None
        return SqliteLookup(url.database, dialect)
    if url.get_driver_name() == "asyncpg":
        return PostgresLookup(asyncpg_connect_kwargs(url, dialect), dialect, size=pool_size)
    return None


def asyncpg_connect_kwargs(url: URL, dialect: Dialect) -> dict[str, Any]:
    """asyncpg's arguments for the database at ``url``, as SQLAlchemy's dialect reads it."""
    _, kwargs = dialect.create_connect_args(url)
    connect_kwargs = {k: v for k, v in kwargs.items() if k not in _SQLALCHEMY_ONLY}
    if "prepared_statement_cache_size" in kwargs:
        # SQLAlchemy's name for asyncpg's statement cache. 0 is how a deployment behind
        # pgbouncer (transaction pooling) says no named statements: asyncpg then prepares
        # each SELECT unnamed, which a pooled server connection does not need to keep.
        connect_kwargs["statement_cache_size"] = int(kwargs["prepared_statement_cache_size"])
    return connect_kwargs
