"""Previews: poster frames and thumbnails made by the probe job, stored, pushed, served, purged."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from mediasvc.auth import ApiKey
from mediasvc.config import Settings
from mediasvc.ids import hash_token
from mediasvc.jobs.cleanup import cleanup
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.probe import probe_file
from mediasvc.storage.cloud import preview_key_for
from tests.helpers import (
    DEAD_REDIS_URL,
    age_rows,
    assert_problem,
    probed,
    row,
    started,
    stopped,
    upload_bytes,
    upload_file,
)
from tests.mediafiles import SAMPLE_MP4, MediaFiles, ffmpeg, picture_size

pytestmark = pytest.mark.timeout(120)


async def fetch_preview(client: httpx.AsyncClient, uid: str, tmp_path: Path) -> Path:
    response = await client.get(f"/api/v1/files/{uid}/preview")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-content-type-options"] == "nosniff"
    target = tmp_path / f"{uid}.jpg"
    await asyncio.to_thread(target.write_bytes, response.content)
    return target


def ssim(a: Path, b: Path) -> float:
    """Structural similarity of two pictures of the same size (1.0: identical)."""
    result = subprocess.run(
        ["ffmpeg", "-v", "info", "-nostdin", "-i", str(a), "-i", str(b), "-lavfi", "ssim",
         "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    match = re.search(r"All:([0-9.]+)", result.stderr)
    assert match is not None, result.stderr
    return float(match.group(1))


def frame_at(source: Path, seconds: float, target: Path) -> Path:
    ffmpeg("-ss", str(seconds), "-i", str(source), "-frames:v", "1", str(target))
    return target


async def test_video_poster_is_a_bounded_jpeg_from_ten_percent_in(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    uid = (await upload_file(client, SAMPLE_MP4))["uid"]
    assert (await probed(client, uid))["probe_status"] == "done"
    poster = await fetch_preview(client, uid, tmp_path)
    assert await asyncio.to_thread(picture_size, poster) == ("mjpeg", 640, 360)
    # The sample shows a running clock: the poster looks most like the frame at 2 s (10 % of
    # 20 s), not like the first frame or one from the middle.
    similarity = {
        at: await asyncio.to_thread(
            ssim, poster, frame_at(SAMPLE_MP4, at, tmp_path / f"ref-{at}.png")
        )
        for at in (0.0, 2.0, 10.0)
    }
    assert similarity[2.0] > similarity[0.0] and similarity[2.0] > similarity[10.0], similarity


async def test_image_thumbnail_fits_the_bound_and_keeps_the_aspect(
    client: httpx.AsyncClient, media_files: MediaFiles, tmp_path: Path
) -> None:
    uid = (await upload_file(client, media_files.photo_jpg))["uid"]
    await probed(client, uid)
    thumb = await fetch_preview(client, uid, tmp_path)
    assert await asyncio.to_thread(picture_size, thumb) == ("mjpeg", 640, 360)


async def test_a_small_image_is_not_scaled_up(
    client: httpx.AsyncClient, media_files: MediaFiles, tmp_path: Path
) -> None:
    uid = (await upload_file(client, media_files.small_png))["uid"]
    assert (await probed(client, uid))["media"]["kind"] == "image"
    thumb = await fetch_preview(client, uid, tmp_path)
    assert await asyncio.to_thread(picture_size, thumb) == ("mjpeg", 200, 100)


async def test_the_bound_is_a_setting(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(preview_max_size_px=160)
    app, client = await started(settings)
    try:
        uid = (await upload_file(client, SAMPLE_MP4))["uid"]
        await probed(client, uid)
        poster = await fetch_preview(client, uid, tmp_path)
        assert await asyncio.to_thread(picture_size, poster) == ("mjpeg", 160, 90)
    finally:
        await stopped(app, client)


async def test_preview_is_404_until_the_probe_made_one(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(redis_url=DEAD_REDIS_URL)  # nothing runs the probe by itself
    app, client = await started(settings)
    try:
        uid = (await upload_file(client, SAMPLE_MP4))["uid"]
        problem = assert_problem(await client.get(f"/api/v1/files/{uid}/preview"), 404)
        assert "not been probed" in problem["detail"]
        ctx = JobContext.build(settings)
        assert (await probe_file(ctx, uid)).status == "done"
        await ctx.db.dispose()
        assert (await client.get(f"/api/v1/files/{uid}/preview")).status_code == 200
        assert_problem(await client.get("/api/v1/files/" + "a" * 26 + "/preview"), 404)
    finally:
        await stopped(app, client)


async def test_a_file_that_is_not_a_picture_has_no_preview(client: httpx.AsyncClient) -> None:
    uid = (await upload_bytes(client, b"words, not pictures", "notes.txt"))["uid"]
    await probed(client, uid)
    problem = assert_problem(await client.get(f"/api/v1/files/{uid}/preview"), 404)
    assert "no preview" in problem["detail"]


async def test_preview_is_pushed_and_served_from_the_cloud_once_the_local_copy_is_gone(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    uid = (await upload_file(client, SAMPLE_MP4))["uid"]
    meta = await probed(client, uid)
    local = settings.media_root / uid[:2] / f"{uid}.preview.jpg"
    in_bucket = settings.cloud_root / preview_key_for(uid)
    assert (await row(settings, uid)).preview_path == preview_key_for(uid)
    assert in_bucket.read_bytes() == local.read_bytes()
    served = await client.get(urlsplit(meta["preview_url"]).path)
    local.unlink()
    from_cloud = await client.get(f"/api/v1/files/{uid}/preview")
    assert from_cloud.status_code == 200 and from_cloud.content == served.content
    assert from_cloud.headers["content-type"] == "image/jpeg"


async def test_a_preview_the_cloud_refused_keeps_the_probe_pending_until_it_is_in(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    blocked = tmp_path / "bucket-blocked"
    blocked.write_text("a file where the bucket directory should be")
    settings = make_settings(redis_url=DEAD_REDIS_URL, cloud_root=blocked)
    app, client = await started(settings)
    try:
        uid = (await upload_file(client, SAMPLE_MP4))["uid"]
        ctx = JobContext.build(settings)
        assert (await probe_file(ctx, uid)).status == "pending"
        await ctx.db.dispose()
        record = await row(settings, uid)
        assert record.probe_status == "pending" and record.preview_path is None
        assert "preview not yet in the cloud" in str(record.probe_error)
        assert record.media is not None  # the facts are kept meanwhile
        # Served from this node's disk already.
        assert (await client.get(f"/api/v1/files/{uid}/preview")).status_code == 200

        blocked.unlink()  # the cloud is back; the reconciler's job runs again
        ctx = JobContext.build(settings)
        assert (await probe_file(ctx, uid)).status == "done"
        await ctx.db.dispose()
        record = await row(settings, uid)
        assert record.preview_path == preview_key_for(uid) and record.probe_error is None
        assert (blocked / preview_key_for(uid)).is_file()
    finally:
        await stopped(app, client)


async def test_delete_removes_the_preview_everywhere(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    upload = await upload_file(client, SAMPLE_MP4)
    uid = upload["uid"]
    await probed(client, uid)
    local = settings.media_root / uid[:2] / f"{uid}.preview.jpg"
    in_bucket = settings.cloud_root / preview_key_for(uid)
    assert local.is_file() and in_bucket.is_file()
    headers = {"X-Delete-Token": upload["delete_token"]}
    assert (await client.delete(f"/api/v1/files/{uid}", headers=headers)).status_code == 204
    assert not local.exists() and not in_bucket.exists()
    assert (await client.get(f"/api/v1/files/{uid}/preview")).status_code == 410


async def test_expiry_purges_the_preview_too(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.post(
        "/api/v1/files/stream",
        content=await asyncio.to_thread(SAMPLE_MP4.read_bytes),
        params={"expires_in": 3600},
    )
    uid = response.json()["uid"]
    meta = await probed(client, uid)
    assert meta["preview_url"] is not None
    await age_rows(settings, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    ctx = JobContext.build(settings)
    report = await cleanup(ctx)
    await ctx.db.dispose()
    assert report.purged == [uid]
    assert not (settings.media_root / uid[:2] / f"{uid}.preview.jpg").exists()
    assert not (settings.cloud_root / preview_key_for(uid)).exists()
    assert (await row(settings, uid)).preview_path is None


async def test_signed_downloads_cover_the_preview(
    make_settings: Callable[..., Settings], media_files: MediaFiles
) -> None:
    owner, stranger = {"Authorization": "Bearer owner-key"}, {"Authorization": "Bearer other-key"}
    settings = make_settings(
        require_signed_downloads=True,
        signing_secret="previews-test-secret-of-32-bytes!",
        api_keys=[
            ApiKey(name="owner", sha256=hash_token("owner-key")),
            ApiKey(name="other", sha256=hash_token("other-key")),
        ],
    )
    app, client = await started(settings)
    try:
        client.headers.update(owner)  # upload and poll the metadata as the owner
        uid = (await upload_file(client, media_files.photo_jpg))["uid"]
        await probed(client, uid)
        del client.headers["Authorization"]
        assert_problem(await client.get(f"/api/v1/files/{uid}/preview"), 403)
        assert_problem(await client.get(f"/api/v1/files/{uid}/preview", headers=stranger), 403)
        link = (await client.get(f"/api/v1/files/{uid}/link", headers=owner)).json()["url"]
        query = urlsplit(link).query
        assert (await client.get(f"/api/v1/files/{uid}/preview?{query}")).status_code == 200
        by_owner = await client.get(f"/api/v1/files/{uid}/preview", headers=owner)
        assert by_owner.status_code == 200
        assert by_owner.headers["content-type"] == "image/jpeg"
    finally:
        await stopped(app, client)
