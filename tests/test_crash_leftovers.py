"""What crashes leave behind, and the cleanup that removes it (issue 11, items 4 and 5).

- A `mediasvc serve` killed with SIGKILL between renaming a file into place and committing its
  row leaves a file no row claims: cleanup removes it after the grace period, and never a file
  whose INSERT is merely slow.
- A row whose local copy vanished is served from its confirmed cloud copy, or reported lost.
- A push killed mid-copy leaves a temporary file in the local bucket: swept, while a put in
  progress keeps its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from mediasvc.config import Settings
from mediasvc.db.models import FileRecord
from mediasvc.jobs.cleanup import cleanup
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.worker import CONTEXT_KEY, cleanup_job
from mediasvc.storage.cloud import key_for
from mediasvc.storage.cloud.local import TEMP_SUFFIX, LocalCloudStore
from tests.conftest import RunningServer, leftovers, truncate

KiB = 1024
MiB = 1024 * KiB
GRACE_S = 1  # orphan_grace_s in these tests: the shortest the setting allows
# The key of a test-only advisory lock that gates INSERTs on files (see insert_gate).
GATE_KEY = 744_221
TUS_PATCH = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}


def plain_dsn(pg_url: str) -> str:
    return pg_url.replace("postgresql+asyncpg://", "postgresql://")


async def poll(condition: Callable[[], Any], *, timeout_s: float = 30.0) -> Any:
    """Await ``condition()`` until it returns something true, within a bound (no bare sleeps)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def run_cleanup(settings: Settings) -> dict[str, int]:
    """The cron's own entry point, with a job context built as the worker builds it."""
    ctx = JobContext.build(settings)
    ctx.store.prepare()
    try:
        return await cleanup_job({CONTEXT_KEY: ctx})
    finally:
        await ctx.cloud.close()
        await ctx.db.dispose()


async def get_row(settings: Settings, uid: str) -> FileRecord | None:
    ctx = JobContext.build(settings)
    try:
        async with ctx.db.session() as session:
            return await session.get(FileRecord, uid)
    finally:
        await ctx.db.dispose()


def files_in_shards(media_root: Path) -> list[Path]:
    """Files at <root>/<uid[:2]>/…: renamed into place (not .part files in .incoming)."""
    return [
        p
        for p in leftovers(media_root)
        if p.parent.parent == media_root and len(p.parent.name) == 2
    ]


async def inserts_waiting(connection: asyncpg.Connection) -> int:
    """INSERTs into files that wait on a lock right now: the server is inside the window."""
    return int(
        await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'INSERT INTO files%'"
        )
    )


def upload_in_thread(
    base_url: str, body: bytes, *, tus_path: str | None = None
) -> tuple[threading.Thread, list[Any]]:
    """A plain upload of ``body`` in a thread, or with ``tus_path`` the tus PATCH of all of it."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            if tus_path is None:
                response = httpx.post(f"{base_url}/api/v1/files/stream", content=body, timeout=60)
            else:
                headers = {**TUS_PATCH, "Upload-Offset": "0"}
                response = httpx.patch(
                    base_url + tus_path, content=body, headers=headers, timeout=60
                )
            outcome.append(response)
        except httpx.TransportError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


async def kill_inside_the_commit_window(
    server: RunningServer, pg_url: str, body: bytes, *, tus_path: str | None = None
) -> None:
    """Upload ``body`` (as ``upload_in_thread``) and SIGKILL the server once its file is in
    place and the INSERT of its row waits: a lock on the table holds it there."""
    media_root = server.media_root
    locker = await asyncpg.connect(plain_dsn(pg_url))
    try:
        locker_tx = locker.transaction()
        await locker_tx.start()
        await locker.execute("LOCK TABLE files IN SHARE MODE")
        thread, outcome = upload_in_thread(server.base_url, body, tus_path=tus_path)
        await poll(lambda: files_in_shards(media_root))
        await poll(lambda: inserts_waiting(locker))

        server.process.kill()  # SIGKILL, inside the window
        assert server.process.wait(timeout=15) == -9
        thread.join(timeout=30)
        assert isinstance(outcome[0], httpx.TransportError)  # no answer was ever sent
        await locker_tx.rollback()
    finally:
        await locker.close()


@pytest.fixture
def crash_env(tmp_path: Path, pg_url: str) -> dict[str, str]:
    asyncio.run(truncate(pg_url))
    return {
        "MEDIASVC_DATABASE_URL": pg_url,
        "MEDIASVC_MEDIA_ROOT": str(tmp_path / "media"),
        "MEDIASVC_CLOUD_ROOT": str(tmp_path / "bucket"),
    }


@pytest.fixture
async def insert_gate(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A trigger makes every INSERT into files wait on an advisory lock this connection holds.

    Unlike a table lock, it holds only INSERTs: the cleanup's own reads and updates run.
    """
    connection = await asyncpg.connect(plain_dsn(pg_url))
    await connection.execute(f"""
        CREATE FUNCTION test_gate_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared({GATE_KEY}); RETURN NEW; END $$;
        CREATE TRIGGER test_gate_insert BEFORE INSERT ON files
        FOR EACH ROW EXECUTE FUNCTION test_gate_insert();
    """)
    await connection.execute(f"SELECT pg_advisory_lock({GATE_KEY})")
    try:
        yield connection
    finally:
        await connection.execute("SELECT pg_advisory_unlock_all()")
        await connection.execute(
            "DROP TRIGGER IF EXISTS test_gate_insert ON files; "
            "DROP FUNCTION IF EXISTS test_gate_insert()"
        )
        await connection.close()


# --- item 4: a crash between the rename and the INSERT --------------------------------------


async def test_server_killed_between_rename_and_insert_leaves_an_orphan_that_cleanup_sweeps(
    start_server: Callable[..., RunningServer],
    crash_env: dict[str, str],
    make_settings: Callable[..., Settings],
    pg_url: str,
) -> None:
    server = start_server(crash_env)
    media_root = Path(crash_env["MEDIASVC_MEDIA_ROOT"])
    await kill_inside_the_commit_window(server, pg_url, os.urandom(256 * KiB))

    [orphan] = files_in_shards(media_root)
    uid = orphan.name
    assert await get_row(make_settings(), uid) is None

    # Within the grace period (the default hour) the file stays.
    settings = make_settings(
        media_root=media_root, cloud_root=Path(crash_env["MEDIASVC_CLOUD_ROOT"])
    )
    assert (await run_cleanup(settings))["swept_orphans"] == 0
    assert orphan.exists()

    # After it, the sweep removes the file once the killed server's transaction is over.
    short = make_settings(
        media_root=media_root,
        cloud_root=Path(crash_env["MEDIASVC_CLOUD_ROOT"]),
        orphan_grace_s=GRACE_S,
    )
    swept = 0

    async def gone() -> bool:
        nonlocal swept
        swept += (await run_cleanup(short))["swept_orphans"]
        return not orphan.exists()

    await poll(gone)
    assert swept == 1
    assert leftovers(media_root) == []
    assert await get_row(short, uid) is None


async def test_a_file_whose_insert_is_slow_is_never_swept_and_its_upload_succeeds(
    start_server: Callable[..., RunningServer],
    crash_env: dict[str, str],
    make_settings: Callable[..., Settings],
    insert_gate: asyncpg.Connection,
) -> None:
    server = start_server(crash_env)
    media_root = Path(crash_env["MEDIASVC_MEDIA_ROOT"])
    settings = make_settings(
        media_root=media_root,
        cloud_root=Path(crash_env["MEDIASVC_CLOUD_ROOT"]),
        orphan_grace_s=GRACE_S,
    )
    body = os.urandom(256 * KiB)
    thread, outcome = upload_in_thread(server.base_url, body)
    [renamed] = await poll(lambda: files_in_shards(media_root))
    await poll(lambda: inserts_waiting(insert_gate))
    # Older than the grace period and still without a row: only the commit window protects it.
    await poll(lambda: time.time() - renamed.stat().st_ctime > GRACE_S)
    assert await get_row(settings, renamed.name) is None

    report = await run_cleanup(settings)
    assert report["swept_orphans"] == 0
    assert renamed.exists()

    await insert_gate.execute(f"SELECT pg_advisory_unlock({GATE_KEY})")
    thread.join(timeout=30)
    response = outcome[0]
    assert isinstance(response, httpx.Response) and response.status_code == 201, outcome
    uid = response.json()["uid"]
    assert uid == renamed.name
    assert (await run_cleanup(settings))["swept_orphans"] == 0
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        download = await http.get(f"/api/v1/files/{uid}")
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == hashlib.sha256(body).hexdigest()


# --- a tus upload's completion: killed between the file's placing and its row ----------------


def tus_upload(base_url: str, length: int) -> str:
    response = httpx.post(
        f"{base_url}/api/v1/uploads",
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(length)},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return httpx.URL(response.headers["location"]).path


async def test_server_killed_while_completing_a_tus_upload_loses_none_of_it(
    start_server: Callable[..., RunningServer],
    crash_env: dict[str, str],
    make_settings: Callable[..., Settings],
    pg_url: str,
) -> None:
    """The last PATCH brought the last byte; the file is in place, its row (which completes
    the upload in the same transaction) is not committed when the server dies. The upload
    keeps all its bytes: the next HEAD completes it, even after the sweep took the rowless
    file at the final path."""
    server = start_server(crash_env)
    media_root = Path(crash_env["MEDIASVC_MEDIA_ROOT"])
    body = os.urandom(256 * KiB)
    path = tus_upload(server.base_url, len(body))
    uid = path.rsplit("/", 1)[1]
    await kill_inside_the_commit_window(server, pg_url, body, tus_path=path)

    upload_file = media_root / ".incoming" / f"{uid}.upload"
    assert upload_file.read_bytes() == body  # the upload still has every byte
    # The file at the final path has no row: the sweep takes it (the upload stays).
    short = make_settings(
        media_root=media_root,
        cloud_root=Path(crash_env["MEDIASVC_CLOUD_ROOT"]),
        orphan_grace_s=GRACE_S,
    )

    async def swept() -> bool:
        await run_cleanup(short)
        return not files_in_shards(media_root)

    await poll(swept)
    assert upload_file.exists()

    restarted = start_server(crash_env)
    async with httpx.AsyncClient(base_url=restarted.base_url, timeout=30) as http:
        head = await http.head(path, headers={"Tus-Resumable": "1.0.0"})
        assert head.status_code == 200
        assert head.headers["upload-offset"] == str(len(body))
        assert head.headers["content-location"] == f"/api/v1/files/{uid}"
        download = await http.get(f"/api/v1/files/{uid}")
    assert download.status_code == 200 and download.content == body
    assert await get_row(short, uid) is not None
    assert [p.name for p in leftovers(media_root)] == [uid]  # its .upload name is gone


async def test_the_upload_name_a_completion_killed_after_its_commit_left_is_swept(
    start_server: Callable[..., RunningServer],
    crash_env: dict[str, str],
    make_settings: Callable[..., Settings],
) -> None:
    """Killed right after the commit, before the ``.upload`` name of the file went: the file
    and its row are whole; the name (a second link to the same bytes) is the sweep's."""
    server = start_server(crash_env)
    media_root = Path(crash_env["MEDIASVC_MEDIA_ROOT"])
    body = os.urandom(100 * KiB)
    path = tus_upload(server.base_url, len(body))
    uid = path.rsplit("/", 1)[1]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        done = await http.patch(path, content=body, headers={**TUS_PATCH, "Upload-Offset": "0"})
    assert done.status_code == 204, done.text
    [final] = files_in_shards(media_root)
    upload_file = media_root / ".incoming" / f"{uid}.upload"
    os.link(final, upload_file)  # what such a crash leaves
    short = make_settings(
        media_root=media_root,
        cloud_root=Path(crash_env["MEDIASVC_CLOUD_ROOT"]),
        orphan_grace_s=GRACE_S,
        part_grace_s=60,  # the shortest allowed: the crash happened two minutes ago
    )
    then = time.time() - 120
    os.utime(upload_file, (then, then))
    report = await run_cleanup(short)
    assert report["swept_uploads"] == 1 and report["swept_orphans"] == 0
    assert not upload_file.exists()
    assert final.read_bytes() == body
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        head = await http.head(path, headers={"Tus-Resumable": "1.0.0"})
    assert head.headers["upload-offset"] == str(len(body))


# --- item 4: rows marked local whose file is gone ---------------------------------------------


async def test_missing_local_copy_moves_to_the_cloud_copy_or_is_reported_lost(
    settings: Settings, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    pushed_body, lost_body = os.urandom(200 * KiB), os.urandom(100 * KiB)
    pushed = (await client.post("/api/v1/files/stream", content=pushed_body)).json()["uid"]
    lost = (await client.post("/api/v1/files/stream", content=lost_body)).json()["uid"]
    ctx = JobContext.build(settings)
    try:
        await poll(lambda: _status(settings, pushed, "uploaded"))
        # The in-process queue pushes every upload: this one's cloud copy goes, as if its
        # push was still to come.
        await poll(lambda: _status(settings, lost, "uploaded"))
        await ctx.cloud.delete(key_for(lost))
        async with ctx.db.session() as session:
            record = await session.get(FileRecord, lost)
            assert record is not None
            record.cloud_status, record.cloud_path = "pending", None
            await session.commit()
        (settings.media_root / pushed[:2] / pushed).unlink()
        (settings.media_root / lost[:2] / lost).unlink()

        with caplog.at_level(logging.ERROR, logger="mediasvc.jobs.volume_audit"):
            report = await cleanup(ctx)
    finally:
        await ctx.cloud.close()
        await ctx.db.dispose()

    assert report.volume.relocated == [pushed]
    assert report.volume.lost == [lost]
    assert any("LOST" in r.message and lost in r.message for r in caplog.records)
    pushed_row, lost_row = await get_row(settings, pushed), await get_row(settings, lost)
    assert pushed_row is not None and pushed_row.local is False
    assert lost_row is not None and lost_row.local is True  # left as it was: a remount may help

    response = await client.get(f"/api/v1/files/{pushed}")
    assert response.status_code == 200 and response.content == pushed_body
    response = await client.get(f"/api/v1/files/{lost}")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_file_whose_row_says_it_was_evicted_is_swept(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    uid = (await client.post("/api/v1/files/stream", content=os.urandom(64 * KiB))).json()["uid"]
    await poll(lambda: _status(settings, uid, "uploaded"))
    # An eviction that died after its row update, before its unlink.
    ctx = JobContext.build(settings)
    try:
        async with ctx.db.session() as session:
            record = await session.get(FileRecord, uid)
            assert record is not None
            record.local = False
            await session.commit()
    finally:
        await ctx.db.dispose()
    local = settings.media_root / uid[:2] / uid
    short = settings.model_copy(update={"orphan_grace_s": GRACE_S})
    assert local.exists()
    await poll(lambda: time.time() - local.stat().st_ctime > GRACE_S)

    assert (await run_cleanup(short))["swept_orphans"] == 1
    assert not local.exists()
    response = await client.get(f"/api/v1/files/{uid}")
    assert response.status_code == 200


async def _status(settings: Settings, uid: str, wanted: str) -> bool:
    record = await get_row(settings, uid)
    return record is not None and record.cloud_status == wanted


# --- item 5: a push killed mid-copy ----------------------------------------------------------

KILLED_PUT = """
import asyncio, sys
from pathlib import Path
from mediasvc.storage.cloud.local import LocalCloudStore
store = LocalCloudStore(Path(sys.argv[1]), chunk_bytes=64 * 1024)
asyncio.run(store.put_file(sys.argv[2], Path(sys.argv[3]), size=10 * 1024 * 1024, sha256="0" * 64))
"""


def bucket_temps(bucket: Path) -> list[Path]:
    return [p for p in bucket.rglob(f"*{TEMP_SUFFIX}") if p.is_file()]


async def test_temp_file_of_a_put_killed_mid_copy_is_swept_after_the_grace_period(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    bucket = tmp_path / "bucket"
    source = tmp_path / "fifo"
    os.mkfifo(source)  # the copy waits on us for every byte: killed mid-copy for sure
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_PUT, str(bucket), key_for("killedput"), str(source)
    )
    try:
        writer = await asyncio.to_thread(os.open, source, os.O_WRONLY)
        try:
            await asyncio.to_thread(os.write, writer, b"x" * 64 * KiB)
            [temp] = await poll(lambda: bucket_temps(bucket))
            process.kill()  # SIGKILL, mid-copy
            assert await asyncio.wait_for(process.wait(), 15) == -9
        finally:
            os.close(writer)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert temp.exists()

    settings = make_settings(cloud_root=bucket)
    assert (await run_cleanup(settings))["swept_bucket_temps"] == 0  # within the default grace
    short = make_settings(cloud_root=bucket, orphan_grace_s=GRACE_S)
    await poll(lambda: time.time() - temp.stat().st_ctime > GRACE_S)
    assert (await run_cleanup(short))["swept_bucket_temps"] == 1
    assert [p for p in bucket.rglob("*") if p.is_file()] == []


async def test_temp_file_of_a_put_in_progress_is_never_swept(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    bucket = tmp_path / "bucket"
    store = LocalCloudStore(bucket, chunk_bytes=64 * KiB)
    body = os.urandom(2 * MiB)
    source = tmp_path / "fifo"
    os.mkfifo(source)
    key = key_for("slowput")
    put = asyncio.ensure_future(
        store.put_file(key, source, size=len(body), sha256=hashlib.sha256(body).hexdigest())
    )
    writer = await asyncio.to_thread(os.open, source, os.O_WRONLY)
    try:
        await asyncio.to_thread(os.write, writer, body[: 64 * KiB])
        [temp] = await poll(lambda: bucket_temps(bucket))
        # The put stalls (its source sends nothing) for longer than the grace period.
        await poll(lambda: time.time() - temp.stat().st_ctime > GRACE_S)
        short = make_settings(cloud_root=bucket, orphan_grace_s=GRACE_S)
        assert (await run_cleanup(short))["swept_bucket_temps"] == 0
        assert temp.exists()
        view = memoryview(body)[64 * KiB :]
        while view:
            view = view[await asyncio.to_thread(os.write, writer, view) :]
    finally:
        os.close(writer)
    await put
    assert bucket_temps(bucket) == []
    info = await store.stat(key)
    assert info is not None and info.size == len(body)
    assert (
        hashlib.sha256(store.path_for(key).read_bytes()).hexdigest()
        == hashlib.sha256(body).hexdigest()
    )


async def test_sqlite_commit_window_keeps_the_sweep_off_a_uid_being_committed(
    tmp_path: Path,
) -> None:
    # The embedded default: uploads and cleanup share one process and one Database.
    from mediasvc.db.session import Database

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'window.db'}")
    try:
        async with db.session() as committer, db.session() as sweeper:
            async with db.commit_window.committing(committer, "a" * 26):
                assert await db.commit_window.try_sweeping(sweeper, "a" * 26) is False
                assert await db.commit_window.try_sweeping(sweeper, "b" * 26) is True
            assert await db.commit_window.try_sweeping(sweeper, "a" * 26) is True
    finally:
        await db.dispose()
