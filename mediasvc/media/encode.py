"""One long ffmpeg run (a rendition, a storyboard, an HLS variant) under the transcode bounds.

Bounded threads (``-threads``, one filter thread), niceness, memory (prlimit, as every media
tool) and a wall time proportional to the file's duration; ffmpeg reports how far it got on
stdout (``-progress pipe:1``), which becomes a fraction for the job's ``processing.percent``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from mediasvc.media.config import MediaConfig
from mediasvc.media.probe import FORMAT_WHITELIST
from mediasvc.media.tools import ToolError, ToolMissing, run_media_tool

# A progress line is short; this only bounds a tool gone wrong.
MAX_PROGRESS_LINE_BYTES = 4096


class EncodeFailed(Exception):
    """ffmpeg failed, or was killed for its wall time; ``str(exc)`` says why (no paths)."""


def input_args(config: MediaConfig, source: Path, *, threads: int | None = None) -> list[str]:
    """ffmpeg's options up to and including its input: the probe's whitelists and bounds."""
    return [
        config.ffmpeg_path,
        "-v", "error", "-hide_banner", "-nostdin", "-nostats", "-y",
        "-progress", "pipe:1",
        "-filter_threads", "1",
        "-threads", str(threads or config.transcode_threads),
        "-max_pixels", str(config.probe_max_pixels),
        "-format_whitelist", ",".join(FORMAT_WHITELIST),
        "-protocol_whitelist", "file",
    ]  # fmt: skip


async def run_encode(
    config: MediaConfig,
    command: list[str],
    *,
    duration_s: float | None,
    on_progress: Callable[[float], None],
    hide: Mapping[Path | str, str],
) -> None:
    """Run ``command`` (built on ``input_args``); ``on_progress`` gets 0…1 as ffmpeg goes.

    ``ToolMissing`` passes through; any other failure is ``EncodeFailed``.
    """

    def on_line(line: bytes) -> None:
        key, _, value = line.partition(b"=")
        if key.strip() != b"out_time_us" or not duration_s:
            return
        try:
            done_s = int(value) / 1_000_000
        except ValueError:
            return  # "N/A" before the first frame
        on_progress(max(0.0, min(1.0, done_s / duration_s)))

    try:
        result = await run_media_tool(
            config,
            command,
            timeout_s=config.transcode_timeout_s(duration_s),
            max_output_bytes=MAX_PROGRESS_LINE_BYTES,
            on_line=on_line,
            niceness=config.transcode_nice,
        )
    except ToolMissing:
        raise
    except ToolError as exc:
        raise EncodeFailed(str(exc)) from exc
    if result.returncode != 0:
        raise EncodeFailed(result.reason(hide=hide))
