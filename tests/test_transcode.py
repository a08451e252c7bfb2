"""transcode_media: the playability decision, the browser rendition, the storyboard, the job's
bounds (concurrency, deletion mid-run, a killed worker) and its failures.

Media is made at test time by ffmpeg (a second or two each, tiny pictures): HEVC in Matroska
with a SubRip track, MPEG-2 in MPEG-TS, ProRes in MOV, VP9/Opus in WebM, H.264 MP4 without
faststart, MP3, FLAC and AIFF audio, a rotated clip with odd dimensions, 10-bit H.264, and a
variable-frame-rate clip. Jobs run on the app's in-process queue, or on a real arq worker
(`mediasvc worker`) on Redis.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from mediasvc.config import Settings
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import Kind
from mediasvc.jobs.reconcile import reconcile
from tests.conftest import flushed_redis, leftovers, stop_process
from tests.helpers import (
    age_rows,
    assert_problem,
    db_rows,
    events_about,
    fresh_client,
    part_files,
    probed,
    random_bytes,
    upload_bytes,
    upload_file,
    wait_for,
    wait_until,
)
from tests.mediafiles import MediaFiles, ffmpeg, ffprobe_json, picture_size

pytestmark = pytest.mark.timeout(240)

REDIS_URL = os.environ.get("MEDIASVC_TEST_PROBE_REDIS", "redis://127.0.0.1:6379/11")
DURATION_TOLERANCE_S = 0.1
HEVC = ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error"]


@dataclass(frozen=True)
class Clips:
    hevc_mkv: Path
    mpeg2_ts: Path
    prores_mov: Path
    vp9_webm: Path
    tone_mp3: Path
    tone_aiff: Path
    portrait_mov: Path
    ten_bit_mp4: Path
    vfr_mkv: Path
    long_mkv: Path  # a few seconds more, for the runs that must still be going when acted on


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    root = tmp_path_factory.mktemp("transcode-media")
    video = ["-f", "lavfi", "-i", "testsrc2=size=192x108:rate=25:duration=2"]
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=2"]
    subs = root / "subs.srt"
    subs.write_text(
        "1\n00:00:00,000 --> 00:00:01,000\nHello\n\n2\n00:00:01,000 --> 00:00:02,000\nWorld\n"
    )
    clips = Clips(
        hevc_mkv=root / "phone clip.mkv",
        mpeg2_ts=root / "broadcast.ts",
        prores_mov=root / "master.mov",
        vp9_webm=root / "web.webm",
        tone_mp3=root / "tone.mp3",
        tone_aiff=root / "tone.aiff",
        portrait_mov=root / "portrait.mov",
        ten_bit_mp4=root / "ten-bit.mp4",
        vfr_mkv=root / "vfr.mkv",
        long_mkv=root / "long.mkv",
    )
    ffmpeg(*video, *tone, "-i", str(subs), "-map", "0", "-map", "1", "-map", "2", *HEVC,
           "-c:a", "aac", "-c:s", "srt", str(clips.hevc_mkv))  # fmt: skip
    ffmpeg(*video, *tone, "-c:v", "mpeg2video", "-c:a", "mp2", "-f", "mpegts", str(clips.mpeg2_ts))
    ffmpeg(*video, *tone, "-c:v", "prores_ks", "-profile:v", "0", "-c:a", "pcm_s16le",
           str(clips.prores_mov))  # fmt: skip
    ffmpeg(*video, *tone, "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
           "-c:a", "libopus", str(clips.vp9_webm))  # fmt: skip
    ffmpeg(*tone, "-c:a", "libmp3lame", str(clips.tone_mp3))
    ffmpeg(*tone, "-c:a", "pcm_s16be", str(clips.tone_aiff))
    # Odd dimensions, MPEG-4 Part 2, then a display matrix of 90° (a phone held upright).
    odd = root / "odd.mov"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=175x99:rate=25:duration=2", *tone,
           "-c:v", "mpeg4", "-c:a", "aac", str(odd))  # fmt: skip
    ffmpeg("-i", str(odd), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(clips.portrait_mov))
    ffmpeg(*video, *tone, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
           "-c:a", "aac", "-movflags", "+faststart", str(clips.ten_bit_mp4))  # fmt: skip
    # Frames at uneven times (a pause of 0.3 s after frame 20): variable frame rate.
    ffmpeg(*video, "-vf", "setpts='N/25/TB+if(gt(N,20),0.3/TB,0)'", "-fps_mode", "vfr",
           "-c:v", "mpeg4", str(clips.vfr_mkv))  # fmt: skip
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=12", *HEVC,
           str(clips.long_mkv))  # fmt: skip
    return clips


async def processed(client: httpx.AsyncClient, uid: str, timeout_s: float = 120) -> dict[str, Any]:
    """The metadata once the transcode is no longer pending or running (polled, bounded)."""
    deadline = time.monotonic() + timeout_s
    meta = await probed(client, uid)
    while meta["processing"] is not None and meta["processing"]["state"] in ("pending", "running"):
        assert time.monotonic() < deadline, f"still processing: {meta['processing']}"
        await asyncio.sleep(0.1)
        meta = (await client.get(f"/api/v1/files/{uid}/metadata")).json()
    return meta


def assert_browser_mp4(path: Path, *, audio: bool = True, profile: str = "High") -> dict[str, Any]:
    """ffprobe reads it as H.264 (High: encoded by us) yuv420p (+ AAC) in MP4, moov first."""
    document = ffprobe_json(path)
    streams = {s["codec_type"]: s for s in reversed(document["streams"])}
    assert streams["video"]["codec_name"] == "h264"
    assert streams["video"]["profile"] == profile
    assert streams["video"]["pix_fmt"] == "yuv420p"
    assert streams["video"]["width"] % 2 == 0 and streams["video"]["height"] % 2 == 0
    if audio:
        assert streams["audio"]["codec_name"] == "aac"
    assert "mp4" in document["format"]["format_name"]
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")
    return document


async def rendition_of(
    client: httpx.AsyncClient, meta: dict[str, Any], tmp_path: Path
) -> tuple[dict[str, Any], Path]:
    """The playback rendition's entry, and its bytes downloaded by its own UID."""
    [entry] = [r for r in meta["renditions"] if r["role"] == "playback"]
    response = await client.get(f"/api/v1/files/{entry['uid']}")
    assert response.status_code == 200
    path = tmp_path / f"{entry['uid']}.{entry['format'].split('/')[1]}"
    path.write_bytes(response.content)
    derived = (await client.get(f"/api/v1/files/{entry['uid']}/metadata")).json()
    assert derived["derived_from"] == meta["uid"]
    assert derived["processing"] is None  # a product is not processed again
    return entry, path


def assert_same_duration(meta: dict[str, Any], entry: dict[str, Any]) -> None:
    source, made = meta["media"]["duration_s"], entry["duration_s"]
    assert abs(source - made) <= DURATION_TOLERANCE_S, (source, made)


# --- what each input gets ---------------------------------------------------------------------


async def test_hevc_in_matroska_gets_an_h264_rendition_keeping_audio_and_subtitles(
    client: httpx.AsyncClient, clips: Clips, tmp_path: Path, settings: Settings
) -> None:
    meta = await processed(client, (await upload_file(client, clips.hevc_mkv))["uid"])
    # Each product is announced about its original, with the product's own metadata.
    ready = [e for e in await events_about(settings, meta["uid"]) if e.type != "file.created"]
    products = [e.data["uid"] for e in ready if e.type == "file.rendition_ready"]
    made = [meta["renditions"][0]["uid"], meta["processing"]["storyboard"]["uid"]]
    assert sorted(products) == sorted(made), [e.type for e in ready]
    assert {e.data["derived_from"] for e in ready if e.type == "file.rendition_ready"} == {
        meta["uid"]
    }
    playback = meta["media"]["playback"]
    assert playback["plays_as_is"] is False and playback["action"] == "transcode"
    assert "HEVC" in playback["reason"]
    assert meta["processing"]["state"] == "done", meta["processing"]
    assert meta["processing"]["percent"] == 100
    assert meta["processing"]["steps"] == ["rendition", "storyboard"]
    entry, path = await rendition_of(client, meta, tmp_path)
    assert entry["kept"] == {
        "video": "encoded", "audio_tracks": 1, "subtitle_tracks": 1, "dropped": []
    }  # fmt: skip
    assert (entry["video_codec"], entry["audio_codec"], entry["faststart"]) == ("h264", "aac", True)
    assert (entry["width"], entry["height"]) == (192, 108)
    assert_same_duration(meta, entry)
    document = assert_browser_mp4(path)
    assert [s["codec_name"] for s in document["streams"]] == ["h264", "aac", "mov_text"]


@pytest.mark.parametrize(
    ("name", "action", "reason"),
    [
        ("mpeg2_ts", "transcode", "MPEG-2"),
        ("prores_mov", "transcode", "ProRes"),
        ("ten_bit_mp4", "transcode", "8-bit 4:2:0"),
        ("vfr_mkv", "transcode", "MPEG-4 Part 2"),
    ],
)
async def test_each_unplayable_video_gets_a_browser_mp4(
    client: httpx.AsyncClient,
    clips: Clips,
    tmp_path: Path,
    name: str,
    action: str,
    reason: str,
) -> None:
    meta = await processed(client, (await upload_file(client, getattr(clips, name)))["uid"])
    playback = meta["media"]["playback"]
    assert (playback["plays_as_is"], playback["action"]) == (False, action)
    assert reason in playback["reason"]
    assert meta["processing"]["state"] == "done", meta["processing"]
    entry, path = await rendition_of(client, meta, tmp_path)
    assert_same_duration(meta, entry)
    assert_browser_mp4(path, audio=name != "vfr_mkv")


async def test_a_rotated_clip_with_odd_dimensions_becomes_upright_and_even(
    client: httpx.AsyncClient, clips: Clips, tmp_path: Path
) -> None:
    meta = await processed(client, (await upload_file(client, clips.portrait_mov))["uid"])
    assert meta["media"]["streams"][0]["rotation"] == 90
    entry, path = await rendition_of(client, meta, tmp_path)
    # 175x99 turned upright is 99x175; 4:2:0 needs even sides: 98x174, no rotation left.
    assert (entry["width"], entry["height"]) == (98, 174)
    assert_browser_mp4(path)
    assert "side_data_list" not in ffprobe_json(path)["streams"][0]
    storyboard = meta["processing"]["storyboard"]
    assert storyboard["tile_height"] > storyboard["tile_width"]  # the tiles are upright too


async def test_an_mp4_without_faststart_gets_a_stream_copy(
    client: httpx.AsyncClient, media_files: MediaFiles, tmp_path: Path
) -> None:
    meta = await processed(client, (await upload_file(client, media_files.slow_mp4))["uid"])
    playback = meta["media"]["playback"]
    assert (playback["plays_as_is"], playback["action"]) == (False, "remux")
    entry, path = await rendition_of(client, meta, tmp_path)
    assert entry["kept"]["video"] == "copied"
    assert_same_duration(meta, entry)
    assert_browser_mp4(path, profile="Constrained Baseline")  # the original's, copied


@pytest.mark.parametrize("name", ["vp9_webm", "tone_mp3"])
async def test_what_plays_as_it_is_gets_no_rendition(
    client: httpx.AsyncClient, clips: Clips, name: str
) -> None:
    meta = await processed(client, (await upload_file(client, getattr(clips, name)))["uid"])
    playback = meta["media"]["playback"]
    assert playback["plays_as_is"] is True and playback["action"] == "none"
    assert "Chromium and Firefox" in playback["reason"]
    assert meta["renditions"] == []
    if name == "tone_mp3":
        assert meta["processing"] is None  # audio alone: no storyboard either
    else:
        assert meta["processing"]["steps"] == ["storyboard"]


async def test_flac_plays_as_it_is(client: httpx.AsyncClient, media_files: MediaFiles) -> None:
    meta = await processed(client, (await upload_file(client, media_files.tone_flac))["uid"])
    assert meta["media"]["playback"]["plays_as_is"] is True
    assert meta["processing"] is None and meta["renditions"] == []


async def test_audio_browsers_do_not_play_becomes_aac_in_m4a(
    client: httpx.AsyncClient, clips: Clips, tmp_path: Path
) -> None:
    meta = await processed(client, (await upload_file(client, clips.tone_aiff))["uid"])
    assert meta["media"]["playback"]["action"] == "transcode"
    entry, path = await rendition_of(client, meta, tmp_path)
    assert entry["format"] == "audio/mp4" and entry["video_codec"] is None
    document = ffprobe_json(path)
    assert [s["codec_name"] for s in document["streams"]] == ["aac"]
    assert_same_duration(meta, entry)
    assert meta["processing"]["steps"] == ["rendition"]


async def test_the_listing_shows_uploads_and_derived_files_only_when_asked(
    client: httpx.AsyncClient, clips: Clips
) -> None:
    meta = await processed(client, (await upload_file(client, clips.hevc_mkv))["uid"])
    products = {meta["renditions"][0]["uid"], meta["processing"]["storyboard"]["uid"]}

    async def listed(**params: str) -> list[str]:
        response = await client.get("/api/v1/files", params=params)
        assert response.status_code == 200, response.text
        return [item["uid"] for item in response.json()["items"]]

    assert await listed() == [meta["uid"]]
    assert await listed(kind="video") == [meta["uid"]]  # the rendition is a video too
    everything = await listed(include_derived="true")
    assert set(everything) == {meta["uid"], *products}
    # Paged with a cursor, the derived files come along too, each once.
    paged, cursor = [], None
    while True:
        params: dict[str, str | int] = {"include_derived": "true", "limit": 1}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/files", params=params)).json()
        paged += [item["uid"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert paged == everything
    # Hidden from the list, not from anyone who has the UID.
    for uid in products:
        derived = (await client.get(f"/api/v1/files/{uid}/metadata")).json()
        assert derived["derived_from"] == meta["uid"]
    assert (await client.get("/api/v1/files", params={"include_derived": "x"})).status_code == 422


# --- storyboard and thumbnails ------------------------------------------------------------------


async def test_the_storyboard_vtt_points_at_tiles_of_one_sheet(
    client: httpx.AsyncClient, clips: Clips
) -> None:
    meta = await processed(client, (await upload_file(client, clips.hevc_mkv))["uid"])
    storyboard = meta["processing"]["storyboard"]
    # 2 s (a little more with the audio's last packet) at a tile every 2 s: one tile, 16:9.
    assert (storyboard["count"], storyboard["tile_width"], storyboard["tile_height"]) == (
        1,
        160,
        90,
    )
    response = await client.get(storyboard["vtt_url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/vtt; charset=utf-8"
    sheet_url = f"http://testserver/api/v1/files/{storyboard['uid']}"
    end = f"00:00:{meta['media']['duration_s']:06.3f}"  # the last cue lasts to the end
    assert response.text == f"WEBVTT\n\n00:00:00.000 --> {end}\n{sheet_url}#xywh=0,0,160,90\n"
    again = await client.get(
        storyboard["vtt_url"], headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304
    sheet = await client.get(sheet_url)
    assert sheet.status_code == 200 and sheet.content.startswith(b"\xff\xd8")


async def test_a_long_video_gets_tiles_at_a_wider_interval_in_a_grid(
    make_settings: Callable[..., Settings], clips: Clips, tmp_path: Path
) -> None:
    settings = make_settings(storyboard_interval_s=1.0, storyboard_max_tiles=8)
    async with fresh_client(settings) as client:
        meta = await processed(client, (await upload_file(client, clips.long_mkv))["uid"])
        storyboard = meta["processing"]["storyboard"]
        # 12 s in at most 8 tiles: one every 1.5 s, 8 columns, 160x90 each.
        assert storyboard["interval_s"] == 1.5
        assert (storyboard["count"], storyboard["columns"], storyboard["rows"]) == (8, 8, 1)
        vtt = (await client.get(storyboard["vtt_url"])).text
        assert vtt.count("#xywh=") == 8 and "#xywh=1120,0,160,90" in vtt
        assert "00:00:10.500 --> 00:00:12.000" in vtt
        sheet = tmp_path / "sheet.jpg"
        sheet.write_bytes((await client.get(f"/api/v1/files/{storyboard['uid']}")).content)
    assert picture_size(sheet) == ("mjpeg", 8 * 160, 90)


async def test_a_thumbnail_is_rendered_once_then_cached_with_a_strong_etag(
    settings: Settings, client: httpx.AsyncClient, clips: Clips, tmp_path: Path
) -> None:
    upload = await upload_file(client, clips.hevc_mkv)
    meta = await probed(client, upload["uid"])
    url = f"/api/v1/files/{meta['uid']}/thumbnail"
    first = await client.get(url, params={"time": 1.04, "width": 101})
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/jpeg"
    etag = first.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{64}"', etag)  # strong: the sha256 of these bytes
    (tmp_path / "t.jpg").write_bytes(first.content)
    assert picture_size(tmp_path / "t.jpg") == ("mjpeg", 100, 56)  # even, 16:9
    cached = settings.media_root / ".thumbnails" / meta["uid"] / "1000-100.jpg"
    assert cached.read_bytes() == first.content  # 1.04 s → 1.0 s, width 101 → 100
    before = cached.stat().st_ino  # a render would rename a new file into place
    same = await client.get(url, params={"time": 1.0, "width": 100})
    assert same.content == first.content and cached.stat().st_ino == before  # not rendered
    revalidated = await client.get(
        url, params={"time": 1.0, "width": 100}, headers={"If-None-Match": etag}
    )
    assert revalidated.status_code == 304
    # The end of the video is clamped to its last frame.
    last = await client.get(url, params={"time": meta["media"]["duration_s"]})
    assert last.status_code == 200 and last.content.startswith(b"\xff\xd8")
    # Deleting the file removes its thumbnails.
    delete = await client.delete(
        f"/api/v1/files/{meta['uid']}", headers={"X-Delete-Token": upload["delete_token"]}
    )
    assert delete.status_code == 204
    assert not cached.parent.exists()


@pytest.mark.parametrize(
    ("params", "status", "detail"),
    [
        ({"time": 99}, 422, "past the end of the video (2.0"),
        ({"time": -1}, 422, None),
        ({"time": "soon"}, 422, None),
        ({"width": 0}, 422, "from 16 to 1920 pixels"),
        ({"width": 10_000}, 422, "from 16 to 1920 pixels"),
    ],
)
async def test_bad_thumbnail_requests_are_problems(
    client: httpx.AsyncClient,
    clips: Clips,
    params: dict[str, object],
    status: int,
    detail: str | None,
) -> None:
    meta = await probed(client, (await upload_file(client, clips.mpeg2_ts))["uid"])
    response = await client.get(f"/api/v1/files/{meta['uid']}/thumbnail", params=params)
    problem = assert_problem(response, status)
    if detail is not None:
        assert detail in problem["detail"]


async def test_audio_and_other_files_have_no_thumbnails_or_storyboard(
    client: httpx.AsyncClient, clips: Clips
) -> None:
    audio = await probed(client, (await upload_file(client, clips.tone_mp3))["uid"])
    other = await probed(client, (await upload_bytes(client, b"just text", "notes.txt"))["uid"])
    for meta in (audio, other):
        for path in ("thumbnail", "storyboard.vtt"):
            problem = assert_problem(await client.get(f"/api/v1/files/{meta['uid']}/{path}"), 404)
            assert "not a video" in problem["detail"] or "no storyboard" in problem["detail"]


# --- faults -------------------------------------------------------------------------------------


async def test_a_truncated_and_a_corrupt_video_end_failed_with_a_reason(
    settings: Settings, client: httpx.AsyncClient, clips: Clips, tmp_path: Path
) -> None:
    data = clips.long_mkv.read_bytes()
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(data[: len(data) // 2])  # the header still says 12 s
    corrupt = tmp_path / "corrupt.mkv"
    corrupt.write_bytes(data[:4096] + random_bytes(len(data) - 4096, seed=16))
    for path in (truncated, corrupt):
        meta = await processed(client, (await upload_file(client, path))["uid"])
        if meta["probe_status"] == "failed":  # ffprobe already saw that nothing is readable
            assert meta["probe_error"] and meta["processing"] is None
            continue
        assert meta["processing"]["state"] == "failed", meta["processing"]
        assert meta["processing"]["error"].startswith("rendition: ")
        assert (
            "cut short or damaged" in meta["processing"]["error"]
            or "ffmpeg" in meta["processing"]["error"]
        )
        assert meta["renditions"] == []
    assert part_files(settings.media_root) == []


async def test_a_delete_mid_transcode_kills_ffmpeg_and_leaves_nothing(
    make_settings: Callable[..., Settings], clips: Clips
) -> None:
    # A slower preset, so that ffmpeg is surely still encoding when the file is deleted.
    settings = make_settings(transcode_threads=1, transcode_preset="slow")
    async with fresh_client(settings) as client:
        meta = await upload_file(client, clips.long_mkv)
        uid = meta["uid"]
        ffmpeg_pid = await wait_for_transcoding_ffmpeg(client, uid, settings.media_root)
        delete = await client.delete(
            f"/api/v1/files/{uid}", headers={"X-Delete-Token": meta["delete_token"]}
        )
        assert delete.status_code == 204
        wait_until(lambda: not pid_alive(ffmpeg_pid), "ffmpeg killed", deadline_s=30)

        async def nothing_left() -> bool:
            return leftovers(settings.media_root) == []

        await wait_for(nothing_left)
    rows = await db_rows(settings.database_url)
    assert rows == {uid: "deleted"}  # no rendition was committed


async def test_at_most_the_configured_transcodes_run_at_once(
    make_settings: Callable[..., Settings], clips: Clips
) -> None:
    settings = make_settings(transcode_concurrency=1)
    async with fresh_client(settings) as client:
        uids = [
            (await upload_file(client, path))["uid"]
            for path in (clips.hevc_mkv, clips.mpeg2_ts, clips.prores_mov)
        ]
        most_at_once, states = 0, {}
        deadline = time.monotonic() + 180
        while any(states.get(uid) not in ("done", "failed", "skipped") for uid in uids):
            assert time.monotonic() < deadline, states
            for uid in uids:
                processing = (await client.get(f"/api/v1/files/{uid}/metadata")).json()[
                    "processing"
                ]
                states[uid] = processing["state"] if processing else None
            most_at_once = max(most_at_once, list(states.values()).count("running"))
            await asyncio.sleep(0.05)
    assert set(states.values()) == {"done"}
    assert most_at_once == 1


async def test_a_sigkilled_workers_transcode_runs_again_once(
    make_settings: Callable[..., Settings], clips: Clips, tmp_path: Path
) -> None:
    async with flushed_redis(REDIS_URL) as redis_url:
        # Every job's timeout is capped at the push's: a killed worker's job runs again once
        # its lock (the longest timeout + 10 s) expires.
        settings = make_settings(redis_url=redis_url, push_timeout_s=40, transcode_threads=1)
        env = worker_env(
            settings,
            MEDIASVC_PUSH_TIMEOUT_S="40",
            MEDIASVC_TRANSCODE_THREADS="1",
            MEDIASVC_TRANSCODE_PRESET="slower",  # ~4 s quiet: still encoding when killed
        )
        async with fresh_client(settings) as client:
            meta = await upload_file(client, clips.long_mkv)
            uid = meta["uid"]
            first = start_worker(env, tmp_path / "worker-1.log")
            try:
                ffmpeg_pid = await wait_for_transcoding_ffmpeg(client, uid, settings.media_root)
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=30)
                # Its ffmpeg goes with it (parent-death signal), not left encoding for nobody.
                wait_until(lambda: not pid_alive(ffmpeg_pid), "orphan ffmpeg killed", deadline_s=30)
            finally:
                stop_process(first)
            second = start_worker(env, tmp_path / "worker-2.log")
            try:
                meta = await processed(client, uid, timeout_s=180)
            finally:
                stop_process(second)
        assert meta["processing"]["state"] == "done", meta["processing"]
        assert meta["processing"]["attempts"] == 2
        assert len(meta["renditions"]) == 1


async def test_a_worker_process_runs_at_most_its_configured_transcodes_at_once(
    make_settings: Callable[..., Settings], clips: Clips, tmp_path: Path
) -> None:
    async with flushed_redis(REDIS_URL) as redis_url:
        settings = make_settings(redis_url=redis_url)
        env = worker_env(
            settings,
            MEDIASVC_TRANSCODE_CONCURRENCY="2",
            MEDIASVC_TRANSCODE_THREADS="1",
            MEDIASVC_TRANSCODE_PRESET="slow",  # a few seconds each: the runs overlap
        )
        async with fresh_client(settings) as client:
            uids = [
                (await upload_file(client, clips.long_mkv, f"{n}.mkv"))["uid"] for n in range(4)
            ]
            worker = start_worker(env, tmp_path / "worker.log")
            try:
                most_running, most_ffmpegs, states = 0, 0, dict.fromkeys(uids, "")
                deadline = time.monotonic() + 200
                while any(state not in ("done", "failed", "skipped") for state in states.values()):
                    assert time.monotonic() < deadline, states
                    assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                    most_ffmpegs = max(most_ffmpegs, len(transcoding_ffmpegs(settings.media_root)))
                    for uid in uids:
                        meta = (await client.get(f"/api/v1/files/{uid}/metadata")).json()
                        states[uid] = (meta["processing"] or {}).get("state", "")
                    most_running = max(most_running, list(states.values()).count("running"))
                    await asyncio.sleep(0.05)
            finally:
                stop_process(worker)
    assert set(states.values()) == {"done"}
    # Two at once (the slots were used), never three: by the rows and by the processes.
    assert most_running == 2 and most_ffmpegs == 2, (most_running, most_ffmpegs)


# --- helpers of the tests above -----------------------------------------------------------------


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `mediasvc worker` sharing ``settings``' database, Redis and disks."""
    assert settings.redis_url is not None
    return {
        "MEDIASVC_DATABASE_URL": settings.database_url,
        "MEDIASVC_REDIS_URL": settings.redis_url,
        "MEDIASVC_MEDIA_ROOT": str(settings.media_root),
        "MEDIASVC_CLOUD_ROOT": str(settings.cloud_root),
        **extra,
    }


def transcoding_ffmpegs(media_root: Path) -> list[int]:
    """The pids of the transcodes' ffmpegs (they report ``-progress``) writing under
    ``media_root``."""
    return [pid for pid, argv in ffmpegs_writing_into(media_root) if b"-progress" in argv]


def ffmpegs_writing_into(media_root: Path) -> list[tuple[int, list[bytes]]]:
    """Each ffmpeg whose output is a part file under ``media_root``: its pid and argv."""
    incoming = str(media_root.resolve() / ".incoming").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"ffmpeg") and any(incoming in a for a in argv):
            found.append((int(entry.name), argv))
    return found


def pid_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


def ffmpeg_writing_into(media_root: Path) -> int | None:
    """The pid of an ffmpeg whose output is a part file under ``media_root``."""
    return next((pid for pid, _ in ffmpegs_writing_into(media_root)), None)


async def wait_for_transcoding_ffmpeg(client: httpx.AsyncClient, uid: str, media_root: Path) -> int:
    """Once the file's rendition is being made: the pid of its ffmpeg (polled, bounded)."""
    deadline = time.monotonic() + 120
    while True:
        processing = (await client.get(f"/api/v1/files/{uid}/metadata")).json()["processing"]
        if processing and processing["state"] == "running" and processing["step"] == "rendition":
            pid = ffmpeg_writing_into(media_root)
            if pid is not None:
                return pid
        assert processing is None or processing["state"] in ("pending", "running"), processing
        assert time.monotonic() < deadline, f"no transcode seen running: {processing}"
        await asyncio.sleep(0.02)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m mediasvc worker`` with ``env``, its output in ``log``."""
    full_env = {**os.environ, **env}
    full_env.pop("GLIBC_TUNABLES", None)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mediasvc", "worker"], env=full_env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


async def test_the_reconciler_enqueues_a_transcode_left_pending_or_running(
    settings: Settings, client: httpx.AsyncClient, clips: Clips
) -> None:
    meta = await processed(client, (await upload_file(client, clips.vp9_webm))["uid"])
    assert meta["processing"]["state"] == "done"
    asked: list[tuple[Kind, str]] = []

    async def enqueue(kind: Kind, uid: str) -> bool:
        asked.append((kind, uid))
        return True

    ctx = JobContext.build(settings)
    try:
        for state in ("pending", "running"):
            await age_rows(
                settings,
                processing_state=state,
                processing_updated_at=datetime.now(UTC) - timedelta(hours=1),
            )
            asked.clear()
            await reconcile(ctx, enqueue)
            assert (Kind.TRANSCODE, meta["uid"]) in asked
        await age_rows(
            settings, processing_state="running", processing_updated_at=datetime.now(UTC)
        )
        asked.clear()
        await reconcile(ctx, enqueue)  # a run that wrote its progress a moment ago is left alone
        assert (Kind.TRANSCODE, meta["uid"]) not in asked
    finally:
        await ctx.db.dispose()
        await ctx.cloud.close()
