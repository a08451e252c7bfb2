"""Faststart remux: the same streams (``-c copy``, no re-encode) with the moov atom first."""

from __future__ import annotations

from pathlib import Path

from mediasvc.media.config import MediaConfig
from mediasvc.media.probe import ISO_BMFF_FORMAT
from mediasvc.media.tools import ToolError, run_media_tool


class RemuxFailed(Exception):
    pass


def remux_command(config: MediaConfig, source: Path, target: Path, *, muxer: str) -> list[str]:
    return [
        config.ffmpeg_path,
        "-v", "error", "-hide_banner", "-nostdin", "-y",
        "-format_whitelist", ISO_BMFF_FORMAT,
        "-protocol_whitelist", "file",
        "-i", f"file:{source}",
        # Video, audio and subtitles as they are; data tracks (timecodes, …) may not fit mp4.
        "-map", "0:v?", "-map", "0:a?", "-map", "0:s?",
        "-c", "copy",
        "-map_metadata", "0",
        "-movflags", "+faststart",
        "-f", muxer,
        f"file:{target}",
    ]  # fmt: skip


def muxer_for(media_type: str, extension: str | None) -> str:
    """QuickTime files stay QuickTime; everything else of the family is written as MP4."""
    if extension in ("mov", "qt") or media_type.startswith("video/quicktime"):
        return "mov"
    return "mp4"


async def remux_faststart(
    config: MediaConfig, source: Path, target: Path, *, media_type: str, extension: str | None
) -> None:
    """Write ``target``: ``source`` with its moov atom first. ``RemuxFailed`` if ffmpeg fails."""
    muxer = muxer_for(media_type, extension)
    try:
        command = remux_command(config, source, target, muxer=muxer)
        result = await run_media_tool(config, command, timeout_s=config.remux_timeout_s)
    except ToolError as exc:
        raise RemuxFailed(str(exc)) from exc
    if result.returncode != 0:
        raise RemuxFailed(result.reason(hide={source: "file", target: "the copy"}))
