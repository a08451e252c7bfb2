"""HLS: one fMP4 file per rung of the ladder, and byte-range playlists over them.

Each rung is an H.264 High 4:2:0 + AAC encode at that height (never above the source's: the
ladder is capped, and a source shorter than every rung gets one rung at its own height), with a
keyframe every ``KEYFRAME_EVERY_S`` so that segments of ``SEGMENT_S`` start on one, written by
ffmpeg's hls muxer as a single file (``-hls_flags single_file``): its init section and every
segment are byte ranges of that one file. The file is a derived file like any (own UID, Range
delivery from disk or the cloud); the media playlist ffmpeg wrote is kept in the original's
processing document and served with its URIs pointing at that file's download URL. The master
playlist is built from the rungs' facts: RESOLUTION, CODECS, BANDWIDTH (the peak of a segment),
AVERAGE-BANDWIDTH.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediasvc.media.config import MediaConfig
from mediasvc.media.encode import input_args, run_encode

SEGMENT_S = 4
KEYFRAME_EVERY_S = 2
AUDIO_BIT_RATE = 128_000
# Video bit rate by height (H.264 High, the usual ladders); a height between two takes the next.
VIDEO_BIT_RATES = ((240, 400_000), (360, 800_000), (480, 1_400_000), (720, 2_800_000),
                   (1080, 5_000_000), (1440, 8_000_000), (2160, 14_000_000))  # fmt: skip
# Level 4.1 (1080p30) or 5.1 (above): avc1.PPCCLL with High (0x64) and no constraint flags.
AAC_LC = "mp4a.40.2"
MASTER_MEDIA_TYPE = "application/vnd.apple.mpegurl"
_BYTERANGE = re.compile(r"#EXT-X-BYTERANGE:(\d+)@(\d+)")
_EXTINF = re.compile(r"#EXTINF:([0-9.]+),")
_MAP = re.compile(r'#EXT-X-MAP:URI="[^"]*"')


def rungs(config: MediaConfig, source_height: int) -> list[int]:
    """The ladder's heights the source can fill; its own height if it is below them all."""
    heights = [h for h in config.ladder if h <= source_height]
    return heights or ([source_height - source_height % 2] if config.ladder else [])


def video_bit_rate(height: int) -> int:
    return next((rate for top, rate in VIDEO_BIT_RATES if height <= top), VIDEO_BIT_RATES[-1][1])


def avc_codec(height: int) -> str:
    return "avc1.640029" if height <= 1080 else "avc1.640033"


def hls_command(
    config: MediaConfig,
    source: Path,
    segments: Path,
    playlist: Path,
    *,
    video_index: int,
    audio_index: int | None,
    height: int,
) -> list[str]:
    rate = video_bit_rate(height)
    audio = ["-map", f"0:{audio_index}", "-c:a", "aac", "-b:a", str(AUDIO_BIT_RATE), "-ac", "2"]
    return [
        *input_args(config, source),
        "-i", f"file:{source}",
        "-map", f"0:{video_index}",
        *(audio if audio_index is not None else []),
        "-c:v", "libx264", "-preset", config.transcode_preset, "-profile:v", "high",
        "-level:v", "4.1" if height <= 1080 else "5.1",
        "-vf", f"scale=-2:{height},format=yuv420p",
        "-b:v", str(rate), "-maxrate", str(rate * 11 // 10), "-bufsize", str(rate * 2),
        "-force_key_frames", f"expr:gte(t,n_forced*{KEYFRAME_EVERY_S})", "-sc_threshold", "0",
        "-threads", str(config.transcode_threads),
        "-f", "hls", "-hls_time", str(SEGMENT_S), "-hls_playlist_type", "vod",
        "-hls_segment_type", "fmp4", "-hls_flags", "single_file",
        "-hls_segment_filename", str(segments),
        str(playlist),
    ]  # fmt: skip


async def make_variant(
    config: MediaConfig,
    source: Path,
    segments: Path,
    *,
    video_index: int,
    audio_index: int | None,
    height: int,
    duration_s: float | None,
    on_progress: Callable[[float], None],
) -> str:
    """Write the rung's fMP4 file to ``segments``; the media playlist ffmpeg wrote for it.

    The playlist goes beside the file as a part file (swept if we die) and is read back whole:
    a few lines per segment.
    """
    playlist = segments.with_name(f"{segments.name}.m3u8.part")
    try:
        await run_encode(
            config,
            hls_command(
                config, source, segments, playlist,
                video_index=video_index, audio_index=audio_index, height=height,
            ),
            duration_s=duration_s,
            on_progress=on_progress,
            hide={source: "file", segments: "the HLS file", playlist: "its playlist"},
        )  # fmt: skip
        return playlist.read_text()
    finally:
        playlist.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Bandwidth:
    peak: int  # bits per second of the densest segment
    average: int


def bandwidth(playlist: str) -> Bandwidth:
    """Peak and average bits per second of a byte-range media playlist's segments."""
    durations = [float(d) for d in _EXTINF.findall(playlist)]
    lengths = [int(length) for length, _ in _BYTERANGE.findall(playlist)]
    pairs = [(d, n) for d, n in zip(durations, lengths, strict=False) if d > 0]
    if not pairs:
        return Bandwidth(0, 0)
    peak = max(n * 8 / d for d, n in pairs)
    average = sum(n for _, n in pairs) * 8 / sum(d for d, _ in pairs)
    return Bandwidth(round(peak), round(average))


def media_playlist(stored: str, media_url: str) -> str:
    """The stored playlist with its file named by ``media_url`` (the init map and segments)."""
    lines = []
    for line in stored.splitlines():
        if line.startswith("#EXT-X-MAP:"):
            line = _MAP.sub(f'#EXT-X-MAP:URI="{media_url}"', line)
        elif line and not line.startswith("#"):
            line = media_url
        lines.append(line)
    return "\n".join(lines) + "\n"


def master_playlist(variants: list[dict[str, Any]], url_of: Callable[[int], str]) -> str:
    """The master playlist of ``variants`` (their stored facts); ``url_of(height)`` names each
    rung's media playlist."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for variant in sorted(variants, key=lambda v: v["height"]):
        lines.append(
            f"#EXT-X-STREAM-INF:BANDWIDTH={variant['bandwidth']},"
            f"AVERAGE-BANDWIDTH={variant['average_bandwidth']},"
            f'CODECS="{variant["codecs"]}",RESOLUTION={variant["width"]}x{variant["height"]}'
        )
        lines.append(url_of(variant["height"]))
    return "\n".join(lines) + "\n"
