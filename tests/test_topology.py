"""Issue 3's production topology, from real processes.

The API under uvicorn (``mediasvc serve``), arq worker processes (``python -m mediasvc worker``),
PostgreSQL, Redis (db 13, flushed around each test) and an S3 server on loopback: s3rver
(disk-backed) for the 1 GiB object, moto for small ones (it keeps objects in memory).

Every wait polls a condition within a bound; nothing asserts a wall-clock time. Costs are shown
by counting: the worker's peak RSS (VmHWM) and the bytes a proxy saw coming from the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from mediasvc.storage.cloud import key_for
from tests.conftest import PROJECT_ROOT, RunningServer, peak_rss_bytes, truncate
from tests.helpers import curl, make_file
from tests.s3servers import CountingProxy, S3Bucket

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MiB = 1024 * 1024
REDIS_URL = os.environ.get("MEDIASVC_TEST_REDIS", "redis://127.0.0.1:6379/13")
DEAD_REDIS_URL = "redis://127.0.0.1:9/13"  # the discard port: nothing listens
DEAD_S3_ENDPOINT = "http://127.0.0.1:9"
MAX_WORKER_RSS_BYTES = 150 * MiB  # the bound for the worker pushing 1 GiB
BIG_FILE_BYTES = 1024 * MiB + 12345  # 1 GiB and a short last part
WORKER_STOP_TIMEOUT_S = 15.0


# --- helpers ----------------------------------------------------------------------------------


def wait_until(
    check: Callable[[], Any],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.2,
    diagnostics: Callable[[], str] = lambda: "",
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{diagnostics()}")
        time.sleep(interval_s)


class WorkerProcess:
    """One ``python -m mediasvc worker`` process, its output in a log file."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace")
        return f"worker log ({self.log_path}):\n{text[-chars:]}"

    def assert_alive(self) -> None:
        assert self.process.poll() is None, f"the worker exited\n{self.log_tail()}"

    def stop(self) -> None:
        """SIGTERM (arq shuts down cleanly), SIGKILL if it is not gone within a bound."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=WORKER_STOP_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as when a machine dies."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=WORKER_STOP_TIMEOUT_S)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], WorkerProcess]]:
    """Start arq worker processes; every one is stopped after the test."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str]) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        full_env = {**os.environ, **env}
        full_env.pop("GLIBC_TUNABLES", None)  # as a plain `mediasvc worker` would run
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mediasvc", "worker"],
                env=full_env,
                cwd=tmp_path,  # no stray .env file
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(process, log_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def fresh_state(pg_url: str) -> Iterator[None]:
    """An empty files table and an empty Redis db 13, before and after."""
    asyncio.run(truncate(pg_url))
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()
    client.close()


@contextmanager
def proxy_thread(target_port: int, **options: Any) -> Iterator[CountingProxy]:
    """A ``CountingProxy`` on its own event loop in a thread, so that processes can use it
    while the test blocks."""
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(_quiet_cancelled)
    thread = threading.Thread(target=loop.run_forever, name="counting-proxy", daemon=True)
    thread.start()
    proxy = CountingProxy(target_port, **options)
    try:
        asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(timeout=10)
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _quiet_cancelled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # Python 3.11's start_server callback calls task.exception() on a cancelled connection
    # task, so closing the proxy with connections open (the API's keep-alive pool, a killed
    # worker's) logs CancelledError tracebacks. That is noise; anything else is reported.
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


def stack_env(
    *,
    pg_url: str,
    media_root: Path,
    bucket: S3Bucket,
    endpoint: str,
    redis_url: str = REDIS_URL,
    **settings: object,
) -> dict[str, str]:
    """The environment every process of the stack shares; ``settings`` are MEDIASVC_<NAME>."""
    env = {
        "MEDIASVC_DATABASE_URL": pg_url,
        "MEDIASVC_REDIS_URL": redis_url,
        "MEDIASVC_MEDIA_ROOT": str(media_root),
        "MEDIASVC_CLOUD_BACKEND": "s3",
        "MEDIASVC_S3_ENDPOINT_URL": endpoint,
        "MEDIASVC_S3_BUCKET": bucket.name,
        "MEDIASVC_S3_ACCESS_KEY_ID": bucket.server.access_key,
        "MEDIASVC_S3_SECRET_ACCESS_KEY": bucket.server.secret_key,
    }
    env.update({f"MEDIASVC_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def metadata(server: RunningServer, uid: str) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/api/v1/files/{uid}/metadata", timeout=10)
    assert response.status_code == 200, response.text
    meta: dict[str, Any] = response.json()
    return meta


def db_row(pg_url: str, uid: str) -> dict[str, Any]:
    """The row as PostgreSQL has it (cloud_error and cloud_attempts are not in the API)."""

    async def fetch() -> dict[str, Any]:
        connection = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            found = await connection.fetchrow("SELECT * FROM files WHERE uid = $1", uid)
        finally:
            await connection.close()
        assert found is not None, uid
        return dict(found)

    return asyncio.run(fetch())


def db_execute(pg_url: str, statement: str, *args: object) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await connection.execute(statement, *args)
        finally:
            await connection.close()

    asyncio.run(run())


def upload_bytes(server: RunningServer, body: bytes) -> dict[str, Any]:
    response = httpx.post(f"{server.base_url}/api/v1/files/stream", content=body, timeout=60)
    assert response.status_code == 201, response.text
    meta: dict[str, Any] = response.json()
    return meta


def object_digest(bucket: S3Bucket, key: str) -> tuple[int, str, dict[str, str]]:
    """Size, sha256 (streamed in 1 MiB chunks) and user metadata of an object in the bucket."""
    result = bucket.admin.get_object(Bucket=bucket.name, Key=key)
    digest = hashlib.sha256()
    size = 0
    for chunk in result["Body"].iter_chunks(MiB):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest(), dict(result.get("Metadata", {}))


def status_is(server: RunningServer, uid: str, *wanted: str) -> Callable[[], str | None]:
    """A poll check: the row's cloud_status once it is one of ``wanted``."""

    def check() -> str | None:
        status = str(metadata(server, uid)["cloud_status"])
        return status if status in wanted else None

    return check


# --- 1 + 2: 1 GiB push to s3rver, worker memory; eviction, then a cloud Range read ------------


def test_1gib_push_verified_in_bounded_worker_memory_then_evicted_range_read_from_store(
    s3rver_bucket: S3Bucket,
    start_server: Callable[..., RunningServer],
    start_worker: Callable[[dict[str, str]], WorkerProcess],
    fresh_state: None,
    pg_url: str,
    tmp_path: Path,
) -> None:
    bucket = s3rver_bucket
    source = tmp_path / "big.bin"
    expected_sha256 = make_file(source, BIG_FILE_BYTES)
    media_root = tmp_path / "media"
    common = {"pg_url": pg_url, "media_root": media_root, "bucket": bucket}
    try:
        # The API reads the store through a counting proxy; the worker writes to it directly.
        with proxy_thread(bucket.server.port) as proxy:
            api = start_server(stack_env(**common, endpoint=proxy.endpoint))
            worker = start_worker(
                stack_env(
                    **common,
                    endpoint=bucket.server.endpoint,
                    cleanup_every_s=1,  # the eviction below is the worker's cron at work
                    local_retention_s=3600,
                )
            )
            # `mediasvc worker --check` is the worker's health check: it passes once it runs.
            wait_until(
                lambda: (
                    subprocess.run(
                        [sys.executable, "-m", "mediasvc", "worker", "--check"],
                        env={**os.environ, "MEDIASVC_REDIS_URL": REDIS_URL},
                        cwd=tmp_path,
                        capture_output=True,
                        timeout=60,
                    ).returncode
                    == 0
                ),
                timeout_s=60,
                what="worker health check",
                interval_s=0.5,
                diagnostics=worker.log_tail,
            )

            uploaded = curl("-T", str(source), f"{api.base_url}/api/v1/files/stream/")
            pushed_from = time.monotonic()
            meta = json.loads(uploaded.stdout)
            uid = meta["uid"]
            assert meta["sha256"] == expected_sha256 and meta["size"] == BIG_FILE_BYTES

            status = wait_until(
                status_is(api, uid, "uploaded", "failed"),
                timeout_s=120,
                what="1 GiB push",
                diagnostics=worker.log_tail,
            )
            push_s = time.monotonic() - pushed_from
            assert status == "uploaded", db_row(pg_url, uid)["cloud_error"]
            worker.assert_alive()
            worker_rss = peak_rss_bytes(worker.pid)
            print(
                f"\n1 GiB push: ~{BIG_FILE_BYTES / push_s / 1e6:.0f} MB/s "
                f"(201 → uploaded seen in {push_s:.1f} s); "
                f"worker peak RSS {worker_rss / MiB:.1f} MiB"
            )
            assert worker_rss < MAX_WORKER_RSS_BYTES

            # The object, looked at from outside: same size, same sha256.
            key = metadata(api, uid)["cloud_path"]
            assert key == key_for(uid)
            size, sha256, user_metadata = object_digest(bucket, key)
            assert (size, sha256) == (BIG_FILE_BYTES, expected_sha256)
            assert user_metadata.get("sha256") == expected_sha256

            # 2. Old enough to evict: the worker's cleanup cron takes the local copy away.
            local_file = media_root / uid[:2] / uid
            assert local_file.is_file()
            db_execute(
                pg_url,
                "UPDATE files SET created_at = now() - interval '2 hours' WHERE uid = $1",
                uid,
            )
            wait_until(
                lambda: metadata(api, uid)["local"] is False and not local_file.exists(),
                timeout_s=60,
                what="eviction by the cleanup cron",
                diagnostics=worker.log_tail,
            )

            # The last 1 MiB, from the store through the API: byte-exact, and only ~1 MiB fetched.
            with source.open("rb") as file:
                file.seek(BIG_FILE_BYTES - MiB)
                expected_tail = file.read()
            proxy.reset()
            response = httpx.get(
                f"{api.base_url}/api/v1/files/{uid}",
                headers={"Range": f"bytes=-{MiB}"},
                timeout=60,
            )
            fetched = proxy.received_bytes
            print(f"Range of the last 1 MiB after eviction: {fetched} bytes came from the store")
            assert response.status_code == 206
            first = BIG_FILE_BYTES - MiB
            assert response.headers["content-range"] == (
                f"bytes {first}-{BIG_FILE_BYTES - 1}/{BIG_FILE_BYTES}"
            )
            assert response.content == expected_tail
            assert MiB <= fetched < 2 * MiB
            worker.assert_alive()
    finally:
        source.unlink(missing_ok=True)


# --- 3: S3 unreachable → retries → failed; back → reconcile pushes it -------------------------


def test_s3_unreachable_fails_after_retries_then_reconcile_recovers(
    moto_bucket: S3Bucket,
    start_server: Callable[..., RunningServer],
    start_worker: Callable[[dict[str, str]], WorkerProcess],
    fresh_state: None,
    pg_url: str,
    tmp_path: Path,
) -> None:
    common = {"pg_url": pg_url, "media_root": tmp_path / "media", "bucket": moto_bucket}
    api = start_server(stack_env(**common, endpoint=moto_bucket.server.endpoint))
    down = start_worker(
        stack_env(**common, endpoint=DEAD_S3_ENDPOINT, push_max_tries=2, push_backoff_base_s=0.2)
    )
    body = os.urandom(256 * 1024 + 17)
    uid = upload_bytes(api, body)["uid"]

    status = wait_until(
        status_is(api, uid, "failed", "uploaded"),
        timeout_s=60,
        what="push against an unreachable store",
        diagnostics=down.log_tail,
    )
    assert status == "failed"
    row = db_row(pg_url, uid)
    assert row["cloud_error"], row
    assert row["cloud_attempts"] == 2
    assert key_for(uid) not in moto_bucket.object_keys()
    down.stop()

    # The store is reachable again: the reconciler (a cron of the new worker) retries it.
    up = start_worker(
        stack_env(
            **common,
            endpoint=moto_bucket.server.endpoint,
            reconcile_failed_after_s=1,
            reconcile_every_s=1,
        )
    )
    status = wait_until(
        status_is(api, uid, "uploaded"),
        timeout_s=60,
        what="reconcile of the failed push",
        diagnostics=up.log_tail,
    )
    row = db_row(pg_url, uid)
    assert row["cloud_error"] is None and row["cloud_path"] == key_for(uid)
    size, sha256, _ = object_digest(moto_bucket, key_for(uid))
    assert (size, sha256) == (len(body), hashlib.sha256(body).hexdigest())


# --- 4: a worker killed mid-push; the job runs again and the object ends complete -------------


def test_worker_killed_mid_push_job_runs_again_and_object_is_complete(
    moto_bucket: S3Bucket,
    start_server: Callable[..., RunningServer],
    start_worker: Callable[[dict[str, str]], WorkerProcess],
    fresh_state: None,
    pg_url: str,
    tmp_path: Path,
) -> None:
    common = {"pg_url": pg_url, "media_root": tmp_path / "media", "bucket": moto_bucket}
    # A short push timeout: arq's in-progress key of a dead worker's job lasts timeout + 10 s.
    jobs = {
        "push_timeout_s": 10,
        "s3_part_size_bytes": 5 * MiB,
        "reconcile_stale_after_s": 1,
        "reconcile_every_s": 1,
    }
    api = start_server(stack_env(**common, endpoint=moto_bucket.server.endpoint))
    source = tmp_path / "twenty.bin"
    size = 20 * MiB + 4321
    expected_sha256 = make_file(source, size)

    # The first worker pushes through a proxy that slows every 64 KiB sent by 0.1 s: each
    # 5 MiB part takes at least 8 s, so the kill lands mid-push.
    with proxy_thread(moto_bucket.server.port, upload_delay_s=0.1) as proxy:
        first = start_worker(stack_env(**common, endpoint=proxy.endpoint, **jobs))
        uploaded = curl("-T", str(source), f"{api.base_url}/api/v1/files/stream/")
        uid = json.loads(uploaded.stdout)["uid"]
        key = key_for(uid)
        wait_until(
            lambda: (
                db_row(pg_url, uid)["cloud_status"] == "uploading"
                and proxy.sent_bytes > MiB
                and key in moto_bucket.multipart_uploads()
            ),
            timeout_s=60,
            what="push under way",
            interval_s=0.05,
            diagnostics=first.log_tail,
        )
        before_kill = {
            upload["UploadId"]
            for upload in moto_bucket.admin.list_multipart_uploads(Bucket=moto_bucket.name).get(
                "Uploads", []
            )
        }
        first.kill()
    assert db_row(pg_url, uid)["cloud_status"] == "uploading"  # it really died mid-push
    assert key not in moto_bucket.object_keys()

    second = start_worker(stack_env(**common, endpoint=moto_bucket.server.endpoint, **jobs))
    wait_until(
        status_is(api, uid, "uploaded"),
        timeout_s=90,
        what="the push after the worker was killed",
        diagnostics=second.log_tail,
    )
    object_size, sha256, _ = object_digest(moto_bucket, key)
    assert (object_size, sha256) == (size, expected_sha256)
    # The new push left no incomplete upload of its own. The killed worker's one cannot be
    # aborted by anyone in the process (SIGKILL; obstore cannot list multipart uploads): it is
    # the bucket lifecycle rule's (AbortIncompleteMultipartUpload) to reap.
    left = {
        upload["UploadId"]
        for upload in moto_bucket.admin.list_multipart_uploads(Bucket=moto_bucket.name).get(
            "Uploads", []
        )
    }
    assert left <= before_kill, left - before_kill
    print(f"\nincomplete multipart uploads left by the killed worker: {len(left)}")
    for upload_id in left:
        moto_bucket.admin.abort_multipart_upload(
            Bucket=moto_bucket.name, Key=key, UploadId=upload_id
        )


# --- 5: Redis down at upload → the row stays pending → pushed later by reconcile ---------------


def test_redis_down_at_upload_row_stays_pending_then_reconcile_pushes_it(
    moto_bucket: S3Bucket,
    start_server: Callable[..., RunningServer],
    start_worker: Callable[[dict[str, str]], WorkerProcess],
    fresh_state: None,
    pg_url: str,
    tmp_path: Path,
) -> None:
    common = {"pg_url": pg_url, "media_root": tmp_path / "media", "bucket": moto_bucket}
    endpoint = moto_bucket.server.endpoint
    api = start_server(stack_env(**common, endpoint=endpoint, redis_url=DEAD_REDIS_URL))
    body = os.urandom(100 * 1024 + 3)
    meta = upload_bytes(api, body)  # 201 although Redis is down
    uid = meta["uid"]
    assert meta["cloud_status"] == "pending"
    assert metadata(api, uid)["cloud_status"] == "pending"
    queued = redis.Redis.from_url(REDIS_URL)
    try:
        assert queued.dbsize() == 0  # nothing reached the real Redis
    finally:
        queued.close()

    worker = start_worker(
        stack_env(**common, endpoint=endpoint, reconcile_stale_after_s=1, reconcile_every_s=1)
    )
    wait_until(
        status_is(api, uid, "uploaded"),
        timeout_s=60,
        what="reconcile of a push never enqueued",
        diagnostics=worker.log_tail,
    )
    size, sha256, _ = object_digest(moto_bucket, key_for(uid))
    assert (size, sha256) == (len(body), hashlib.sha256(body).hexdigest())


# --- 6: the compose file of this topology -----------------------------------------------------


def test_docker_compose_config_accepts_the_topology() -> None:
    compose = PROJECT_ROOT / "docker-compose.yml"
    checked = subprocess.run(
        ["docker-compose", "-f", str(compose), "config", "-q"],
        capture_output=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr.decode()
    services = subprocess.run(
        ["docker-compose", "-f", str(compose), "config", "--services"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert {"postgres", "redis", "minio", "api", "worker"} <= set(services.stdout.decode().split())
