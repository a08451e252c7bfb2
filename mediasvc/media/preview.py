"""Preview images: a poster frame at 10 % of a video, a thumbnail of a picture (JPEG).

ffmpeg decodes one frame (``-ss`` before ``-i`` seeks by the index, so it reads only around
that point), scales it to fit ``preview_max_size_px`` square (never up) and writes a JPEG to a
``.part`` path that is renamed into place, so a reader never sees half a preview.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from mediasvc.media.config import MediaConfig
from mediasvc.media.probe import FORMAT_WHITELIST, MediaFacts
from mediasvc.media.tools import MediaInput, ToolError, ToolMissing, run_media_tool

PREVIEW_MEDIA_TYPE = "image/jpeg"
POSTER_POSITION = 0.10  # of the duration
JPEG_QUALITY = 4  # mjpeg qscale: 2 (best) … 31


class PreviewFailed(Exception):
    pass


def preview_command(
    config: MediaConfig,
    source: MediaInput,
    target: Path,
    *,
    seek_s: float,
    width: int | None = None,
) -> list[str]:
    """One frame at ``seek_s``: fit in the preview square, or ``width`` pixels wide."""
    bound = config.preview_max_size_px
    scale = (
        f"scale=w='min(iw,{bound})':h='min(ih,{bound})':force_original_aspect_ratio=decrease,"
        if width is None
        else f"scale=w={width}:h=-2,"
    ) + "format=yuvj420p"
    seek = ["-ss", f"{seek_s:.3f}"] if seek_s > 0 else []
    return [
        config.ffmpeg_path,
        "-v", "error", "-hide_banner", "-nostdin", "-y",
        "-threads", "1",
        "-max_pixels", str(config.probe_max_pixels),
        "-format_whitelist", ",".join(FORMAT_WHITELIST),
        "-protocol_whitelist", source.protocols,
        *seek,
        *source.options,
        "-i", source.url,
        "-map", "0:v:0", "-frames:v", "1", "-an", "-sn", "-dn",
        "-vf", scale,
        "-c:v", "mjpeg", "-q:v", str(JPEG_QUALITY),
        "-f", "mjpeg",
        f"file:{target}",
    ]  # fmt: skip


async def make_preview(
    config: MediaConfig, source: Path, part: Path, final: Path, facts: MediaFacts
) -> None:
    """Write the preview of ``source`` to ``final`` (through ``part``); ``PreviewFailed`` if not.

    ``ToolMissing`` passes through: that is the operator's to fix, not the file's fault.
    """
    seek_s = 0.0
    if facts.kind == "video" and facts.duration_s:
        seek_s = facts.duration_s * POSTER_POSITION
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        reason = await render_frame(config, source, part, seek_s)
        if reason is not None and seek_s > 0:
            # A duration that overstates the stream leaves nothing to show at 10 %: the first
            # frame is better than no preview.
            reason = await render_frame(config, source, part, 0.0)
        if reason is not None:
            raise PreviewFailed(reason)
        await anyio.to_thread.run_sync(os.replace, part, final)
    finally:
        await anyio.to_thread.run_sync(_unlink_quietly, part)


async def render_frame(
    config: MediaConfig,
    source: Path | MediaInput,
    part: Path,
    seek_s: float,
    width: int | None = None,
) -> str | None:
    """Write one frame of ``source`` (a local file, or a URL ffmpeg reads with seeks) as a JPEG to
    ``part``: None on success, else why not. Bounded like every media tool run: memory
    (``prlimit``), ``probe_timeout_s`` of wall time, one thread."""
    if isinstance(source, Path):
        source = MediaInput.local(source)
    try:
        command = preview_command(config, source, part, seek_s=seek_s, width=width)
        result = await run_media_tool(config, command, timeout_s=config.probe_timeout_s)
    except ToolMissing:
        raise
    except ToolError as exc:
        return str(exc)
    if result.returncode != 0:
        return result.reason(hide={**source.hidden(), part: "preview"})
    size = await anyio.to_thread.run_sync(_size_or_zero, part)
    return None if size > 0 else "ffmpeg wrote no frame"


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _unlink_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)
