"""Database errors: an outage is a 503 (retry later), anything else a bug (500, traceback logged).

Each error here is provoked for real: a duplicate primary key, SQL naming a column that does not
exist, a constraint the app's insert breaks, a table gone from under the app, a port nobody
listens on, a backend PostgreSQL terminates, a SQLite file another connection holds locked.
The rule itself lives in mediasvc/db/outages.py.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from mediasvc.config import Settings
from mediasvc.db.migrations import upgrade
from mediasvc.errors import DatabaseUnavailable
from tests.conftest import PG_SERVER, free_port, leftovers
from tests.helpers import client_for, database, own_postgres_database

DUPLICATE_ROW = """
    INSERT INTO files (uid, format, size, sha256, created_at, delete_token_hash)
    VALUES (:uid, 'application/octet-stream', 1, :digest, CURRENT_TIMESTAMP, :digest)
"""


async def execute(url: str, *statements: str) -> None:
    async with database(url) as db, db.session() as session:
        for statement in statements:
            await session.execute(text(statement))
        await session.commit()


def assert_bug_reported(
    response: httpx.Response, caplog: pytest.LogCaptureFixture, error: type[Exception]
) -> None:
    """A 500 problem+json that does not call it an outage, and the traceback in the log."""
    assert response.status_code == 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["status"] == 500
    assert "unavailable" not in problem["type"]
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert any(r.exc_info is not None and isinstance(r.exc_info[1], error) for r in logged), (
        caplog.text
    )


# --- bugs: the error comes out as it is -------------------------------------------------------


async def test_integrity_error_is_not_an_outage(settings: Settings) -> None:
    uid, digest = secrets.token_hex(16), "0" * 64
    async with database(settings.database_url) as db:
        with pytest.raises(IntegrityError):
            async with db.session() as session:
                for _ in range(2):  # the same primary key twice
                    await session.execute(text(DUPLICATE_ROW), {"uid": uid, "digest": digest})
                await session.commit()


async def test_programming_error_is_not_an_outage(settings: Settings) -> None:
    async with database(settings.database_url) as db:
        with pytest.raises(ProgrammingError):
            async with db.session() as session:
                await session.execute(text("SELECT no_such_column FROM files"))


async def test_our_own_oserror_inside_a_session_is_not_a_database_outage(
    settings: Settings, tmp_path: Path
) -> None:
    async with database(settings.database_url) as db:
        with pytest.raises(FileNotFoundError):
            async with db.session() as session:
                await session.execute(text("SELECT 1"))
                (tmp_path / "missing").read_bytes()


async def test_upload_breaking_a_constraint_is_500_with_a_logged_traceback(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    async with own_postgres_database() as url:
        await execute(url, "ALTER TABLE files ADD CONSTRAINT no_rows CHECK (size < 0) NOT VALID")
        settings = make_settings(database_url=url)
        async with client_for(settings, raise_app_exceptions=False) as http:
            with caplog.at_level(logging.ERROR):
                response = await http.post("/api/v1/files/stream", content=b"x" * 1000)
    assert_bug_reported(response, caplog, IntegrityError)
    assert leftovers(settings.media_root) == []  # the stored bytes went with the failed row


async def test_sqlite_table_gone_is_500_not_503(
    make_settings: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/meta.db"
    await asyncio.to_thread(upgrade, url)
    async with client_for(make_settings(database_url=url), raise_app_exceptions=False) as http:
        await execute(url, "ALTER TABLE files RENAME TO files_elsewhere")
        with caplog.at_level(logging.ERROR):
            response = await http.get("/api/v1/files")
    assert_bug_reported(response, caplog, OperationalError)


# --- outages: 503 ---------------------------------------------------------------------------


async def test_dead_postgres_port_is_unavailable() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing_listens"
    async with database(url) as db:
        with pytest.raises(DatabaseUnavailable):
            async with db.session() as session:
                await session.execute(text("SELECT 1"))


async def test_terminated_backend_is_unavailable(settings: Settings) -> None:
    async with database(settings.database_url) as db:
        with pytest.raises(DatabaseUnavailable) as caught:
            async with db.session() as session:
                pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                admin = await asyncpg.connect(f"{PG_SERVER}/postgres")
                try:
                    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
                finally:
                    await admin.close()
                await session.execute(text("SELECT 1"))
        assert caught.value.__cause__ is not None
        assert getattr(caught.value.__cause__, "connection_invalidated", False)


async def test_sqlite_locked_by_another_connection_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(upgrade, url)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        # The one writer, holding the lock past any wait (under WAL, readers would still pass).
        holder.execute("BEGIN IMMEDIATE")
        async with database(url) as db:
            with pytest.raises(DatabaseUnavailable) as caught:
                async with db.session() as session:
                    await session.execute(text("PRAGMA busy_timeout = 0"))  # fail now, not in 30 s
                    row = {"uid": secrets.token_hex(16), "digest": "0" * 64}
                    await session.execute(text(DUPLICATE_ROW), row)
        assert "locked" in str(caught.value.__cause__)
    finally:
        holder.close()


async def test_database_dropped_under_the_app_is_503_problem(
    make_settings: Callable[..., Settings],
) -> None:
    async with (
        own_postgres_database() as url,
        client_for(make_settings(database_url=url), raise_app_exceptions=False) as http,
    ):
        admin = await asyncpg.connect(f"{PG_SERVER}/postgres")
        try:
            await admin.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await admin.close()
        response = await http.get("/api/v1/files")
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"].endswith("database-unavailable")
