"""What the media tools need to know: binaries, bounds and timeouts. Built from Settings once,
in ``JobContext.build`` (jobs/context.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mediasvc.config import Settings


def threads_beside_the_api() -> int:
    """Every core this process may run on but one, at least one. A transcode with as many
    threads as cores doubled the API's p99 latency on two cores, at nice 10 as at 19 (the
    processing bench: 2.56 × and 2.40 × idle); one core left free kept it at 1.6 ×."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaConfig:
    ffprobe_path: str = "ffprobe"
    ffmpeg_path: str = "ffmpeg"
    probe_timeout_s: float = 30.0  # ffprobe, and ffmpeg rendering one preview
    probe_max_pixels: int = 16384 * 16384  # larger pictures are decompression bombs
    tool_max_memory_bytes: int = 2 * 1024**3  # address space of each tool; 0 = no limit
    preview_max_size_px: int = 640  # previews fit in a square of this many pixels
    remux_timeout_s: float = 3600.0  # ffmpeg copying one file
    # transcodes (renditions, storyboards, HLS): bounded threads, niceness and wall time
    transcode_threads: int = field(default_factory=threads_beside_the_api)
    transcode_nice: int = 10
    transcode_preset: str = "veryfast"
    transcode_crf: int = 23
    transcode_timeout_base_s: float = 120.0
    transcode_timeout_per_media_s: float = 8.0
    hls_ladder: str = ""  # heights, "360,720"
    storyboard_interval_s: float = 2.0
    storyboard_max_tiles: int = 100
    storyboard_tile_width: int = 160
    thumbnail_max_width: int = 1920

    def transcode_timeout_s(self, duration_s: float | None) -> float:
        """Wall time of one ffmpeg run over a file of ``duration_s`` (unknown: an hour's)."""
        media_s = duration_s if duration_s is not None else 3600.0
        return self.transcode_timeout_base_s + self.transcode_timeout_per_media_s * media_s

    @property
    def ladder(self) -> tuple[int, ...]:
        return tuple(sorted({int(h) for h in self.hls_ladder.split(",") if h}))

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaConfig:
        """Each field from the setting of the same name, or of the name in ``SETTING_NAMES``."""
        names = {field.name: SETTING_NAMES.get(field.name, field.name) for field in fields(cls)}
        return cls(**{field: getattr(settings, name) for field, name in names.items()})


# Fields whose setting has another name.
SETTING_NAMES = {"tool_max_memory_bytes": "media_tool_max_memory_bytes"}
