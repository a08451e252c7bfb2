"""What the media tools need to know: binaries, bounds and timeouts. Built from Settings once,
in ``JobContext.build`` (jobs/context.py)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mediasvc.config import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaConfig:
    ffprobe_path: str = "ffprobe"
    ffmpeg_path: str = "ffmpeg"
    probe_timeout_s: float = 30.0  # ffprobe, and ffmpeg rendering one preview
    probe_max_pixels: int = 16384 * 16384  # larger pictures are decompression bombs
    tool_max_memory_bytes: int = 2 * 1024**3  # address space of each tool; 0 = no limit
    preview_max_size_px: int = 640  # previews fit in a square of this many pixels
    remux_timeout_s: float = 3600.0  # ffmpeg copying one file

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaConfig:
        """Each field from the setting of the same name, or of the name in ``SETTING_NAMES``."""
        names = {field.name: SETTING_NAMES.get(field.name, field.name) for field in fields(cls)}
        return cls(**{field: getattr(settings, name) for field, name in names.items()})


# Fields whose setting has another name.
SETTING_NAMES = {"tool_max_memory_bytes": "media_tool_max_memory_bytes"}
