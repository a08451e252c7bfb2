"""Thumbnails on request: of a video evicted from this node (read from its cloud copy, S3 or the
bucket directory, with seeks), and the disk cache's bounds (LRU per file, gone with the file).

The clip is made by ffmpeg at test time: 30 s of 640x360 H.264 with a keyframe every second and
the index up front, so a seek near the end needs only the index and a second of frames.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.server
import os
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mediasvc.api import processing
from mediasvc.config import Settings
from mediasvc.jobs.cleanup import cleanup
from mediasvc.jobs.context import JobContext
from mediasvc.media.config import MediaConfig
from mediasvc.media.preview import preview_command, render_frame
from mediasvc.media.tools import MediaInput
from mediasvc.storage.thumbnails import ThumbnailCache
from tests.helpers import age_rows, assert_problem, fresh_client, probed, row, upload_file, wait_for
from tests.mediafiles import ffmpeg
from tests.s3servers import S3Bucket, counting_proxy

pytestmark = pytest.mark.timeout(180)

SEEK_S = 25.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("thumbnail-media") / "clip.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=30",
           "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p",
           "-movflags", "+faststart", str(path))  # fmt: skip
    return path


async def evict(settings: Settings, uid: str) -> None:
    """Wait for the cloud copy, then evict the local one as the cleanup does."""

    async def uploaded() -> bool:
        return (await row(settings, uid)).cloud_status == "uploaded"

    await wait_for(uploaded, timeout_s=60)
    await age_rows(settings, created_at=datetime.now(UTC) - timedelta(days=30))
    ctx = JobContext.build(settings.model_copy(update={"local_retention_s": 60}))
    try:
        assert uid in (await cleanup(ctx)).evicted  # (with what was derived from it, if any)
    finally:
        await ctx.db.dispose()
        await ctx.cloud.close()
    assert not settings.media_root.joinpath(uid[:2], uid).exists()


async def test_an_evicted_videos_thumbnail_is_read_from_s3_with_seeks(
    make_settings: Callable[..., Settings], s3rver_bucket: S3Bucket, clip: Path
) -> None:
    server = s3rver_bucket.server
    async with counting_proxy(server.port) as proxy:
        settings = make_settings(
            cloud_backend="s3",
            s3_endpoint_url=proxy.endpoint,
            s3_bucket=s3rver_bucket.name,
            s3_access_key_id=server.access_key,
            s3_secret_access_key=server.secret_key,
            transcode=False,
        )
        async with fresh_client(settings) as client:
            meta = await probed(client, (await upload_file(client, clip))["uid"])
            url = f"/api/v1/files/{meta['uid']}/thumbnail"
            params = {"time": SEEK_S, "width": 320}
            local = await client.get(url, params=params)
            assert local.status_code == 200, local.text
            await evict(settings, meta["uid"])
            cached = settings.media_root / ".thumbnails" / meta["uid"] / "25000-320.jpg"
            cached.unlink()  # so it is rendered again, now from the bucket
            proxy.reset()
            remote = await client.get(url, params=params)
            assert remote.status_code == 200, remote.text
            assert remote.content == local.content  # the same frame, the same bytes
            assert remote.headers["etag"] == local.headers["etag"]
            assert cached.read_bytes() == remote.content
            # ffmpeg read the index at the start, then seeked: a Range request from the frames
            # around 25 s (of 30), instead of reading its way through the file.
            assert proxy.range_starts[0] == 0, proxy.range_starts
            assert any(start > meta["size"] * 0.7 for start in proxy.range_starts), (
                proxy.range_starts,
                meta["size"],
            )

            # The store unreachable: a thumbnail not cached is a 503, a cached one is served.
            await proxy.close()
            down = await client.get(url, params={"time": 3, "width": 320})
            assert "cloud" in assert_problem(down, 503)["detail"]
            assert (await client.get(url, params=params)).content == local.content


async def test_an_evicted_videos_thumbnail_is_read_from_the_bucket_directory(
    settings: Settings, client: httpx.AsyncClient, clip: Path
) -> None:
    meta = await probed(client, (await upload_file(client, clip))["uid"])
    await evict(settings, meta["uid"])
    response = await client.get(
        f"/api/v1/files/{meta['uid']}/thumbnail", params={"time": SEEK_S, "width": 64}
    )
    assert response.status_code == 200, response.text
    assert response.content.startswith(b"\xff\xd8")


async def test_a_file_not_yet_in_the_cloud_and_not_here_is_a_503(
    settings: Settings, client: httpx.AsyncClient, clip: Path
) -> None:
    meta = await probed(client, (await upload_file(client, clip))["uid"])

    async def uploaded() -> bool:  # the push is done: it will not change the row again
        return (await row(settings, meta["uid"])).cloud_status == "uploaded"

    await wait_for(uploaded, timeout_s=60)
    settings.media_root.joinpath(meta["uid"][:2], meta["uid"]).unlink()  # another node's file
    await age_rows(settings, cloud_status="pending")
    response = await client.get(f"/api/v1/files/{meta['uid']}/thumbnail", params={"time": 1})
    assert "not yet in the cloud" in assert_problem(response, 503)["detail"]


# --- the cache's bounds ---------------------------------------------------------------------------


def cached_names(settings: Settings, uid: str) -> set[str]:
    return {p.name for p in (settings.media_root / ".thumbnails" / uid).iterdir()}


async def test_the_cache_keeps_the_most_recently_used_thumbnails_of_a_file(
    make_settings: Callable[..., Settings], clip: Path
) -> None:
    settings = make_settings(thumbnail_cache_per_file=3, transcode=False)
    async with fresh_client(settings) as client:
        meta = await probed(client, (await upload_file(client, clip))["uid"])
        url = f"/api/v1/files/{meta['uid']}/thumbnail"

        async def thumbnail(time_s: float) -> bytes:
            response = await client.get(url, params={"time": time_s, "width": 64})
            assert response.status_code == 200, response.text
            return response.content

        first = await thumbnail(0)
        await thumbnail(5)
        await thumbnail(10)
        assert cached_names(settings, meta["uid"]) == {"0-64.jpg", "5000-64.jpg", "10000-64.jpg"}
        assert await thumbnail(0) == first  # a hit: now the most recently used
        await thumbnail(15)
        # 5 s was the least recently used: it went; never more than 3 per file.
        assert cached_names(settings, meta["uid"]) == {"0-64.jpg", "10000-64.jpg", "15000-64.jpg"}
        assert await thumbnail(5)  # rendered again on request
        assert cached_names(settings, meta["uid"]) == {"0-64.jpg", "5000-64.jpg", "15000-64.jpg"}


async def test_expiry_and_the_audit_remove_a_files_thumbnails(
    make_settings: Callable[..., Settings], clip: Path
) -> None:
    settings = make_settings(transcode=False)  # no storyboard sheet: one file, one purge
    async with fresh_client(settings) as client:
        await expire_and_audit(settings, client, clip)


async def expire_and_audit(settings: Settings, client: httpx.AsyncClient, clip: Path) -> None:
    meta = await probed(client, (await upload_file(client, clip))["uid"])
    response = await client.get(f"/api/v1/files/{meta['uid']}/thumbnail", params={"time": 1})
    assert response.status_code == 200, response.text
    thumbnails = settings.media_root / ".thumbnails"
    assert (thumbnails / meta["uid"]).is_dir()
    await age_rows(settings, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    ctx = JobContext.build(settings.model_copy(update={"orphan_grace_s": 1}))
    try:
        assert (await cleanup(ctx)).purged == [meta["uid"]]
        assert not (thumbnails / meta["uid"]).exists()
        # A render that finished after the purge wrote into the cache again: the audit of the
        # volume removes it once left alone for the grace period, and nothing of a live file.
        late = thumbnails / meta["uid"] / "1000-320.jpg"
        late.parent.mkdir()
        late.write_bytes(response.content)
        live = (await probed(client, (await upload_file(client, clip))["uid"]))["uid"]
        assert (await client.get(f"/api/v1/files/{live}/thumbnail")).status_code == 200
        old = time.time() - 60
        for directory in (late.parent, thumbnails / live):
            os.utime(directory, (old, old))
        await cleanup(ctx)
        assert not late.parent.exists()
        assert (thumbnails / live / "0-320.jpg").is_file()
    finally:
        await ctx.db.dispose()
        await ctx.cloud.close()


async def test_a_thumbnail_pruned_by_another_request_is_still_served(
    make_settings: Callable[..., Settings], clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One entry per file: each request's render prunes the other's entry. A request that found
    (or stored) its entry is held there, in its worker thread, until another request has pruned
    it; it then hashes and serves what it opened, as before the prune."""
    settings = make_settings(thumbnail_cache_per_file=1, transcode=False)
    reached, release = threading.Event(), threading.Event()
    held = {"hit": "0-64.jpg", "store": "20000-64.jpg"}
    originals = {name: getattr(ThumbnailCache, name) for name in held}

    def holding(name: str) -> Callable[..., int | None]:
        def held_call(cache: ThumbnailCache, *args: Path) -> int | None:
            fd: int | None = originals[name](cache, *args)
            if args[-1].name == held[name] and not release.is_set():
                reached.set()
                release.wait(timeout=60)
            return fd

        return held_call

    for name in held:
        monkeypatch.setattr(ThumbnailCache, name, holding(name))
    async with fresh_client(settings) as client:
        meta = await probed(client, (await upload_file(client, clip))["uid"])
        url = f"/api/v1/files/{meta['uid']}/thumbnail"

        async def thumbnail(time_s: float) -> httpx.Response:
            response = await client.get(url, params={"time": time_s, "width": 64})
            assert response.status_code == 200, response.text
            assert response.headers["etag"] == f'"{hashlib.sha256(response.content).hexdigest()}"'
            return response

        release.set()
        first = await thumbnail(0)
        for time_s, held_at, other_s in ((0, "a hit", 10), (20, "a store", 5)):
            reached.clear()
            release.clear()
            waiting = asyncio.ensure_future(thumbnail(time_s))
            await anyio.to_thread.run_sync(reached.wait, 60)  # holding its entry: held_at
            other = await thumbnail(other_s)  # renders, and prunes the entry held
            assert cached_names(settings, meta["uid"]) == {f"{other_s * 1000}-64.jpg"}, held_at
            release.set()
            response = await waiting
            if time_s == 0:
                assert response.content == first.content, held_at
            assert response.content != other.content, held_at
            assert response.content.startswith(b"\xff\xd8"), held_at


async def test_a_purge_during_a_render_answers_as_for_a_gone_file(
    make_settings: Callable[..., Settings], clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file expires and is purged (its cache directory with it) while ffmpeg renders; the
    render's output is then gone: a 410 as for any expired file, not a 500."""
    settings = make_settings(transcode=False)

    async def purged_meanwhile(*args: Any, **kwargs: Any) -> str | None:
        reason = await render_frame(*args, **kwargs)
        await age_rows(settings, expires_at=datetime.now(UTC) - timedelta(seconds=1))
        ctx = JobContext.build(settings)
        try:
            assert (await cleanup(ctx)).purged == [uid]
        finally:
            await ctx.db.dispose()
            await ctx.cloud.close()
        return reason

    async with fresh_client(settings) as client:
        uid = (await probed(client, (await upload_file(client, clip))["uid"]))["uid"]
        monkeypatch.setattr(processing, "render_frame", purged_meanwhile)
        response = await client.get(f"/api/v1/files/{uid}/thumbnail", params={"time": 1})
        assert "expired" in assert_problem(response, 410)["detail"]
        assert not (settings.media_root / ".thumbnails" / uid).exists()


# --- the cloud copy's URL over https --------------------------------------------------------------


def test_an_https_url_is_read_with_the_certificate_checked() -> None:
    """The command built for an https URL checks the server's certificate against the system's
    CA bundle (ffmpeg's tls_verify defaults to 0). A unit test of the command: the tests' S3
    servers speak plain http on loopback (below, a real TLS server shows ffmpeg refusing)."""
    ca_file = ssl.get_default_verify_paths().cafile
    assert ca_file and os.path.isfile(ca_file)
    source = MediaInput.of_url("https://bucket.example/clip.mp4?X-Amz-Signature=abc")
    argv = preview_command(MediaConfig(), source, Path("/tmp/out.jpg"), seek_s=1.0)
    options = argv[: argv.index("-i")]
    assert options[options.index("-tls_verify") + 1] == "1"
    assert options[options.index("-ca_file") + 1] == ca_file
    assert source.protocols == "https,tls,tcp"
    # http (the loopback test servers) has no TLS options: ffmpeg would refuse them.
    plain = MediaInput.of_url("http://127.0.0.1:9000/clip.mp4")
    argv = preview_command(MediaConfig(), plain, Path("/tmp/out.jpg"), seek_s=1.0)
    assert "-tls_verify" not in argv and "-ca_file" not in argv


async def test_ffmpeg_refuses_a_server_whose_certificate_it_cannot_verify(
    clip: Path, tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = functools.partial(QuietHandler, directory=str(clip.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/{clip.name}"
        checked = MediaInput.of_url(url)
        reason = await render_frame(MediaConfig(), checked, tmp_path / "checked.jpg", 0.0, 64)
        assert reason is not None  # a self-signed certificate: no bytes read
        assert not (tmp_path / "checked.jpg").exists()
        # The same server read without the check (ffmpeg's default): it serves the clip.
        unchecked = MediaInput(url, checked.protocols, checked.label)
        assert await render_frame(MediaConfig(), unchecked, tmp_path / "plain.jpg", 0.0, 64) is None
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass
