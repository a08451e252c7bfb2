"""A download's row read in one step (mediasvc/db/lookup.py): the same values the ORM reads, on
SQLite and PostgreSQL, and the usual path whenever the lookup cannot read (a lock held, a
connection PostgreSQL terminated, a server that is down)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import make_url

from mediasvc.db import repository
from mediasvc.db.file_row import FileRow, row_query
from mediasvc.db.lookup import (
    LookupSkipped,
    SqliteLookup,
    _SqliteConnection,
    asyncpg_connect_kwargs,
    lookup_for,
)
from mediasvc.db.migrations import upgrade
from mediasvc.db.models import FileRecord
from mediasvc.db.session import Database
from mediasvc.errors import DatabaseUnavailable
from tests.conftest import PG_SERVER, free_port
from tests.helpers import add_file, database, own_postgres_database


async def test_the_lookup_reads_what_the_orm_reads(empty_db_url: str) -> None:
    async with database(empty_db_url) as db:
        now = datetime.now(UTC)
        plain = await add_file(db)
        limited = await add_file(
            db,
            expires_at=now + timedelta(days=1),
            max_downloads=3,
            bytes_served=999,
            bytes_reserved=123,
            owner="alice",
            gone_reason=None,
            last_accessed_at=now - timedelta(hours=2),
        )
        gone = await add_file(db, gone_reason="deleted", gone_at=now)
        lookup = lookup_for(make_url(empty_db_url), db.engine.dialect, pool_size=2)
        assert lookup is not None
        try:
            for record in (plain, limited, gone):
                row = await lookup.file_row(record.uid)
                assert row == FileRow.of(record)
                assert row is not None and row.created_at.tzinfo is not None
            assert await lookup.file_row("x" * 26) is None
        finally:
            await lookup.close()
        # And through the Database, which the download route asks.
        assert await db.file_row(limited.uid) == FileRow.of(limited)
        assert await db.file_row("x" * 26) is None


async def test_the_lookup_writes_what_the_orm_writes(empty_db_url: str) -> None:
    """The reservation (dropping a lapsed one, refusing past the budget or on a tombstone) and
    the settlement leave the row as ``repository``'s do: they are the same statements."""
    async with database(empty_db_url) as db:
        now = datetime.now(UTC)
        lapsed = {
            "max_downloads": 1,  # budget 1234 + 617
            "bytes_served": 1500,
            "bytes_reserved": 1000,  # its process died: 500 bytes were sent before
            "reservations_expire_at": now - timedelta(seconds=1),
        }
        lease_until = now + timedelta(minutes=5)
        lookup = lookup_for(make_url(empty_db_url), db.engine.dialect, pool_size=2)
        assert lookup is not None
        rows: list[tuple[object, ...]] = []
        try:
            for lean in (True, False):
                record = await add_file(db, **lapsed)
                gone = await add_file(db, max_downloads=1, gone_reason="deleted", gone_at=now)
                async with db.session() as session:

                    async def reserve(uid: str, n: int, lean: bool = lean) -> int | None:
                        if lean:
                            return await lookup.reserve_bytes(
                                uid, n, 1851, now=now, lease_until=lease_until
                            )
                        return await repository.reserve_bytes(
                            session, uid, n, 1851, now=now, lease_until=lease_until
                        )

                    assert await reserve(record.uid, 1000) == 1500
                    assert await reserve(record.uid, 352) is None  # 1852 > 1851
                    assert await reserve(gone.uid, 1) is None
                    if lean:
                        await lookup.settle_reservation(record.uid, 1000, 400)
                    else:
                        await repository.settle_reservation(session, record.uid, 1000, 400)
                async with db.session() as session:
                    stored = await session.get(FileRecord, record.uid)
                assert stored is not None
                rows.append(
                    (stored.bytes_served, stored.bytes_reserved, stored.reservations_expire_at)
                )
        finally:
            await lookup.close()
        assert rows[0] == rows[1] == (900, 0, lease_until)


@asynccontextmanager
async def sqlite_lookup(tmp_path: Path) -> AsyncIterator[tuple[SqliteLookup, FileRecord, str]]:
    """A SQLite database with one file, no engine connection left open, and a lookup on it:
    (lookup, the file's record, the database's path)."""
    path = str(tmp_path / "meta.db")
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(upgrade, url)
    async with database(url) as db:
        record = await add_file(db)
        await db.engine.dispose()  # its connections would keep others from locking
        lookup = SqliteLookup(path, db.engine.dialect)
        try:
            yield lookup, record, path
        finally:
            await lookup.close()


async def test_sqlite_lookup_does_not_wait_for_a_lock(tmp_path: Path) -> None:
    async with sqlite_lookup(tmp_path) as (lookup, record, path):
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            # Even WAL readers wait for a connection in exclusive locking mode that wrote.
            holder.execute("PRAGMA locking_mode = EXCLUSIVE")
            holder.execute("BEGIN EXCLUSIVE")
            holder.execute("UPDATE files SET owner = 'x'")
            with pytest.raises(LookupSkipped, match="locked"):
                await lookup.file_row(record.uid)  # at once: busy timeout 0
        finally:
            holder.close()  # rolled back
        assert await lookup.file_row(record.uid) == FileRow.of(record)


async def test_the_sqlite_lookup_holds_no_read_transaction(tmp_path: Path) -> None:
    async with sqlite_lookup(tmp_path) as (lookup, record, path):
        checkpointer = sqlite3.connect(path, isolation_level=None)
        try:
            assert await lookup.file_row(record.uid) == FileRow.of(record)
            # A reader still in its snapshot would keep the WAL from being checkpointed whole.
            busy, _, _ = checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0
        finally:
            checkpointer.close()


async def test_the_sqlite_lookup_reads_in_one_thread_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that blocks (a page-cache miss is a disk read; here, an event) holds the lookup's
    thread, not the event loop; reads queue behind it in that one thread, which opened the
    connection (sqlite3 refuses another thread's use of it), and ``close`` ends that thread."""
    entered, release = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    execute = _SqliteConnection._execute

    def held_read(connection: _SqliteConnection, sql: str, args: Sequence[Any]) -> list[Any]:
        threads.append(threading.current_thread())
        entered.set()
        release.wait(timeout=60)
        return execute(connection, sql, args)

    monkeypatch.setattr(_SqliteConnection, "_execute", held_read)
    async with sqlite_lookup(tmp_path) as (lookup, record, _):
        first = asyncio.ensure_future(lookup.file_row(record.uid))
        await asyncio.to_thread(entered.wait, 60)  # held in its thread; the loop runs on
        second = asyncio.ensure_future(lookup.file_row(record.uid))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not first.done() and not second.done()  # one thread: the second waits its turn
        release.set()
        assert await first == await second == FileRow.of(record)
        assert threads[0] is threads[1] is not threading.main_thread()
        await lookup.close()
        assert not threads[0].is_alive()
        # A read after close opens the lookup again, in a thread of its own.
        assert await lookup.file_row(record.uid) == FileRow.of(record)
        assert threads[2] is not threads[0]


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
def test_no_lookup_for_a_database_only_the_engine_sees(url: str) -> None:
    # A separate connection would open another, empty, in-memory database.
    assert lookup_for(make_url(url), Database(url).engine.dialect, pool_size=1) is None


async def test_a_terminated_lookup_connection_reads_the_usual_way() -> None:
    async with own_postgres_database() as url, database(url) as db:
        record = await add_file(db)
        assert await db.file_row(record.uid) == FileRow.of(record)  # the lookup's pool is open
        admin = await asyncpg.connect(f"{PG_SERVER}/postgres")
        try:
            terminated = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
                url.rsplit("/", 1)[1],
            )
        finally:
            await admin.close()
        assert terminated >= 1
        assert await db.file_row(record.uid) == FileRow.of(record)  # the ORM's read
        assert await db.file_row(record.uid) == FileRow.of(record)  # while the lookup waits


async def test_a_postgres_server_that_is_down_is_unavailable() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing_listens"
    async with database(url) as db:
        for _ in range(2):  # the lookup tried, then stood aside: 503 both times
            with pytest.raises(DatabaseUnavailable):
                await db.file_row("a" * 26)


async def test_a_postgres_server_that_does_not_answer_is_left_to_the_usual_path() -> None:
    """A server that takes the connection and says nothing: the lookup gives up after its own
    short wait (TIMEOUT_S, a second: the usual path then waits its own), then stands aside."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never accepts
        port = silent.getsockname()[1]
        url = make_url(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/silent")
        lookup = lookup_for(url, Database(str(url)).engine.dialect, pool_size=1)
        assert lookup is not None
        try:
            with pytest.raises(LookupSkipped):
                await lookup.file_row("a" * 26)
            with pytest.raises(LookupSkipped, match="paused"):
                await lookup.file_row("a" * 26)
        finally:
            await lookup.close()


async def test_a_url_without_a_statement_cache_reads_with_unnamed_statements() -> None:
    """``prepared_statement_cache_size=0`` (pgbouncer in transaction mode) reaches asyncpg as
    its ``statement_cache_size``: the lookup reads, and leaves no named statement behind."""
    async with own_postgres_database() as plain_url:
        url = f"{plain_url}?prepared_statement_cache_size=0"
        async with database(url) as db:
            record = await add_file(db)
            dialect = db.engine.dialect
            lookup = lookup_for(make_url(url), dialect, pool_size=1)
            assert lookup is not None
            try:
                assert await lookup.file_row(record.uid) == FileRow.of(record)
            finally:
                await lookup.close()
            assert await db.file_row(record.uid) == FileRow.of(record)
            sql = str(row_query().compile(dialect=dialect))
            for cache_url, cached in ((url, False), (plain_url, True)):
                kwargs = asyncpg_connect_kwargs(make_url(cache_url), dialect)
                connection = await asyncpg.connect(**kwargs)
                try:
                    assert (await connection.fetchrow(sql, record.uid)) is not None
                    statements = await connection.fetchval(
                        "SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql"
                    )
                    assert (statements > 0) == cached, (cache_url, statements)
                finally:
                    await connection.close()
