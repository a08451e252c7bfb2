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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import (
    probed,
    upload_file,
)
from tests.mediafiles import MediaFiles, ffmpeg, ffprobe_json

pytestmark = pytest.mark.timeout(240)

REDIS_URL = os.environ.get("MEDIASVC_TEST_PROBE_REDIS", "redis://127.0.0.1:6379/11")
DURATION_TOLERANCE_S = 0.1


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
    ffmpeg(
        *video,
        *tone,
        "-i",
        str(subs),
        "-map",
        "0",
        "-map",
        "1",
        "-map",
        "2",
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        "log-level=error",
        "-c:a",
        "aac",
        "-c:s",
        "srt",
        str(clips.hevc_mkv),
    )
    ffmpeg(*video, *tone, "-c:v", "mpeg2video", "-c:a", "mp2", "-f", "mpegts", str(clips.mpeg2_ts))
    ffmpeg(
        *video,
        *tone,
        "-c:v",
        "prores_ks",
        "-profile:v",
        "0",
        "-c:a",
        "pcm_s16le",
        str(clips.prores_mov),
    )
    ffmpeg(
        *video,
        *tone,
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-c:a",
        "libopus",
        str(clips.vp9_webm),
    )
    ffmpeg(*tone, "-c:a", "libmp3lame", str(clips.tone_mp3))
    ffmpeg(*tone, "-c:a", "pcm_s16be", str(clips.tone_aiff))
    # Odd dimensions, MPEG-4 Part 2, then a display matrix of 90° (a phone held upright).
    odd = root / "odd.mov"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=175x99:rate=25:duration=2",
        *tone,
        "-c:v",
        "mpeg4",
        "-c:a",
        "aac",
        str(odd),
    )
    ffmpeg("-i", str(odd), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(clips.portrait_mov))
    ffmpeg(
        *video,
        *tone,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p10le",
        "-c:a",
        "aac",
        "-movflags",
        "+faststart",
        str(clips.ten_bit_mp4),
    )
    # Frames at uneven times (a frame repeated, then dropped): variable frame rate.
    ffmpeg(
        *video,
        "-vf",
        "setpts='N/25/TB+if(gt(N,20),0.3/TB,0)'",
        "-fps_mode",
        "vfr",
        "-c:v",
        "mpeg4",
        str(clips.vfr_mkv),
    )
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=25:duration=12",
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        "log-level=error",
        str(clips.long_mkv),
    )
    return clips  # fmt: skip


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
    client: httpx.AsyncClient, clips: Clips, tmp_path: Path
) -> None:
    meta = await processed(client, (await upload_file(client, clips.hevc_mkv))["uid"])
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
