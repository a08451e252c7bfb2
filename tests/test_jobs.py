"""Cloud push, reconcile and cleanup with real Redis, a real arq worker and the local bucket.

S3-backed checks (moto, s3rver, a worker process killed mid-push) are in test_topology.py.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from mediasvc.config import Settings
from mediasvc.jobs.cleanup import cleanup
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.push import backoff_s
from mediasvc.jobs.reconcile import find_stuck_pushes
from mediasvc.storage.cloud import key_for
from tests.helpers import age_rows, row, run_worker, started, stopped, wait_for

DEAD_REDIS_URL = "redis://127.0.0.1:9/0"  # the discard port: nothing listens
KiB = 1024


async def upload(client: httpx.AsyncClient, body: bytes, **params: int) -> dict[str, object]:
    response = await client.post("/api/v1/files/stream", content=body, params=params)
    assert response.status_code == 201, response.text
    meta: dict[str, object] = response.json()
    return meta


def bucket_object(settings: Settings, uid: str) -> Path:
    return settings.cloud_root / key_for(uid)


# --- push -------------------------------------------------------------------------------------


async def test_in_process_push_uploads_a_verified_copy(settings: Settings) -> None:
    app, client = await started(settings)
    try:
        body = os.urandom(300 * KiB)
        meta = await upload(client, body)
        uid = str(meta["uid"])

        async def uploaded() -> bool:
            return (await row(settings, uid)).cloud_status == "uploaded"

        await wait_for(uploaded)
        record = await row(settings, uid)
        assert record.cloud_path == key_for(uid)
        assert bucket_object(settings, uid).read_bytes() == body
        again = (await client.get(f"/api/v1/files/{uid}/metadata")).json()
        assert again["cloud_status"] == "uploaded" and again["cloud_path"] == key_for(uid)
    finally:
        await stopped(app, client)


async def test_arq_worker_pushes_after_upload(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    settings = make_settings(redis_url=redis_url)
    app, client = await started(settings)
    try:
        body = os.urandom(200 * KiB)
        uid = str((await upload(client, body))["uid"])
        assert (await row(settings, uid)).cloud_status == "pending"
        await run_worker(settings)
        record = await row(settings, uid)
        assert record.cloud_status == "uploaded"
        assert hashlib.sha256(bucket_object(settings, uid).read_bytes()).hexdigest() == (
            hashlib.sha256(body).hexdigest()
        )
        # Idempotent: the same job again finds it uploaded and does nothing.
        redis = aioredis.from_url(redis_url)
        from arq.connections import ArqRedis

        pool = ArqRedis(connection_pool=redis.connection_pool)
        job = await pool.enqueue_job("push_to_cloud", uid, _job_id=f"push:{uid}")
        assert job is not None, "a finished push must not block the next one (keep_result=0)"
        await run_worker(settings)
        assert (await row(settings, uid)).cloud_status == "uploaded"
        await redis.aclose()
    finally:
        await stopped(app, client)


async def test_redis_down_at_upload_keeps_the_file_and_reconcile_pushes_it(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    down = make_settings(redis_url=DEAD_REDIS_URL, reconcile_stale_after_s=1)
    app, client = await started(down)
    try:
        meta = await upload(client, b"uploaded while Redis was down")
    finally:
        await stopped(app, client)
    uid = str(meta["uid"])
    assert (await row(down, uid)).cloud_status == "pending"

    # Redis is back: the reconciler (a cron of the real worker) finds the stale row.
    up = make_settings(redis_url=redis_url, reconcile_stale_after_s=1)
    await age_rows(up, cloud_updated_at=datetime.now(UTC) - timedelta(seconds=5))
    ctx = JobContext.build(up)
    assert await find_stuck_pushes(ctx) == [uid]
    from arq.connections import ArqRedis, RedisSettings, create_pool

    from mediasvc.jobs.worker import reconcile_job

    pool: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url))
    assert await reconcile_job({"mediasvc": ctx, "redis": pool}) == 1
    await pool.aclose()
    await ctx.db.dispose()
    await run_worker(up)
    assert (await row(up, uid)).cloud_status == "uploaded"
    assert bucket_object(up, uid).read_bytes() == b"uploaded while Redis was down"


def test_backoff_grows_exponentially_and_is_capped() -> None:
    delays = [backoff_s(n, base_s=2, max_s=60) for n in range(1, 8)]
    assert delays == [2, 4, 8, 16, 32, 60, 60]


# --- cleanup ----------------------------------------------------------------------------------


async def test_cleanup_never_evicts_a_file_whose_cloud_copy_is_unconfirmed(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(local_retention_s=1, redis_url=DEAD_REDIS_URL)
    app, client = await started(settings)
    try:
        pending = str((await upload(client, b"never pushed"))["uid"])
        await age_rows(settings, created_at=datetime.now(UTC) - timedelta(days=30))
        ctx = JobContext.build(settings)
        # Pending: not evicted.
        report = await cleanup(ctx)
        assert report.evicted == []
        assert settings.media_root.joinpath(pending[:2], pending).is_file()
        # The row claims "uploaded" but the bucket has no object: still not evicted.
        await age_rows(settings, cloud_status="uploaded", cloud_path=key_for(pending))
        assert (await cleanup(ctx)).evicted == []
        assert settings.media_root.joinpath(pending[:2], pending).is_file()
        # A wrong object in the bucket (other bytes, same size): not evicted either.
        target = bucket_object(settings, pending)
        target.parent.mkdir(parents=True)
        target.write_bytes(b"NEVER pushed")
        assert (await cleanup(ctx)).evicted == []
        assert (await row(settings, pending)).local is True
        await ctx.db.dispose()
    finally:
        await stopped(app, client)


async def test_evicted_file_is_served_from_the_cloud_with_ranges(settings: Settings) -> None:
    app, client = await started(settings)
    try:
        body = os.urandom(3 * 1024 * KiB + 123)
        uid = str((await upload(client, body))["uid"])

        async def uploaded() -> bool:
            return (await row(settings, uid)).cloud_status == "uploaded"

        await wait_for(uploaded)
        await age_rows(settings, created_at=datetime.now(UTC) - timedelta(days=30))
        ctx = JobContext.build(settings.model_copy(update={"local_retention_s": 60}))
        assert (await cleanup(ctx)).evicted == [uid]
        await ctx.db.dispose()
        assert not settings.media_root.joinpath(uid[:2], uid).exists()
        assert (await row(settings, uid)).local is False

        url = f"/api/v1/files/{uid}"
        full = await client.get(url)
        assert full.status_code == 200 and full.content == body
        last = await client.get(url, headers={"Range": "bytes=-1048576"})
        assert last.status_code == 206
        assert last.content == body[-1048576:]
        size = len(body)
        assert last.headers["content-range"] == f"bytes {size - 1048576}-{size - 1}/{size}"
        several = await client.get(url, headers={"Range": "bytes=0-9,2000000-2000009"})
        assert several.status_code == 206
        assert several.headers["content-type"].startswith("multipart/byteranges")
        assert body[:10] in several.content and body[2000000:2000010] in several.content
        head = await client.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(body))
        etag = full.headers["etag"]
        assert (await client.get(url, headers={"If-None-Match": etag})).status_code == 304
        stale = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        assert stale.status_code == 200 and stale.content == body
        assert (await client.get(url, headers={"Range": "bytes=99999999-"})).status_code == 416
    finally:
        await stopped(app, client)


async def test_expired_files_disappear_from_disk_bucket_and_listing(settings: Settings) -> None:
    app, client = await started(settings)
    try:
        meta = await upload(client, b"short-lived", expires_in=3600)
        uid = str(meta["uid"])

        async def uploaded() -> bool:
            return (await row(settings, uid)).cloud_status == "uploaded"

        await wait_for(uploaded)
        assert bucket_object(settings, uid).is_file()
        await age_rows(settings, expires_at=datetime.now(UTC) - timedelta(seconds=1))
        assert (await client.get(f"/api/v1/files/{uid}")).status_code == 410
        ctx = JobContext.build(settings)
        report = await cleanup(ctx)
        await ctx.db.dispose()
        assert report.expired == 1 and report.purged == [uid]
        assert not settings.media_root.joinpath(uid[:2], uid).exists()
        assert not bucket_object(settings, uid).exists()
        assert (await client.get("/api/v1/files")).json()["items"] == []
        record = await row(settings, uid)
        assert record.gone_reason == "expired"
        assert (await client.get(f"/api/v1/files/{uid}/metadata")).status_code == 410
    finally:
        await stopped(app, client)


async def test_cleanup_sweeps_only_stale_part_files(settings: Settings) -> None:
    ctx = JobContext.build(settings)
    ctx.store.prepare()
    stale = ctx.store.part_path_for("a" * 26)
    fresh = ctx.store.part_path_for("b" * 26)
    stale.write_bytes(b"abandoned")
    fresh.write_bytes(b"in progress")
    old = time.time() - settings.part_grace_s - 10
    os.utime(stale, (old, old))
    report = await cleanup(ctx)
    await ctx.db.dispose()
    assert report.swept_parts == 1
    assert not stale.exists() and fresh.exists()
