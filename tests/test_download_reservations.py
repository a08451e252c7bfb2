"""Budget reservations of running downloads (issue 11, item 6), on PostgreSQL and SQLite.

A download is charged what was handed to the server (the kernel and the server's buffer hold
at most one part more), not the reads it made; a refusal that is only due to other downloads
still running is a 503 with Retry-After, never a 410 that retires the file; a reservation whose
lease lapsed (its process died) does not block the file.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from sqlalchemy import make_url, select, update

from mediasvc.app import create_app
from mediasvc.config import Settings
from mediasvc.db import repository
from mediasvc.db.lookup import (
    TIMEOUT_S,
    LookupSkipped,
    OutcomeUnknown,
    PostgresLookup,
    RowLookup,
    SqliteLookup,
)
from mediasvc.db.models import FileRecord
from mediasvc.db.session import Database, make_engine
from mediasvc.delivery.reservation import Reservation
from tests.conftest import RunningServer
from tests.helpers import (
    add_file,
    assert_gone,
    database,
    random_bytes,
    stalled_reader,
    upload_data,
    wait_until,
)

MiB = 1024 * 1024
PART_BYTES = 1 * MiB  # download_send_part_bytes, the default


async def budget_row(database_url: str, uid: str) -> tuple[int, int, str | None]:
    """(bytes_served, bytes_reserved, gone_reason) of a file."""
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    select(
                        FileRecord.bytes_served, FileRecord.bytes_reserved, FileRecord.gone_reason
                    ).where(FileRecord.uid == uid)
                )
            ).one()
            return int(row[0]), int(row[1]), row[2]
    finally:
        await engine.dispose()


def budget_row_now(database_url: str, uid: str) -> tuple[int, int, str | None]:
    return asyncio.run(budget_row(database_url, uid))


async def reservation_opened(database_url: str, uid: str) -> None:
    """Wait (bounded) until a download of ``uid`` holds a reservation."""
    await anyio.to_thread.run_sync(
        lambda: wait_until(lambda: budget_row_now(database_url, uid)[1] > 0, "the reservation")
    )


async def reservations_settled(database_url: str, uid: str) -> None:
    """Wait (bounded) until no download of ``uid`` holds a reservation."""
    await anyio.to_thread.run_sync(
        lambda: wait_until(
            lambda: budget_row_now(database_url, uid)[1] == 0, "the reservation settled"
        )
    )


async def limited_file(http: httpx.AsyncClient, data: bytes, max_downloads: int) -> tuple[str, str]:
    """Upload ``data`` with a download limit: its (uid, download path)."""
    meta = await upload_data(http, data, max_downloads=max_downloads)
    return meta["uid"], f"/api/v1/files/{meta['uid']}"


def read_some(sock: socket.socket, at_least: int) -> int:
    received = 0
    while received < at_least:
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        received += len(data)
    return received


def kernel_send_bytes_max() -> int:
    """The largest send buffer the kernel gives a TCP socket (tcp_wmem's maximum)."""
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


@pytest.mark.e2e
async def test_a_refusal_due_to_a_running_download_is_503_and_the_file_stays(
    serve: Callable[..., tuple[RunningServer, str]],
) -> None:
    server, database_url = serve(MEDIASVC_DOWNLOAD_BUDGET_WAIT_S="0")
    data = random_bytes(16 * MiB, seed=21)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
        uid, url = await limited_file(http, data, 1)
        first = stalled_reader(server.base_url, url)
        try:
            read_some(first, 66_000)
            second = await http.get(url)
            assert second.status_code == 503, second.text
            assert second.headers["content-type"] == "application/problem+json"
            assert int(second.headers["retry-after"]) >= 1
            # Not retired: the metadata is there, and so is the file.
            assert (await http.get(f"{url}/metadata")).status_code == 200
            assert (await budget_row(database_url, uid))[2] is None
        finally:
            first.close()  # the first client gives up: what it did not take comes back
        await reservations_settled(database_url, uid)
        served, _, gone = await budget_row(database_url, uid)
        assert gone is None
        assert served < len(data) // 2
        # The player resumes where its bytes end, and gets the rest.
        resumed = await http.get(url, headers={"Range": f"bytes={served}-"})
        assert resumed.status_code == 206, resumed.text
        assert resumed.content == data[served:]
        # That was the one download: another whole one does not fit, and nothing is open now,
        # so the file is retired.
        assert_gone(await http.get(url))
        assert (await budget_row(database_url, uid))[2] == "exhausted"


@pytest.mark.e2e
async def test_metadata_counts_what_was_sent_not_what_running_downloads_hold(
    serve: Callable[..., tuple[RunningServer, str]],
) -> None:
    # A stalled reader holds the whole file's reservation; an earlier short read was charged a
    # little. The metadata must not say "2 downloads of 1" meanwhile.
    server, database_url = serve()
    data = random_bytes(16 * MiB, seed=23)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
        uid, url = await limited_file(http, data, 1)
        short = await http.get(url, headers={"Range": "bytes=0-65999"})
        assert short.status_code == 206
        # Its settlement runs after its last byte: let it land before the next one reserves.
        await reservations_settled(database_url, uid)
        reader = stalled_reader(server.base_url, url)
        try:
            read_some(reader, 66_000)
            await reservation_opened(database_url, uid)
            served, reserved, _ = await budget_row(database_url, uid)
            assert served - reserved == 66_000  # only the short read is settled
            assert -(-served // len(data)) == 2  # what the old formula reported
            assert (await http.get(f"{url}/metadata")).json()["downloads"] == 1
        finally:
            reader.close()


@pytest.mark.e2e
async def test_aborted_downloads_are_charged_what_was_sent_not_what_was_read(
    serve: Callable[..., tuple[RunningServer, str]],
) -> None:
    server, database_url = serve()
    data = random_bytes(64 * MiB, seed=22)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
        uid, url = await limited_file(http, data, 2)
        total_charged = 0
        for _ in range(2):
            reader = stalled_reader(server.base_url, url)
            rcvbuf = reader.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            try:
                received = read_some(reader, 66_000)
                await reservation_opened(database_url, uid)
            finally:
                reader.close()
            await reservations_settled(database_url, uid)
            charged = (await budget_row(database_url, uid))[0] - total_charged
            total_charged += charged
            # What went to the kernel (our socket's send buffer and the client's receive
            # buffer) plus at most two parts (the server's write buffer, one sent after the
            # hang-up): not the two 4 MiB reads it used to be charged.
            bound = received + rcvbuf + kernel_send_bytes_max() + 2 * PART_BYTES
            assert charged <= bound, (charged, bound)
        # Both full downloads are still there.
        for _ in range(2):
            full = await http.get(url)
            assert full.status_code == 200
            assert full.content == data
        assert_gone(await http.get(url))


@pytest.fixture
async def app_client(
    make_settings: Callable[..., Settings], empty_db_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    """The ASGI app on an empty database, not waiting for running downloads (wait 0)."""
    settings = make_settings(database_url=empty_db_url, download_budget_wait_s=0)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http, settings


async def set_open_reservation(database_url: str, uid: str, *, lease_until: datetime) -> None:
    """As a download that reserved the whole file and is (or was) still running."""
    engine = make_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                update(FileRecord)
                .where(FileRecord.uid == uid)
                .values(
                    bytes_served=FileRecord.size,
                    bytes_reserved=FileRecord.size,
                    reservations_expire_at=lease_until,
                )
            )
    finally:
        await engine.dispose()


async def test_an_open_reservation_is_a_503_until_its_lease_lapses(
    app_client: tuple[httpx.AsyncClient, Settings],
) -> None:
    client, settings = app_client
    data = random_bytes(1000, seed=23)
    meta = await upload_data(client, data, max_downloads=1)
    uid = meta["uid"]
    url = f"/api/v1/files/{uid}"
    now = datetime.now(UTC)

    await set_open_reservation(settings.database_url, uid, lease_until=now + timedelta(hours=1))
    busy = await client.get(url)
    assert busy.status_code == 503, busy.text
    assert "retry-after" in busy.headers
    assert (await client.get(f"{url}/metadata")).status_code == 200
    assert await budget_row(settings.database_url, uid) == (1000, 1000, None)

    # Its process died: once the lease lapses, the reservation no longer counts.
    await set_open_reservation(settings.database_url, uid, lease_until=now - timedelta(seconds=1))
    response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.content == data
    assert await budget_row(settings.database_url, uid) == (1000, 0, None)
    assert_gone(await client.get(url))
    assert (await budget_row(settings.database_url, uid))[2] == "exhausted"


async def test_concurrent_ranges_wait_for_each_other_then_fit_exactly(
    app_client: tuple[httpx.AsyncClient, Settings],
) -> None:
    """k = 1, size 1000: budget 1500. Six 300-byte ranges at once: five fit, one is refused."""
    client, settings = app_client
    data = random_bytes(1000, seed=24)
    meta = await upload_data(client, data, max_downloads=1)
    url = f"/api/v1/files/{meta['uid']}"
    responses = await asyncio.gather(
        *(client.get(url, headers={"Range": f"bytes={i * 100}-{i * 100 + 299}"}) for i in range(6))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses[:5] == [206] * 5
    assert statuses[5] in (410, 503)  # refused: used up, or held by the others
    assert (await budget_row(settings.database_url, meta["uid"]))[:2] == (1500, 0)


# --- the reservation and the settlement in one statement each (db/lookup.py) ---------------------

# A file of 1234 bytes (tests.helpers.add_file) with 3 downloads: 3 × 1234 + 617 bytes.
BUDGET = 3 * 1234 + 617
ASK = 300  # 14 of these fit (4200 bytes), a 15th does not
LEASE = timedelta(minutes=5)


@pytest.fixture
def the_usual_way(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many reservations and settlements went the usual (ORM) way."""
    calls: Counter[str] = Counter()
    for name in ("reserve_bytes", "settle_reservation"):
        original = getattr(repository, name)

        monkeypatch.setattr(repository, name, _counting(calls, name, original))
    return calls


def _counting(calls: Counter[str], name: str, original: Any) -> Any:
    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return await original(*args, **kwargs)

    return counted


async def reserve(db: Database, uid: str, n: int = ASK) -> int | None:
    now = datetime.now(UTC)
    return await db.reserve_bytes(uid, n, BUDGET, now=now, lease_until=now + LEASE)


async def test_concurrent_reservations_in_one_statement_grant_exactly_the_budget(
    empty_db_url: str, the_usual_way: Counter[str]
) -> None:
    """Forty downloads reserve at once, through two workers' lookups: exactly the 14 that fit are
    granted, each one statement; what they did not send comes back (a client that went away)."""
    async with database(empty_db_url) as one, database(empty_db_url) as other:
        record = await add_file(one, max_downloads=3)
        workers = (one, other)
        totals = await asyncio.gather(*(reserve(workers[i % 2], record.uid) for i in range(40)))
        granted = sorted(total for total in totals if total is not None)
        assert granted == [ASK * i for i in range(1, 15)]
        assert await budget_row(empty_db_url, record.uid) == (14 * ASK, 14 * ASK, None)
        # Half of them sent everything, the others 100 bytes before their client left.
        await asyncio.gather(
            *(
                Reservation(workers[i % 2], record.uid, ASK, lease_s=60).settle(
                    ASK if i % 2 else 100
                )
                for i in range(14)
            )
        )
        assert await budget_row(empty_db_url, record.uid) == (7 * ASK + 7 * 100, 0, None)
    assert the_usual_way == {}  # neither lookup had to step aside


async def test_reservations_beside_the_usual_way_grant_exactly_the_budget(
    empty_db_url: str,
) -> None:
    """The lean UPDATE and the ORM's transaction at once, as in a worker whose lookup stepped
    aside beside one whose did not: the database, not the process, keeps the budget."""
    async with database(empty_db_url) as db:
        record = await add_file(db, max_downloads=3)

        async def the_usual(uid: str) -> int | None:
            now = datetime.now(UTC)
            async with db.session() as session:
                return await repository.reserve_bytes(
                    session, uid, ASK, BUDGET, now=now, lease_until=now + LEASE
                )

        totals = await asyncio.gather(
            *((reserve(db, record.uid) if i % 2 else the_usual(record.uid)) for i in range(40))
        )
        granted = sorted(total for total in totals if total is not None)
        assert granted == [ASK * i for i in range(1, 15)]
        assert await budget_row(empty_db_url, record.uid) == (14 * ASK, 14 * ASK, None)


@asynccontextmanager
async def row_locked(database_url: str, uid: str) -> AsyncIterator[None]:
    """Another writer holds the file's row (SQLite: the database's write lock) in a transaction."""
    if database_url.startswith("sqlite"):
        holder = sqlite3.connect(make_url(database_url).database or "", isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            yield
        finally:
            holder.close()  # rolled back
        return
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        async with connection.transaction():
            await connection.execute("SELECT 1 FROM files WHERE uid = $1 FOR UPDATE", uid)
            yield
    finally:
        await connection.close()


async def test_a_reservation_the_lookup_cannot_make_is_made_the_usual_way(
    empty_db_url: str, the_usual_way: Counter[str]
) -> None:
    """The row held longer than the lookup waits (SQLITE_WRITE_WAIT_S, TIMEOUT_S): the ORM's
    transaction waits for it, and the reservation is made once."""
    async with database(empty_db_url) as db:
        record = await add_file(db, max_downloads=3)
        async with row_locked(empty_db_url, record.uid):
            reserving = asyncio.ensure_future(reserve(db, record.uid))
            await asyncio.sleep(TIMEOUT_S + 0.5)
            assert not reserving.done()
        assert await reserving == ASK
        assert the_usual_way["reserve_bytes"] == 1
        assert await budget_row(empty_db_url, record.uid) == (ASK, ASK, None)


async def test_a_settlement_is_done_the_usual_way_only_if_it_surely_was_not_done(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, the_usual_way: Counter[str]
) -> None:
    """Skipped (nothing written): the ORM settles. Its outcome unknown (a connection lost after
    the UPDATE was sent, and the server had run it): not again, or the refund would be
    given twice; the download's warning says so, as for a database that is down."""
    lookup_class = SqliteLookup if empty_db_url.startswith("sqlite") else PostgresLookup
    settle = lookup_class.settle_reservation
    async with database(empty_db_url) as db:
        record = await add_file(db, max_downloads=3)
        for _ in range(3):
            assert await reserve(db, record.uid) is not None

        async def skipped(*_args: Any) -> None:
            raise LookupSkipped("locked")

        monkeypatch.setattr(lookup_class, "settle_reservation", skipped)
        await Reservation(db, record.uid, ASK, lease_s=60).settle(100)
        assert the_usual_way["settle_reservation"] == 1
        assert await budget_row(empty_db_url, record.uid) == (2 * ASK + 100, 2 * ASK, None)

        async def done_then_lost(lookup: RowLookup, *args: Any) -> None:
            await settle(lookup, *args)  # type: ignore[arg-type]
            raise OutcomeUnknown("connection was closed in the middle of operation")

        monkeypatch.setattr(lookup_class, "settle_reservation", done_then_lost)
        await Reservation(db, record.uid, ASK, lease_s=60).settle(50)
        assert the_usual_way["settle_reservation"] == 1
        assert await budget_row(empty_db_url, record.uid) == (ASK + 150, ASK, None)


async def reservation_lease(database_url: str, uid: str) -> datetime | None:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            return (
                await connection.execute(
                    select(FileRecord.reservations_expire_at).where(FileRecord.uid == uid)
                )
            ).scalar_one()
    finally:
        await engine.dispose()


@pytest.mark.e2e
async def test_a_slow_readers_reservation_is_renewed_while_one_long_send_runs(
    serve: Callable[..., tuple[RunningServer, str]],
) -> None:
    """A zero-copy range is one message, however slowly the client reads it: the lease is
    renewed beside the send, by time, not between messages (else a slow player's reservation
    lapsed mid-range and the next download could overspend the budget)."""
    server, database_url = serve(MEDIASVC_DOWNLOAD_RESERVATION_LEASE_S="10")
    data = random_bytes(16 * MiB, seed=24)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
        uid, url = await limited_file(http, data, 2)
    reader = stalled_reader(server.base_url, url)
    reader.settimeout(60)
    received = [0]

    def read_slowly() -> None:
        """~1.3 MB/s: the 16 MiB take ~12 s, the server's last byte leaves ~3 s before that."""
        while received[0] < len(data):
            piece = reader.recv(65536)
            assert piece, "the server closed the connection"
            received[0] += len(piece)
            time.sleep(0.05)

    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(anyio.to_thread.run_sync, read_slowly)
            await reservation_opened(database_url, uid)
            first = await reservation_lease(database_url, uid)
            assert first is not None
            renewed = first
            with anyio.fail_after(60):
                while renewed is not None and renewed <= first:  # a third of the lease: ~3.3 s
                    await anyio.sleep(0.5)
                    renewed = await reservation_lease(database_url, uid)
            # Renewed while the range was still going out (the kernel holds a few MiB of it).
            assert received[0] < len(data) - 4 * MiB, received[0]
    finally:
        reader.close()
    await reservations_settled(database_url, uid)
    assert (await budget_row(database_url, uid))[:2] == (len(data), 0)
