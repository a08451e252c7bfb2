"""Storyboards: one JPEG sprite sheet of small frames at a fixed interval, and its WebVTT.

The sheet is made in one ffmpeg run that decodes keyframes only (``-skip_frame nokey``): the
``fps`` filter takes, for each tile's time, the latest keyframe at or before it (the last one
held to the end). A tile may so
show a frame up to one GOP early (a second or a few), and a file with sparse keyframes repeats
tiles, but no other frame is decoded: an hour of 1080p is read, not decoded
(benchmarks/bench/sections/processing.py measures it against a full decode: an hour of
1080p, a keyframe every 10 s, in ~2 s against ~2 min).

The interval is ``storyboard_interval_s``, widened so that the whole file fits in
``storyboard_max_tiles`` tiles, in at most ``MAX_COLUMNS`` columns: one sheet per file.
The WebVTT (``vtt``) is built from these facts on request, each cue pointing at the sheet's
download URL with a ``#xywh=`` fragment (the form video players read).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mediasvc.media.config import MediaConfig
from mediasvc.media.encode import input_args, run_encode

MAX_COLUMNS = 10
JPEG_QUALITY = 5
MIN_TILE_S = 0.1  # mjpeg qscale: 2 (best) … 31


@dataclass(frozen=True, slots=True)
class Layout:
    interval_s: float
    count: int
    columns: int
    rows: int
    tile_width: int
    tile_height: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def layout(config: MediaConfig, duration_s: float, width: int, height: int) -> Layout:
    """Tiles for a video of ``duration_s`` whose upright picture is ``width`` x ``height``."""
    interval = max(config.storyboard_interval_s, duration_s / config.storyboard_max_tiles)
    interval = math.ceil(interval * 1000) / 1000  # whole milliseconds, as the cues say
    # A tile that would start in the last moments (an audio track outlasting the picture by a
    # few packets) would show nothing new: no tile starts within MIN_TILE_S of the end.
    tiles = math.ceil((duration_s - MIN_TILE_S) / interval)
    count = max(1, min(config.storyboard_max_tiles, tiles))
    columns = min(MAX_COLUMNS, count)
    tile_width = min(config.storyboard_tile_width, width - width % 2)
    tile_height = max(2, round(tile_width * height / width / 2) * 2)
    return Layout(interval, count, columns, math.ceil(count / columns), tile_width, tile_height)


def storyboard_command(
    config: MediaConfig, source: Path, target: Path, video_index: int, tiles: Layout
) -> list[str]:
    rate = f"1000/{round(tiles.interval_s * 1000)}"
    graph = (
        # The last keyframe held for one more interval: the fps filter emits a tile for each
        # interval up to the end, not only up to the last keyframe it saw.
        f"tpad=stop_mode=clone:stop_duration={tiles.interval_s:.3f},"
        f"fps=fps={rate}:round=down,"
        f"scale={tiles.tile_width}:{tiles.tile_height}:flags=fast_bilinear,"
        f"tile={tiles.columns}x{tiles.rows}"
    )
    return [
        *input_args(config, source, threads=1),
        "-skip_frame", "nokey",  # decode keyframes only
        "-i", f"file:{source}",
        "-map", f"0:{video_index}", "-an", "-sn", "-dn",
        "-vf", graph,
        "-frames:v", "1",
        "-c:v", "mjpeg", "-q:v", str(JPEG_QUALITY), "-pix_fmt", "yuvj420p",
        "-f", "mjpeg",
        f"file:{target}",
    ]  # fmt: skip


async def make_storyboard(
    config: MediaConfig,
    source: Path,
    target: Path,
    *,
    video_index: int,
    duration_s: float,
    tiles: Layout,
    on_progress: Callable[[float], None],
) -> None:
    """Write the sprite sheet of ``source`` to ``target``; ``EncodeFailed`` if ffmpeg fails."""
    await run_encode(
        config,
        storyboard_command(config, source, target, video_index, tiles),
        duration_s=duration_s,
        on_progress=on_progress,
        hide={source: "file", target: "the storyboard"},
    )


def vtt(tiles: Layout, sheet_url: str, duration_s: float) -> str:
    """The WebVTT of a storyboard: a cue per tile, its sheet's URL with ``#xywh=``."""
    lines = ["WEBVTT", ""]
    for number in range(tiles.count):
        start = number * tiles.interval_s
        last = number == tiles.count - 1
        end = duration_s if last else min(duration_s, start + tiles.interval_s)
        if end <= start:
            break
        x = (number % tiles.columns) * tiles.tile_width
        y = (number // tiles.columns) * tiles.tile_height
        lines += [
            f"{_timestamp(start)} --> {_timestamp(end)}",
            f"{sheet_url}#xywh={x},{y},{tiles.tile_width},{tiles.tile_height}",
            "",
        ]
    return "\n".join(lines)


def _timestamp(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"
