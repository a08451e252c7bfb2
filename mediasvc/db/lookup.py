"""A download's ``FileRow`` in one step, and a budgeted download's reservation and settlement
in one statement each: the first byte of a Range waits on the row and the reservation, and on a
keep-alive connection on the settlement of the response before it too (which holds the row).

Through SQLAlchemy each was most of that wait (docs/performance.md, "Cheaper first byte"): on
SQLite, aiosqlite runs each of cursor, execute, fetch, close and the pool's rollback in its
thread, five thread hops, and a write holds the database's write lock across those of its
transaction; on PostgreSQL the pool's ping and the statement are two round trips (a write:
ping, UPDATE, COMMIT, the row locked from the UPDATE to the COMMIT), with SQLAlchemy's greenlet
and pool work around each. Here:

- SQLite: connections of our own, each in a thread of our own (one for reads, one for writes;
  each thread opens its connection and alone uses it): one thread hop per statement. Not on
  the event loop: a primary-key lookup is microseconds from the page cache, but a miss (or the
  WAL index rebuilt after a crash) is a disk read, which would stall every connection of the
  worker. Reads go through a read-only connection: in WAL mode a reader never waits for the
  writer, and this one never waits at all (busy timeout 0), nor queues behind a write. Writes go
  through a second connection in autocommit, so an UPDATE is its own transaction, committed
  when it has run; in their thread, this process's reservations and settlements never wait for
  each other, and another writer (another process, a job) is waited for at most
  ``SQLITE_WRITE_WAIT_S``, which writes queued behind it in the thread wait too.
- PostgreSQL: an asyncpg pool of our own: the prepared statement, one round trip, outside a
  transaction, so an UPDATE commits by itself. Its connections only ever run such single
  statements, so there is nothing to reset on release (asyncpg's default reset is a round trip
  of its own). No ping: a connection that died is found by the statement, and the request goes
  the usual way.

Either raises ``LookupSkipped`` for anything it could not do (a lock, a lost connection, a
database that is down); the caller then does it through SQLAlchemy as every other read or write
does, whose errors (503 for an outage) are the ones a client sees. After a PostgreSQL failure
the lookup stands aside for ``PAUSE_AFTER_FAILURE_S``, so an outage costs requests one attempt
at connecting, not two each.

A write is done again the usual way only where it surely was not done here: SQLite and
PostgreSQL refused it (a statement outside a transaction that fails is undone whole), or it was
never sent. A PostgreSQL connection lost, or the wait run out, once the UPDATE was sent leaves
its outcome unknown (``OutcomeUnknown``). A reservation is made again all the same: if the first
was written too, the download holds its bytes twice, and the copy that nothing settles lapses
with the lease, as a crashed process's does (delivery/reservation.py), which errs against the
client and never over the budget. The lease is the file's, not the download's: it lapses once
the file has gone ``download_reservation_lease_s`` without a reservation or a renewal, so on a
file downloaded without pause the copy is held until the downloads pause (meanwhile the last
bytes of its budget may answer 503). A settlement is not: applied twice, it would give back bytes
that were sent. It is then left to the lease, as one whose database is unavailable already was.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote

import asyncpg
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import Select

from mediasvc.db.file_row import COLUMNS, FileRow, row_query
from mediasvc.db.repository import (
    reservation_params,
    reservation_update,
    settlement_params,
    settlement_update,
)

PAUSE_AFTER_FAILURE_S = 5.0
# The lookup's whole wait: a connection (opening one included) and the statement. Short, since
# giving up costs only the usual path, which waits for the database as long as it must
# (db/session.py): a database that does not answer is waited on about once, not twice.
TIMEOUT_S = 1.0
# How long a SQLite write waits for another writer (one UPDATE holds the lock well under a
# millisecond): short, since the writes queued in the writer's thread wait as long.
SQLITE_WRITE_WAIT_S = 0.05
# How long a PostgreSQL settlement, once sent, waits for its row and its answer: past it, it is
# left to the lease (its outcome unknown), so as long as the usual path would reasonably wait.
SETTLEMENT_WAIT_S = 30.0
# Keyword arguments SQLAlchemy's asyncpg dialect takes for itself (not asyncpg.connect's).
_SQLALCHEMY_ONLY = frozenset(
    {"async_creator_fn", "prepared_statement_cache_size", "prepared_statement_name_func"}
)


class LookupSkipped(Exception):
    """It could not be done this way: do it the usual way (but see ``OutcomeUnknown``)."""


class OutcomeUnknown(LookupSkipped):
    """The statement was sent, and what became of it is unknown (a connection lost, the wait
    over): a read or a reservation may be done again the usual way, a settlement may not."""


class RowLookup(Protocol):
    async def file_row(self, uid: str) -> FileRow | None: ...

    async def reserve_bytes(
        self, uid: str, n: int, budget: int, *, now: datetime, lease_until: datetime
    ) -> int | None:
        """``repository.reserve_bytes``: ``repository.reservation_update`` run and committed."""
        ...

    async def settle_reservation(self, uid: str, reserved: int, sent: int) -> None:
        """``repository.settle_reservation``: ``repository.settlement_update`` run and
        committed; ``OutcomeUnknown`` when it may have been."""
        ...

    async def close(self) -> None: ...


class _Statement:
    """A statement as the dialect's SQL: its parameters in the driver's order, each converted as
    SQLAlchemy converts it, and the columns of its rows converted back the same way."""

    def __init__(self, statement: Select[Any] | UpdateBase, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        # sqlite3 (qmark) and asyncpg (numeric_dollar) both take their parameters by position.
        assert compiled.positiontup is not None
        self.sql = str(compiled)
        self._compiled = compiled
        self._binds: list[tuple[str, Callable[[Any], Any] | None]] = [
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup
        ]
        self._processors: list[Callable[[Any], Any] | None] = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.exported_columns
        ]

    def args(self, params: dict[str, Any]) -> tuple[Any, ...]:
        values = self._compiled.construct_params(params)  # the statement's own literals too
        return tuple(
            values[name] if process is None else process(values[name])
            for name, process in self._binds
        )

    def values(self, row: Sequence[Any]) -> list[Any]:
        return [
            value if process is None else process(value)
            for process, value in zip(self._processors, row, strict=True)
        ]


class _Statements:
    """What the lookup runs, in a dialect's SQL."""

    def __init__(self, dialect: Dialect) -> None:
        self.row = _Statement(row_query(), dialect)
        self.reservation = _Statement(reservation_update(), dialect)
        self.settlement = _Statement(settlement_update(), dialect)

    def file_row(self, values: Sequence[Any]) -> FileRow:
        return FileRow(**dict(zip(COLUMNS, self.row.values(values), strict=True)))


def _reserved_total(row: Sequence[Any] | None) -> int | None:
    return None if row is None else int(row[0])


class _SqliteConnection:
    """One connection of our own to the database, opened and used in one thread of its own."""

    def __init__(self, path: str, name: str, *pragmas: str, busy_timeout_s: float) -> None:
        self._path, self._name, self._pragmas = path, name, pragmas
        self._busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None  # in the executor's thread only

    def _execute(self, sql: str, args: Sequence[Any]) -> list[Any]:
        if self._connection is None:
            # mode=rw: never create the file (a missing database is the usual path's error); no
            # implicit BEGIN (isolation_level None): each statement is its own transaction.
            self._connection = sqlite3.connect(
                f"file:{quote(self._path)}?mode=rw",
                uri=True,
                timeout=self._busy_timeout_s,
                isolation_level=None,
            )
            for pragma in self._pragmas:
                self._connection.execute(pragma)
        # fetchall, not fetchone: the statement runs to its end (a read keeps no transaction
        # open, which would hold back the WAL's checkpoints; an UPDATE has committed).
        return self._connection.execute(sql, args).fetchall()

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None

    async def run(self, sql: str, args: Sequence[Any]) -> list[Any]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"mediasvc-row-{self._name}")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._execute, sql, args
            )
        except sqlite3.Error as exc:
            # Nothing written: a statement outside a transaction that fails is rolled back.
            raise LookupSkipped(str(exc)) from exc

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # The connection is closed in its own thread, after any statement still queued; the
        # thread is idle then, so joining it is immediate.
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        except BaseException:
            executor.shutdown(wait=False)  # the queued close still runs, then it ends
            raise
        executor.shutdown()


class SqliteLookup:
    def __init__(self, path: str, dialect: Dialect) -> None:
        path = os.path.abspath(path)
        self._statements = _Statements(dialect)
        # A read never queues behind a write waiting for another writer's lock: each has its
        # own connection and thread. The reader never waits at all (busy timeout 0).
        self._reader = _SqliteConnection(path, "read", "PRAGMA query_only = ON", busy_timeout_s=0)
        # As the engine's connections (db/session.py): a commit does not wait for an fsync
        # (WAL with synchronous NORMAL: durable at the next checkpoint, never corrupt).
        self._writer = _SqliteConnection(
            path, "write", "PRAGMA synchronous = NORMAL", busy_timeout_s=SQLITE_WRITE_WAIT_S
        )

    async def file_row(self, uid: str) -> FileRow | None:
        row = self._statements.row
        rows = await self._reader.run(row.sql, row.args({"uid": uid}))
        return self._statements.file_row(rows[0]) if rows else None

    async def reserve_bytes(
        self, uid: str, n: int, budget: int, *, now: datetime, lease_until: datetime
    ) -> int | None:
        reservation = self._statements.reservation
        params = reservation_params(uid, n, budget, now=now, lease_until=lease_until)
        rows = await self._writer.run(reservation.sql, reservation.args(params))
        return _reserved_total(rows[0] if rows else None)

    async def settle_reservation(self, uid: str, reserved: int, sent: int) -> None:
        settlement = self._statements.settlement
        args = settlement.args(settlement_params(uid, reserved, sent))
        await self._writer.run(settlement.sql, args)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()


def _outcome_unknown(exc: BaseException) -> bool:
    """Whether a statement sent may have run: anything but the server refusing it. A connection
    error (class 08) or a shutdown (57P0x) reported by the server may come after its commit."""
    if not isinstance(exc, asyncpg.PostgresError):
        return True
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    return sqlstate.startswith(("08", "57P"))


class PostgresLookup:
    def __init__(self, connect_kwargs: dict[str, Any], dialect: Dialect, *, size: int) -> None:
        self._connect_kwargs = connect_kwargs
        self._size = size
        self._statements = _Statements(dialect)
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

    async def _fetchrow(
        self, sql: str, args: Sequence[Any], *, settles: bool = False
    ) -> asyncpg.Record | None:
        """The statement's one row (None: no row), run outside a transaction, the whole of it
        within ``TIMEOUT_S``; a settlement's statement, once sent, within
        ``SETTLEMENT_WAIT_S``."""
        if time.monotonic() < self._resume_at:
            raise LookupSkipped("paused after a failure")
        sent = False
        try:
            async with asyncio.timeout(TIMEOUT_S) as wait:
                pool = self._pool or await self._opened()
                async with pool.acquire() as connection:
                    sent = True  # from here on, the server may have run it
                    if settles:
                        wait.reschedule(asyncio.get_running_loop().time() + SETTLEMENT_WAIT_S)
                    return await connection.fetchrow(sql, *args)
        except _ASYNCPG_FAILURES as exc:
            self._resume_at = time.monotonic() + PAUSE_AFTER_FAILURE_S
            if sent and _outcome_unknown(exc):
                raise OutcomeUnknown(str(exc)) from exc
            raise LookupSkipped(str(exc)) from exc

    async def file_row(self, uid: str) -> FileRow | None:
        row = self._statements.row
        values = await self._fetchrow(row.sql, row.args({"uid": uid}))
        return None if values is None else self._statements.file_row(tuple(values))

    async def reserve_bytes(
        self, uid: str, n: int, budget: int, *, now: datetime, lease_until: datetime
    ) -> int | None:
        reservation = self._statements.reservation
        params = reservation_params(uid, n, budget, now=now, lease_until=lease_until)
        values = await self._fetchrow(reservation.sql, reservation.args(params))
        return _reserved_total(values)

    async def settle_reservation(self, uid: str, reserved: int, sent: int) -> None:
        settlement = self._statements.settlement
        args = settlement.args(settlement_params(uid, reserved, sent))
        await self._fetchrow(settlement.sql, args, settles=True)

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
    """Our connections hold no session state: single statements, outside any transaction."""


def lookup_for(url: URL, dialect: Dialect, *, pool_size: int) -> RowLookup | None:
    """The lookup for the database at ``url``; None where there is none (an in-memory or
    URI-configured SQLite database: the usual path reads and writes it)."""
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
        # each statement unnamed, which a pooled server connection does not need to keep.
        connect_kwargs["statement_cache_size"] = int(kwargs["prepared_statement_cache_size"])
    return connect_kwargs
