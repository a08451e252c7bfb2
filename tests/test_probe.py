"""probe_media: media facts, faststart detection and remux, hostile files, bounded cost.

Media is made at test time by ffmpeg (tests/mediafiles.py) and the committed tests/data/sample.mp4.
Jobs run through the real paths: the in-process queue of the app, or a real arq worker on
Redis (database 11, so as not to clash with tests/test_jobs.py on 13).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool

from mediasvc.config import Settings
from mediasvc.db.migrations import alembic_config, upgrade
from mediasvc.db.models import CloudStatus, FileRecord, ProbeStatus
from mediasvc.ids import hash_token, new_uid
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.probe import probe_file
from mediasvc.jobs.reconcile import find_stuck_probes
from mediasvc.jobs.worker import reconcile_job
from mediasvc.media.atoms import read_layout
from mediasvc.media.config import MediaConfig
from mediasvc.media.probe import ProbeFailed, ffprobe_command, parse
from tests.conftest import PG_SERVER, _pg_admin, flushed_redis
from tests.helpers import (
    DEAD_REDIS_URL,
    age_rows,
    probed,
    row,
    run_worker,
    started,
    stopped,
    upload_bytes,
    upload_file,
    wait_for,
)
from tests.mediafiles import (
    SAMPLE_MP4,
    GiB,
    MediaFiles,
    ffprobe_json,
    png_with_declared_size,
    write_huge_mdat_mp4,
)

pytestmark = pytest.mark.timeout(180)

REDIS_URL = os.environ.get("MEDIASVC_TEST_PROBE_REDIS", "redis://127.0.0.1:6379/11")


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A Redis database of the probe tests' own (not conftest's), empty before and after."""
    async with flushed_redis(REDIS_URL) as url:
        yield url


# --- facts of real media ------------------------------------------------------------------------


async def test_sample_mp4_probe_values(client: httpx.AsyncClient) -> None:
    upload = await upload_file(client, SAMPLE_MP4)
    assert upload["probe_status"] == "pending" and upload["media"] is None
    meta = await probed(client, upload["uid"])
    assert meta["probe_status"] == "done", meta
    media = meta["media"]
    assert media["kind"] == "video"
    assert "mp4" in media["container"].split(",")
    assert media["duration_s"] == pytest.approx(20.0, abs=0.05)
    assert (media["width"], media["height"]) == (640, 360)
    assert media["faststart"] is True
    assert 200_000 < media["bit_rate"] < 1_000_000  # ~0.9 MB over 20 s
    video, audio = media["streams"]
    assert video == {
        "index": 0,
        "kind": "video",
        "codec": "h264",
        "width": 640,
        "height": 360,
        "frame_rate": 25.0,
        "sample_rate": None,
        "channels": None,
        "attached_pic": False,
        "pix_fmt": "yuv420p",
        "profile": "Constrained Baseline",
        "rotation": 0,
    }
    assert audio["kind"] == "audio" and audio["codec"] == "aac"
    assert audio["sample_rate"] == 44100 and audio["channels"] == 1
    assert meta["preview_url"] == f"http://testserver/api/v1/files/{upload['uid']}/preview"
    assert meta["probe_error"] is None


async def test_non_faststart_mp4_is_detected(
    client: httpx.AsyncClient, media_files: MediaFiles
) -> None:
    meta = await probed(client, (await upload_file(client, media_files.slow_mp4))["uid"])
    media = meta["media"]
    assert meta["probe_status"] == "done" and media["faststart"] is False
    assert media["duration_s"] == pytest.approx(4.0, abs=0.1)
    assert [(s["kind"], s["codec"]) for s in media["streams"]] == [
        ("video", "h264"),
        ("audio", "aac"),
    ]
    assert media["streams"][1]["channels"] == 2
    assert meta["faststart_uid"] is None  # remux_faststart is off by default


async def test_image_facts(client: httpx.AsyncClient, media_files: MediaFiles) -> None:
    meta = await probed(client, (await upload_file(client, media_files.photo_jpg))["uid"])
    media = meta["media"]
    assert meta["format"] == "image/jpeg"
    assert media["kind"] == "image" and media["container"] == "jpeg_pipe"
    assert (media["width"], media["height"]) == (1280, 720)
    assert media["duration_s"] is None and media["faststart"] is None
    assert media["streams"][0]["codec"] == "mjpeg"


async def test_audio_facts(client: httpx.AsyncClient, media_files: MediaFiles) -> None:
    meta = await probed(client, (await upload_file(client, media_files.tone_flac))["uid"])
    media = meta["media"]
    assert media["kind"] == "audio" and media["container"] == "flac"
    assert media["duration_s"] == pytest.approx(3.0, abs=0.05)
    assert media["width"] is None and media["height"] is None
    (stream,) = media["streams"]
    assert stream["codec"] == "flac"
    assert stream["sample_rate"] == 48000 and stream["channels"] == 2
    assert meta["preview_url"] is None  # nothing to show


async def test_a_file_that_is_not_media_is_done_with_null_media(
    client: httpx.AsyncClient,
) -> None:
    meta = await probed(client, (await upload_bytes(client, b"just notes\n" * 100, "a.txt"))["uid"])
    assert meta["probe_status"] == "done"
    assert meta["media"] is None and meta["probe_error"] is None


async def test_random_bytes_without_a_media_name_are_not_media(client: httpx.AsyncClient) -> None:
    meta = await probed(client, (await upload_bytes(client, os.urandom(64 * 1024), "blob"))["uid"])
    assert meta["probe_status"] == "done" and meta["media"] is None


async def test_a_playlist_pointing_at_a_local_file_is_not_followed(
    client: httpx.AsyncClient,
) -> None:
    # Without -format_whitelist, ffprobe's hls demuxer would open sample.mp4 and report a video.
    playlist = (
        f"#EXTM3U\n#EXT-X-TARGETDURATION:20\n#EXTINF:20,\nfile:{SAMPLE_MP4}\n#EXT-X-ENDLIST\n"
    ).encode()
    meta = await probed(client, (await upload_bytes(client, playlist, "list.m3u8"))["uid"])
    assert meta["probe_status"] == "done" and meta["media"] is None


async def test_list_filters_by_kind(client: httpx.AsyncClient, media_files: MediaFiles) -> None:
    video = (await upload_file(client, media_files.slow_mp4))["uid"]
    image = (await upload_file(client, media_files.photo_jpg))["uid"]
    audio = await upload_file(client, media_files.tone_flac, **{"Content-Type": "audio/flac"})
    other = (await upload_bytes(client, b"plain words", "notes.txt"))["uid"]

    async def kinds(kind: str) -> list[str]:
        response = await client.get("/api/v1/files", params={"kind": kind})
        assert response.status_code == 200
        return [item["uid"] for item in response.json()["items"]]

    assert await kinds("video") == [video]
    assert await kinds("image") == [image]
    assert await kinds("audio") == [audio["uid"]]
    assert await kinds("other") == [other]
    assert (await client.get("/api/v1/files", params={"kind": "movie"})).status_code == 422


# --- faststart remux ----------------------------------------------------------------------------


def framemd5(path: Path) -> list[str]:
    """Per-packet checksums of every stream, copied (not decoded): equal iff same packets."""
    result = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0", "-c", "copy",
         "-f", "framemd5", "-"],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    return [line for line in result.stdout.splitlines() if not line.startswith("#")]


async def test_remux_makes_a_faststart_copy_with_its_own_uid(
    make_settings: Callable[..., Settings], media_files: MediaFiles
) -> None:
    settings = make_settings(remux_faststart=True)
    app, client = await started(settings)
    try:
        original = await upload_file(client, media_files.slow_mp4, "holiday.mp4")
        uid = original["uid"]

        async def linked() -> bool:
            return (await row(settings, uid)).faststart_uid is not None

        await wait_for(linked, timeout_s=60)
        meta = (await client.get(f"/api/v1/files/{uid}/metadata")).json()
        derived_uid = meta["faststart_uid"]
        assert derived_uid != uid and meta["media"]["faststart"] is False
        derived = await probed(client, derived_uid)
        assert derived["derived_from"] == uid
        assert derived["original_name"] == "holiday.mp4" and derived["format"] == "video/mp4"
        assert derived["probe_status"] == "done" and derived["media"]["faststart"] is True
        assert derived["media"]["duration_s"] == pytest.approx(
            meta["media"]["duration_s"], abs=0.01
        )
        assert derived["media"]["streams"] == meta["media"]["streams"]

        # Its bytes: what the row says, moov first, the very same packets (no re-encode).
        path = settings.media_root / derived_uid[:2] / derived_uid
        body = path.read_bytes()
        assert (
            derived["size"] == len(body) and derived["sha256"] == hashlib.sha256(body).hexdigest()
        )
        assert read_layout(io.BytesIO(body), len(body)).faststart is True
        probe = ffprobe_json(path)
        assert float(probe["format"]["duration"]) == pytest.approx(4.0, abs=0.1)
        assert framemd5(path) == framemd5(media_files.slow_mp4)
        downloaded = await client.get(f"/api/v1/files/{derived_uid}")
        assert downloaded.status_code == 200 and downloaded.content == body

        # Pushed to the cloud like any upload.
        async def pushed() -> bool:
            return (await row(settings, derived_uid)).cloud_status == CloudStatus.UPLOADED.value

        await wait_for(pushed)

        # The original's delete token deletes both; the copy goes with the original.
        token = original["delete_token"]
        deleted = await client.delete(f"/api/v1/files/{uid}", headers={"X-Delete-Token": token})
        assert deleted.status_code == 204
        assert (await client.get(f"/api/v1/files/{derived_uid}/metadata")).status_code == 410
        assert not path.exists()
        assert (await row(settings, derived_uid)).gone_reason == "deleted"
    finally:
        await stopped(app, client)


async def test_remux_runs_on_the_arq_worker(
    make_settings: Callable[..., Settings], redis_url: str, media_files: MediaFiles
) -> None:
    settings = make_settings(redis_url=redis_url, remux_faststart=True)
    app, client = await started(settings)
    try:
        uid = (await upload_file(client, media_files.slow_mp4))["uid"]
        assert (await row(settings, uid)).probe_status == "pending"
        await run_worker(settings)  # push + probe, then the remux the probe queued, then its jobs
        original = await row(settings, uid)
        assert original.probe_status == "done" and original.faststart_uid is not None
        derived = await row(settings, original.faststart_uid)
        assert derived.derived_from == uid
        assert derived.cloud_status == "uploaded" and derived.probe_status == "done"
        assert derived.media is not None and derived.media["faststart"] is True
    finally:
        await stopped(app, client)


# --- hostile files ------------------------------------------------------------------------------


def _hostile_files(media: MediaFiles) -> dict[str, tuple[str, bytes]]:
    slow = media.slow_mp4.read_bytes()
    sample = SAMPLE_MP4.read_bytes()
    photo = media.small_png
    return {
        "truncated, moov lost": ("cut.mp4", slow[: len(slow) // 2]),
        "truncated faststart": ("cut-sample.mp4", sample[: len(sample) * 6 // 10]),
        "zero bytes": ("empty.mp4", b""),
        "random bytes named .mp4": ("random.mp4", os.urandom(256 * 1024)),
        "huge declared dimension": ("huge.png", png_with_declared_size(photo, 100_000, 100_000)),
        "over the pixel limit": ("big.png", png_with_declared_size(photo, 30_000, 30_000)),
    }


async def test_every_hostile_file_ends_failed_on_the_worker(
    make_settings: Callable[..., Settings], redis_url: str, media_files: MediaFiles
) -> None:
    settings = make_settings(redis_url=redis_url, probe_timeout_s=20)
    app, client = await started(settings)
    try:
        uids = {
            case: (await upload_bytes(client, body, name))["uid"]
            for case, (name, body) in _hostile_files(media_files).items()
        }
        good = (await upload_file(client, SAMPLE_MP4))["uid"]
        await run_worker(settings)  # one worker, every file: it must survive them all
        for case, uid in uids.items():
            record = await row(settings, uid)
            assert record.probe_status == "failed", (case, record.probe_error)
            assert record.probe_error and len(record.probe_error) <= 200, case
            assert record.media is None, case
            assert str(settings.media_root) not in record.probe_error  # no paths leak
            print(f"{case}: {record.probe_error}")
        # ... and still probes a good file afterwards.
        assert (await row(settings, good)).probe_status == "done"
        reasons = {case: (await row(settings, uid)).probe_error for case, uid in uids.items()}
        assert "truncated" in str(reasons["truncated faststart"])
        assert "empty" in str(reasons["zero bytes"])
        meta = (await client.get(f"/api/v1/files/{uids['zero bytes']}/metadata")).json()
        assert meta["probe_status"] == "failed" and meta["probe_error"] == "the file is empty"
    finally:
        await stopped(app, client)


def _fake_tool(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "fake-ffprobe"
    script.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return script


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_a_hanging_ffprobe_is_killed_with_its_children_at_the_timeout(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    hang = _fake_tool(tmp_path, f"sleep 600 & echo $! >> {pids}\necho $$ >> {pids}\nwait\n")
    settings = make_settings(redis_url=DEAD_REDIS_URL, ffprobe_path=str(hang), probe_timeout_s=1)
    app, client = await started(settings)
    try:
        uid = (await upload_file(client, SAMPLE_MP4))["uid"]
        ctx = JobContext.build(settings)
        outcome = await probe_file(ctx, uid)
        await ctx.db.dispose()
        assert outcome.status == "failed"
        record = await row(settings, uid)
        assert record.probe_error == "fake-ffprobe did not finish within 1 s"
        children = [int(pid) for pid in pids.read_text().split()]
        assert len(children) == 2

        async def reaped() -> bool:
            return not any(_alive(pid) for pid in children)

        await wait_for(reaped, timeout_s=10)
    finally:
        await stopped(app, client)


async def test_an_ffprobe_that_prints_without_end_is_cut_off(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    chatty = _fake_tool(tmp_path, "exec yes\n")
    settings = make_settings(redis_url=DEAD_REDIS_URL, ffprobe_path=str(chatty))
    app, client = await started(settings)
    try:
        uid = (await upload_file(client, SAMPLE_MP4))["uid"]
        ctx = JobContext.build(settings)
        assert (await probe_file(ctx, uid)).status == "failed"
        await ctx.db.dispose()
        assert "printed more than" in str((await row(settings, uid)).probe_error)
    finally:
        await stopped(app, client)


async def test_a_fifo_in_place_of_the_file_fails_without_blocking(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(redis_url=DEAD_REDIS_URL)
    app, client = await started(settings)
    try:
        uid = (await upload_bytes(client, b"soon a fifo", "clip.mp4"))["uid"]
        path = settings.media_root / uid[:2] / uid
        path.unlink()
        os.mkfifo(path)
        ctx = JobContext.build(settings)
        assert (await probe_file(ctx, uid)).status == "failed"
        await ctx.db.dispose()
        assert (await row(settings, uid)).probe_error == "not a regular file"
    finally:
        await stopped(app, client)


async def test_a_missing_ffprobe_skips_the_probe_with_the_reason(
    make_settings: Callable[..., Settings], media_files: MediaFiles
) -> None:
    # It used to stay pending for ever (and the reconciler ran it again and again).
    settings = make_settings(redis_url=DEAD_REDIS_URL, ffprobe_path="/nonexistent/ffprobe")
    app, client = await started(settings)
    try:
        uid = (await upload_file(client, media_files.slow_mp4))["uid"]
        ctx = JobContext.build(settings)
        assert (await probe_file(ctx, uid)).status == "skipped"
        assert (await probe_file(ctx, uid)).status == "skipped"  # and stays so
        await ctx.db.dispose()
        record = await row(settings, uid)
        assert record.probe_status == "skipped"
        assert (
            record.probe_error == "not examined: ffprobe is not installed (Debian package: ffmpeg)"
        )
        meta = (await client.get(f"/api/v1/files/{uid}/metadata")).json()
        assert meta["probe_status"] == "skipped" and "ffprobe" in meta["probe_error"]
    finally:
        await stopped(app, client)


async def test_an_evicted_file_is_skipped(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url=DEAD_REDIS_URL)
    app, client = await started(settings)
    try:
        uid = (await upload_file(client, SAMPLE_MP4))["uid"]
        await age_rows(settings, local=False)
        ctx = JobContext.build(settings)
        assert (await probe_file(ctx, uid)).status == "skipped"
        # Idempotent: the job again does nothing.
        assert (await probe_file(ctx, uid)).status == "skipped"
        await ctx.db.dispose()
    finally:
        await stopped(app, client)


# --- durability: the reconciler finds probes no job will run ------------------------------------


async def test_reconcile_enqueues_probes_left_pending(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    down = make_settings(redis_url=DEAD_REDIS_URL)
    app, client = await started(down)
    try:
        uid = (await upload_file(client, SAMPLE_MP4))["uid"]
    finally:
        await stopped(app, client)
    up = make_settings(redis_url=redis_url, reconcile_stale_after_s=60)
    ctx = JobContext.build(up)
    assert await find_stuck_probes(ctx) == []  # not stale yet
    five_minutes_ago = datetime.now(UTC) - timedelta(minutes=5)
    await age_rows(up, created_at=five_minutes_ago, cloud_updated_at=five_minutes_ago)
    assert await find_stuck_probes(ctx) == [uid]
    pool: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url))
    await reconcile_job({"mediasvc": ctx, "redis": pool})
    await pool.aclose()
    await ctx.db.dispose()
    await run_worker(up)
    record = await row(up, uid)
    assert record.probe_status == "done" and record.cloud_status == "uploaded"
    assert record.media is not None and record.media["duration_s"] == pytest.approx(20.0, abs=0.05)


# --- cost: a multi-GB file is probed by reading its headers -------------------------------------


async def _insert_local_file(settings: Settings, path: Path, name: str, media_type: str) -> str:
    """A row for a file placed straight into the store (a sparse file an upload would fill)."""
    uid = new_uid()
    target = settings.media_root / uid[:2] / uid
    target.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(path.rename, target)
    now = datetime.now(UTC)
    ctx = JobContext.build(settings)
    async with ctx.db.session() as session:
        session.add(
            FileRecord(
                uid=uid,
                original_name=name,
                extension=name.rsplit(".", 1)[-1],
                format=media_type,
                size=target.stat().st_size,
                sha256="0" * 64,  # never pushed in this test
                created_at=now,
                bytes_served=0,
                local=True,
                cloud_status=CloudStatus.PENDING.value,
                cloud_updated_at=now,
                cloud_attempts=0,
                delete_token_hash=hash_token("unused"),
                probe_status=ProbeStatus.PENDING.value,
            )
        )
        await session.commit()
    await ctx.db.dispose()
    return uid


PROBE_IN_A_CHILD = """
import asyncio, json, resource, sys
from pathlib import Path
from mediasvc.config import Settings
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.probe import probe_file

async def main():
    ctx = JobContext.build(Settings(_env_file=None))
    outcome = await probe_file(ctx, sys.argv[1])
    await ctx.db.dispose()
    await ctx.cloud.close()
    return outcome.status

status = asyncio.run(main())
hwm = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
print(json.dumps({
    "status": status,
    "job_peak_rss_bytes": int(hwm.split()[1]) * 1024,
    "tools_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
}))
"""


async def test_probing_a_4_gib_mp4_reads_headers_in_bounded_memory(
    make_settings: Callable[..., Settings], media_files: MediaFiles, tmp_path: Path
) -> None:
    settings = make_settings()
    huge = tmp_path / "huge.mp4"
    size = write_huge_mdat_mp4(media_files.slow_mp4, huge, hole_bytes=4 * GiB)
    assert size > 4 * GiB and huge.stat().st_blocks * 512 < 16 * 1024 * 1024  # sparse

    # 1. ffprobe itself, with the job's very arguments, counts what it read (AVIOContext
    #    statistics, printed at -v verbose): the boxes it needs, not the 4 GiB of mdat.
    command = ffprobe_command(MediaConfig.from_settings(settings), huge)
    command[command.index("-v") + 1] = "verbose"
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, check=True
    )
    match = re.search(r"Statistics: (\d+) bytes read, (\d+) seeks", result.stderr)
    assert match is not None, result.stderr[-2000:]
    bytes_read, seeks = int(match.group(1)), int(match.group(2))
    print(f"ffprobe read {bytes_read} bytes of {size} with {seeks} seeks")
    assert bytes_read < 4 * 1024 * 1024  # a thousandth of the file, at most
    assert json.loads(result.stdout)["format"]["duration"].startswith("4.")

    # 2. Our box walk: two reads of at most 8 bytes per top-level box.
    reads: list[int] = []

    class CountingFile(io.FileIO):
        def read(self, n: int = -1) -> bytes:
            data = super().read(n)
            reads.append(len(data))
            return data

    with CountingFile(huge, "r") as file:
        layout = read_layout(file, size)
    assert layout.types == ("ftyp", "mdat", "moov") and layout.faststart is False
    assert sum(reads) <= 32 and len(reads) == 4

    # 3. The whole job, in its own process: probe, walk, poster frame; peak RSS measured.
    uid = await _insert_local_file(settings, huge, "huge.mp4", "video/mp4")
    env = {
        **os.environ,
        "MEDIASVC_DATABASE_URL": settings.database_url,
        "MEDIASVC_MEDIA_ROOT": str(settings.media_root),
        "MEDIASVC_CLOUD_ROOT": str(settings.cloud_root),
    }
    env.pop("GLIBC_TUNABLES", None)
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", PROBE_IN_A_CHILD, uid],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"4 GiB MP4 probed: {report}")
    assert report["status"] == "done"
    assert report["job_peak_rss_bytes"] < 200 * 1024 * 1024
    assert report["tools_peak_rss_bytes"] < 150 * 1024 * 1024
    record = await row(settings, uid)
    assert record.media is not None and record.media["faststart"] is False
    assert record.preview_path is not None


# --- the schema migration ------------------------------------------------------------------------


def test_migration_0003_round_trips_on_sqlite(tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "0002")
    upgrade(url)


def test_migration_0003_round_trips_on_postgresql() -> None:
    from alembic import command

    name = f"mediasvc_migration_{new_uid()[:8]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    url = f"{PG_SERVER.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    try:
        upgrade(url)
        command.downgrade(alembic_config(url), "0002")
        upgrade(url)
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- pure parts: ffprobe's JSON, the box walk ---------------------------------------------------


def _ffprobe_output(*streams: dict[str, Any], score: int = 100) -> bytes:
    document = {
        "streams": list(streams),
        "format": {
            "format_name": "mov,mp4,m4a,3gp,3g2,mj2",
            "duration": "2.5",
            "probe_score": score,
        },
    }
    return json.dumps(document).encode()


def test_parse_refuses_a_picture_over_the_pixel_limit() -> None:
    output = _ffprobe_output({"index": 0, "codec_type": "video", "width": 20000, "height": 20000})
    with pytest.raises(ProbeFailed, match="20000x20000 is over the pixel limit"):
        parse(output, max_pixels=16384 * 16384)


def test_parse_ignores_a_low_confidence_guess() -> None:
    output = _ffprobe_output({"index": 0, "codec_type": "audio", "codec_name": "mp3"}, score=1)
    assert parse(output, max_pixels=1000) is None


def test_parse_needs_audio_or_video() -> None:
    assert parse(_ffprobe_output({"index": 0, "codec_type": "data"}), max_pixels=1000) is None


def _box(kind: bytes, payload_bytes: int) -> bytes:
    return struct.pack(">I4s", 8 + payload_bytes, kind) + b"\0" * payload_bytes


def test_box_walk_reads_64_bit_sizes_and_boxes_to_the_end() -> None:
    large_mdat = struct.pack(">I4sQ", 1, b"mdat", 16 + 4) + b"\0" * 4
    to_the_end = struct.pack(">I4s", 0, b"moov") + b"\0" * 12
    data = _box(b"ftyp", 8) + large_mdat + to_the_end
    layout = read_layout(io.BytesIO(data), len(data))
    assert layout.types == ("ftyp", "mdat", "moov") and layout.truncated_box is None
    assert layout.faststart is False


def test_box_walk_notices_a_box_cut_short() -> None:
    data = _box(b"ftyp", 8) + _box(b"moov", 16) + _box(b"mdat", 1000)[:100]
    layout = read_layout(io.BytesIO(data), len(data))
    assert layout.truncated_box == "mdat" and layout.faststart is True


def test_box_walk_stops_at_trailing_garbage_and_after_max_boxes() -> None:
    data = _box(b"ftyp", 8) + _box(b"moov", 8) + b"\x00\x00\x00\x10\x01\x02\x03\x04" + b"junk"
    assert read_layout(io.BytesIO(data), len(data)).types == ("ftyp", "moov")
    many = _box(b"free", 0) * 5000
    assert len(read_layout(io.BytesIO(many), len(many), max_boxes=100).types) == 100
