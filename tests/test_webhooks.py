"""Events as signed webhooks: a real receiver verifies every request with the standardwebhooks
library (tests/receiver.py); the outbox is written with the change or not at all.

Every address here is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI
from sqlalchemy import func, select, text

from mediasvc.auth import ApiKey
from mediasvc.config import Settings
from mediasvc.db import outbox, repository
from mediasvc.db.models import EventRecord, FileRecord
from mediasvc.db.session import Database, make_engine
from mediasvc.ids import hash_token, new_uid
from mediasvc.jobs.cleanup import cleanup
from mediasvc.jobs.context import JobContext
from tests.conftest import REDIS_URL, RunningServer, stop_process, truncate
from tests.helpers import POLL_TIMEOUT_S, assert_problem, bearer, client_for, wait_for
from tests.receiver import Receiver

ADMIN = "admin-key-for-the-webhook-tests"
ADMIN_KEYS = [ApiKey(name="root", sha256=hash_token(ADMIN), admin=True)]
FAST_RETRIES: dict[str, Any] = {
    "webhook_backoff_base_s": 0.05,
    "webhook_backoff_max_s": 0.2,
    "webhook_timeout_s": 5.0,
}
FILE_EVENTS = ["file.created", "file.pushed", "file.probed", "file.deleted"]


async def events_in_db(url: str, uid: str) -> list[tuple[str, str]]:
    """(msg id, type) of ``uid``'s events in the order they were written."""
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                text("SELECT msg_id, type FROM events WHERE subject = :uid ORDER BY id"),
                {"uid": uid},
            )
            return [(row[0], row[1]) for row in result]
    finally:
        await engine.dispose()


def upload_and_delete(base_url: str, metadata: dict[str, Any]) -> str:
    """A raw upload with metadata, its push and probe awaited, then deleted; its uid."""
    with httpx.Client(base_url=base_url, timeout=POLL_TIMEOUT_S) as http:
        created = http.post(
            "/api/v1/files/stream",
            content=b"some bytes that are not media",
            headers={"X-Filename": "notes.txt", "X-Metadata": json.dumps(metadata)},
        )
        assert created.status_code == 201, created.text
        meta = created.json()
        assert meta["metadata"] == metadata
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while True:
            now = http.get(f"/api/v1/files/{meta['uid']}/metadata").json()
            if now["cloud_status"] == "uploaded" and now["probe_status"] != "pending":
                break
            assert time.monotonic() < deadline, now
            time.sleep(0.05)
        deleted = http.delete(
            f"/api/v1/files/{meta['uid']}", headers={"X-Delete-Token": meta["delete_token"]}
        )
        assert deleted.status_code == 204
        return str(meta["uid"])


# --- 1: upload → push → probe → delete, through a real server, on PostgreSQL and SQLite ---------


def test_events_of_a_file_arrive_signed_in_order_each_once(
    serve: Callable[..., tuple[RunningServer, str]],
) -> None:
    with Receiver() as receiver:
        server, db_url = serve(MEDIASVC_WEBHOOKS=json.dumps([receiver.endpoint()]))
        uid = upload_and_delete(server.base_url, {"order": 42, "tags": ["a", "b"]})
        got = receiver.wait_for_types(uid, FILE_EVENTS)
        written = asyncio.run(events_in_db(db_url, uid))

    assert sorted(t for _, t in written) == sorted(FILE_EVENTS)
    # In the order they were written, each exactly once, every signature good.
    assert [(r.msg_id, r.type) for r in got] == written
    assert receiver.bad_signatures == 0
    assert receiver.requests == len(FILE_EVENTS)
    for received in got:
        assert received.body["data"]["metadata"] == {"order": 42, "tags": ["a", "b"]}
        assert received.body["data"]["uid"] == uid
        assert received.body["timestamp"].endswith("Z")
    by_type = {r.type: r.body["data"] for r in got}
    assert by_type["file.created"]["cloud_status"] == "pending"
    assert by_type["file.pushed"]["cloud_status"] == "uploaded"
    assert by_type["file.probed"]["probe_status"] != "pending"
    assert by_type["file.deleted"]["download_url"] == f"/api/v1/files/{uid}"


# --- 2: the receiver is down, then up: retried with backoff, delivered, still in order -----------


@pytest.fixture
async def admin_client(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Any]]:
    """A factory: an in-process app (PostgreSQL) with these webhook settings and an admin key."""
    async with AsyncExitStack() as stack:

        async def make(**overrides: Any) -> httpx.AsyncClient:
            settings = make_settings(api_keys=ADMIN_KEYS, **FAST_RETRIES, **overrides)
            await truncate(settings.database_url)
            return await stack.enter_async_context(client_for(settings))

        yield make


async def deliveries(http: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    response = await http.get("/api/v1/admin/deliveries", params=params, headers=bearer(ADMIN))
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def wait_deliveries(
    http: httpx.AsyncClient, what: Callable[[list[dict[str, Any]]], bool], **params: str
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while not what(items := await deliveries(http, **params)):
        assert time.monotonic() < deadline, items
        await asyncio.sleep(0.05)
    return items


async def upload(http: httpx.AsyncClient) -> str:
    response = await http.post("/api/v1/files/stream", content=b"x" * 1000, headers=bearer(ADMIN))
    assert response.status_code == 201, response.text
    return str(response.json()["uid"])


async def test_receiver_down_then_up_retried_with_backoff_delivered_in_order(
    admin_client: Callable[..., Any],
) -> None:
    secret_receiver = Receiver()  # nothing listens on its port yet: every try is refused
    http = await admin_client(
        webhooks=[{"url": secret_receiver.url, "secret": secret_receiver.secret}],
        webhook_max_tries=1000,
    )
    uid = await upload(http)

    def refused_twice(items: list[dict[str, Any]]) -> bool:
        created = [d for d in items if d["event"]["type"] == "file.created"]
        return bool(created) and len(created[0]["attempts"]) >= 2

    items = await wait_deliveries(http, refused_twice, file=uid)
    # Nothing after file.created was tried while it was owed: a file's events keep their order.
    later = [d for d in items if d["event"]["type"] != "file.created"]
    assert all(d["attempts"] == [] for d in later), later
    created = next(d for d in items if d["event"]["type"] == "file.created")
    assert {a["status_code"] for a in created["attempts"]} == {None}
    assert all("ConnectError" in a["error"] for a in created["attempts"])
    with secret_receiver as receiver:
        got = await asyncio.to_thread(
            receiver.wait_for_types, uid, ["file.created", "file.pushed", "file.probed"]
        )
        assert got[0].type == "file.created"
        items = await wait_deliveries(
            http, lambda ds: all(d["status"] == "delivered" for d in ds), file=uid
        )
    created = next(d for d in items if d["event"]["type"] == "file.created")
    assert created["attempts"][-1]["status_code"] == 204
    assert created["attempts"][-1]["error"] is None
    assert created["delivered_at"] is not None
    assert receiver.bad_signatures == 0


# --- 3: always failing → dead letter after N tries; redeliver ----------------------------------


async def test_always_failing_receiver_dead_letter_then_redeliver(
    admin_client: Callable[..., Any],
) -> None:
    with Receiver() as receiver:
        receiver.always_fail = True
        http = await admin_client(
            webhooks=[receiver.endpoint(events=["file.created"])], webhook_max_tries=3
        )
        uid = await upload(http)
        [dead] = await wait_deliveries(http, lambda ds: len(ds) == 1, status="dead")
        assert dead["event"]["subject"] == uid
        assert dead["tries"] == 3
        assert [a["status_code"] for a in dead["attempts"]] == [503, 503, 503]
        metrics = (await http.get("/metrics")).text
        assert 'mediasvc_webhook_deliveries{status="dead"} 1.0' in metrics

        receiver.always_fail = False
        response = await http.post(
            f"/api/v1/admin/deliveries/{dead['id']}/redeliver", headers=bearer(ADMIN)
        )
        assert response.status_code == 202, response.text
        assert response.json()["msg_id"] == dead["event"]["msg_id"]
        [delivered] = await wait_deliveries(http, lambda ds: len(ds) == 1, status="delivered")
        assert delivered["id"] == dead["id"]
        assert [a["status_code"] for a in delivered["attempts"]] == [503, 503, 503, 204]
        # The endpoint wants file.created only: the push and probe made no delivery.
        assert len(await deliveries(http, file=uid)) == 1
        assert receiver.types_for(uid) == ["file.created"]
        metrics = (await http.get("/metrics")).text
        assert "mediasvc_oldest_undelivered_event_age_seconds 0.0" in metrics


async def test_admin_endpoints_need_an_admin_key(
    admin_client: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    http = await admin_client()
    assert_problem(await http.get("/api/v1/admin/deliveries"), 401)
    assert_problem(await http.get("/api/v1/admin/deliveries", headers=bearer("nope")), 403)
    missing = await http.post("/api/v1/admin/deliveries/12345/redeliver", headers=bearer(ADMIN))
    assert_problem(missing, 404)
    async with client_for(make_settings()) as keyless:
        assert_problem(await keyless.get("/api/v1/admin/deliveries"), 403)


# --- 4: a crash between the change and the delivery; an aborted transaction ---------------------


def test_killed_between_change_and_delivery_delivered_after_restart(
    serve: Callable[..., tuple[RunningServer, str]],
) -> None:
    receiver = Receiver()  # down while the first process runs
    env = {
        "MEDIASVC_WEBHOOKS": json.dumps([receiver.endpoint()]),
        "MEDIASVC_WEBHOOK_BACKOFF_BASE_S": "0.5",
        "MEDIASVC_WEBHOOK_BACKOFF_MAX_S": "1",
        "MEDIASVC_RECONCILE_EVERY_S": "1",
    }
    first, db_url = serve(**env)
    with httpx.Client(base_url=first.base_url) as http:
        created = http.post("/api/v1/files/stream", content=b"y" * 100)
        assert created.status_code == 201
        uid = created.json()["uid"]
    first.process.kill()  # SIGKILL: its queue and the delivery jobs die with it
    first.process.wait(timeout=POLL_TIMEOUT_S)
    assert asyncio.run(events_in_db(db_url, uid))  # the change and its event are committed

    with receiver:
        serve(**env)  # the same database: the reconciler finds the event still owed
        got = receiver.wait_for_types(uid, ["file.created"])
    assert got[0].type == "file.created"
    assert receiver.bad_signatures == 0


def test_worker_killed_between_change_and_delivery_delivered_by_the_next(
    start_server: Callable[..., RunningServer], pg_url: str, tmp_path: Path
) -> None:
    """The production topology: the API, arq workers on Redis, PostgreSQL. A worker is SIGKILLed
    while the receiver is down and the file's events are owed; the next worker delivers them."""
    asyncio.run(truncate(pg_url))
    redis.Redis.from_url(REDIS_URL).flushdb()
    receiver = Receiver()
    env = {
        "MEDIASVC_DATABASE_URL": pg_url,
        "MEDIASVC_REDIS_URL": REDIS_URL,
        "MEDIASVC_MEDIA_ROOT": str(tmp_path / "media"),
        "MEDIASVC_CLOUD_ROOT": str(tmp_path / "bucket"),
        "MEDIASVC_WEBHOOKS": json.dumps([receiver.endpoint()]),
        "MEDIASVC_WEBHOOK_BACKOFF_BASE_S": "0.2",
        "MEDIASVC_WEBHOOK_BACKOFF_MAX_S": "0.5",
        # arq holds a killed worker's job for the longest job timeout + 10 s: keep that short.
        "MEDIASVC_PUSH_TIMEOUT_S": "5",
        "MEDIASVC_RECONCILE_EVERY_S": "1",
    }
    api = start_server(env)
    workers: list[subprocess.Popen[bytes]] = []

    def start_worker() -> subprocess.Popen[bytes]:
        full_env = {**os.environ, **env}
        full_env.pop("GLIBC_TUNABLES", None)
        with (tmp_path / f"worker-{len(workers)}.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "mediasvc", "worker"],
                env=full_env,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        workers.append(worker)
        return worker

    try:
        first = start_worker()
        created = httpx.post(f"{api.base_url}/api/v1/files/stream", content=b"z" * 100)
        assert created.status_code == 201
        uid = created.json()["uid"]
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while not asyncio.run(attempts_for(pg_url, uid)):  # the worker has tried and failed
            assert time.monotonic() < deadline, "the first worker never tried a delivery"
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=POLL_TIMEOUT_S)

        with receiver:
            start_worker()
            got = receiver.wait_for_types(uid, ["file.created", "file.pushed", "file.probed"])
        written = asyncio.run(events_in_db(pg_url, uid))
        assert [(r.msg_id, r.type) for r in got][: len(written)] == written
        assert receiver.bad_signatures == 0
    finally:
        for worker in workers:
            stop_process(worker)
        redis.Redis.from_url(REDIS_URL).flushdb()


async def attempts_for(url: str, uid: str) -> int:
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            count = await connection.scalar(
                text(
                    "SELECT count(*) FROM delivery_attempts a "
                    "JOIN deliveries d ON d.id = a.delivery_id WHERE d.subject = :uid"
                ),
                {"uid": uid},
            )
            return int(count or 0)
    finally:
        await engine.dispose()


async def test_an_aborted_transaction_leaves_no_event(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    told: list[list[str]] = []
    db.on_events = told.append
    try:
        # A faststart copy whose original is gone: add_new_file rolls back, event included.
        async with db.session() as session:
            assert not await repository.add_new_file(
                session, record_for(new_uid()), faststart_of=new_uid()
            )
        # A change that fails after its event was added: nothing of either is written.
        with pytest.raises(RuntimeError):
            async with db.session() as session:
                outbox.record(session, "file.created", new_uid(), {}, _now())
                raise RuntimeError("the change failed")
        async with db.session() as session:
            assert await session.scalar(select(func.count()).select_from(EventRecord)) == 0
        assert told == []
        # The same write committed: its event is written and handed on once.
        async with db.session() as session:
            assert await repository.add_new_file(session, record_for(uid := new_uid()))
        async with db.session() as session:
            rows = (await session.scalars(select(EventRecord))).all()
        assert [(r.type, r.subject) for r in rows] == [("file.created", uid)]
        assert told == [[rows[0].msg_id]]
    finally:
        await db.dispose()


def _now() -> datetime:
    return datetime.now(UTC)


def record_for(uid: str) -> FileRecord:
    """A new file's row, as ingest/commit.py makes it (no bytes needed for these statements)."""
    now = _now()
    return FileRecord(
        uid=uid,
        format="application/octet-stream",
        size=1,
        sha256="0" * 64,
        created_at=now,
        cloud_status="pending",
        cloud_updated_at=now,
        delete_token_hash="0" * 64,
        probe_status="pending",
        local=True,
        bytes_served=0,
    )


# --- 5: expiry and exhaustion are events too; settled events are forgotten after a while ---------


async def test_expired_and_exhausted_files_have_their_events_then_are_forgotten(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    expiring = (await client.post("/api/v1/files/stream?expires_in=60", content=b"e")).json()
    limited = (await client.post("/api/v1/files/stream?max_downloads=1", content=b"l")).json()
    assert (await client.get(f"/api/v1/files/{limited['uid']}")).status_code == 200
    assert (await client.get(f"/api/v1/files/{limited['uid']}")).status_code == 410
    ctx: JobContext = app.state.services.jobs  # the app's: its commits enqueue deliveries
    await cleanup(ctx, now=datetime.now(UTC) + timedelta(seconds=61))
    expired = [t for _, t in await events_in_db(settings.database_url, expiring["uid"])]
    exhausted = [t for _, t in await events_in_db(settings.database_url, limited["uid"])]
    assert (expired[0], expired[-1]) == ("file.created", "file.expired")
    assert exhausted[-1] == "file.exhausted"

    async def all_settled() -> bool:
        async with ctx.db.session() as session:
            return not await outbox.unsettled(session, limit=1)

    await wait_for(all_settled)  # no endpoints: each event's job settles it at once
    later = datetime.now(UTC) + timedelta(seconds=ctx.config.event_retention_s + 1)
    report = await cleanup(ctx, now=later)
    assert report.forgotten_events == len(expired) + len(exhausted)
    assert await events_in_db(settings.database_url, expiring["uid"]) == []
