"""What a file is, as media: ffprobe's facts, checked, plus the MP4 box layout.

``analyse(config, path, expects_media=…)`` returns ``MediaFacts`` for media, None for a file
that is not media, and raises ``ProbeFailed`` (a short reason) for a file that claims to be
media and is not readable as such, or that is hostile: cut short, empty, a decompression bomb,
or one that makes ffprobe hang or print without end.

ffprobe only opens the file itself (``-protocol_whitelist file``) with the demuxers of real
media formats (``-format_whitelist``): a playlist or concat script uploaded as "video" cannot
make it read other local files or URLs.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import anyio

from mediasvc.media.atoms import BoxLayout, read_layout
from mediasvc.media.config import MediaConfig
from mediasvc.media.tools import ToolError, ToolMissing, run_media_tool

# Demuxers ffprobe may use: containers and raw streams of audio, video and pictures. Not
# among them: hls, dash, concat, image2 (file patterns), tty, subtitle formats, anything that
# opens other inputs. av_match_list matches any of a demuxer's names ("mov,mp4,m4a,…").
FORMAT_WHITELIST = (
    "mov", "matroska", "avi", "flv", "mpegts", "mpeg", "asf", "ogg", "nut", "mxf", "dv",
    "rm", "ivf", "yuv4mpegpipe", "h264", "hevc", "m4v", "mpegvideo",
    "mp3", "aac", "ac3", "eac3", "flac", "wav", "w64", "aiff", "caf", "amr", "ape", "wv", "dts",
    "png_pipe", "jpeg_pipe", "webp_pipe", "gif", "bmp_pipe", "tiff_pipe", "qoi_pipe",
    "pam_pipe", "pbm_pipe", "pgm_pipe", "ppm_pipe", "psd_pipe", "j2k_pipe", "dpx_pipe",
)  # fmt: skip
# Pictures rather than moving pictures.
IMAGE_FORMATS = frozenset(name for name in FORMAT_WHITELIST if name.endswith("_pipe")) | {"gif"}
# ISO base media files: the "mov" demuxer reports "mov,mp4,m4a,3gp,3g2,mj2".
ISO_BMFF_FORMAT = "mov"
# ffprobe's confidence in its guess: 100 for a signature, 50 for a file extension (our paths
# have none), less for a hunch, such as a few bytes of random data that look like MP3 frames.
MIN_PROBE_SCORE = 25
MAX_PROBE_OUTPUT_BYTES = 1024 * 1024
# Extensions whose files we expect to be media even when the type was sniffed as generic.
MEDIA_EXTENSIONS = frozenset(
    {
        "mp4", "m4v", "m4a", "mov", "qt", "mkv", "webm", "avi", "flv", "ts", "m2ts", "mts", "mpg",
        "mpeg", "vob", "wmv", "wma", "asf", "ogg", "oga", "ogv", "opus", "mp3", "aac", "ac3",
        "flac", "wav", "aif", "aiff", "caf", "amr", "3gp", "3g2", "mxf", "jpg", "jpeg", "png",
        "gif", "webp", "bmp", "tif", "tiff", "heic", "avif",
    }
)  # fmt: skip
MEDIA_TYPES = frozenset({"video", "audio", "image"})
MAX_REASON_CHARS = 200

MediaKind = Literal["video", "audio", "image"]


class ProbeFailed(Exception):
    """The file claims to be media but is unreadable or hostile; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:MAX_REASON_CHARS]


class LocalCopyMissing(Exception):
    pass


@dataclass(slots=True)
class StreamFacts:
    index: int
    kind: str
    codec: str | None
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    attached_pic: bool = False
    pix_fmt: str | None = None  # video: e.g. yuv420p, yuv420p10le (10-bit)
    profile: str | None = None  # e.g. High, High 10, Main 10, LC
    rotation: int = 0  # video: the display matrix's turn, 0-359 degrees (a phone's portrait: 90)


@dataclass(slots=True)
class MediaFacts:
    kind: MediaKind
    container: str
    duration_s: float | None
    bit_rate: int | None
    width: int | None = None
    height: int | None = None
    faststart: bool | None = None
    streams: list[StreamFacts] = field(default_factory=list)

    @property
    def picture(self) -> StreamFacts | None:
        """The stream a preview is made from: the first video stream (a cover art too)."""
        return next((s for s in self.streams if s.kind == "video"), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> MediaFacts:
        """Facts as ``to_json`` stored them (keys it does not know, such as the playback
        decision stored beside them, are left out)."""
        names = {f.name for f in fields(cls)} - {"streams"}
        stream_names = {f.name for f in fields(StreamFacts)}
        return cls(
            **{k: v for k, v in document.items() if k in names},
            streams=[
                StreamFacts(**{k: v for k, v in s.items() if k in stream_names})
                for s in document.get("streams") or []
            ],
        )


def expects_media(media_type: str, extension: str | None) -> bool:
    """Whether a failed probe is the file's fault (it claims to be media) or just "not media"."""
    top_level = media_type.split("/", 1)[0].strip().lower()
    return top_level in MEDIA_TYPES or (extension or "") in MEDIA_EXTENSIONS


def ffprobe_command(config: MediaConfig, path: Path) -> list[str]:
    return [
        config.ffprobe_path,
        "-v", "error",
        "-hide_banner",
        "-threads", "1",
        "-max_pixels", str(config.probe_max_pixels),
        "-format_whitelist", ",".join(FORMAT_WHITELIST),
        "-protocol_whitelist", "file",
        "-print_format", "json",
        "-show_entries",
        "format=format_name,duration,bit_rate,probe_score"
        ":stream=index,codec_type,codec_name,width,height,avg_frame_rate,r_frame_rate,"
        "sample_rate,channels,pix_fmt,profile:stream_disposition=attached_pic"
        ":stream_side_data=rotation",
        f"file:{path}",
    ]  # fmt: skip


async def analyse(config: MediaConfig, path: Path, *, expects_media: bool) -> MediaFacts | None:
    """Media facts of the file at ``path``; None if it is not media. See the module docstring.

    Raises ``LocalCopyMissing`` if there is no file, ``ToolMissing`` if ffprobe is not
    installed, ``ProbeFailed`` otherwise.
    """
    try:
        info = await anyio.to_thread.run_sync(os.stat, path)
    except FileNotFoundError as exc:
        raise LocalCopyMissing(str(path)) from exc
    if not stat.S_ISREG(info.st_mode):
        raise ProbeFailed("not a regular file")  # a FIFO would block every reader for ever
    if info.st_size == 0:
        if expects_media:
            raise ProbeFailed("the file is empty")
        return None

    try:
        result = await run_media_tool(
            config,
            ffprobe_command(config, path),
            timeout_s=config.probe_timeout_s,
            max_output_bytes=MAX_PROBE_OUTPUT_BYTES,
        )
    except ToolMissing:
        raise
    except ToolError as exc:
        raise ProbeFailed(str(exc)) from exc
    reason = result.reason(hide={path: "file"})
    facts = (
        parse(result.stdout, max_pixels=config.probe_max_pixels) if result.returncode == 0 else None
    )
    if facts is None:
        if expects_media:
            raise ProbeFailed(
                f"not readable as media: {reason}"
                if result.returncode
                else "not readable as media: no audio, video or picture found"
            )
        return None
    if ISO_BMFF_FORMAT in facts.container.split(","):
        layout = await anyio.to_thread.run_sync(_read_layout, path, info.st_size)
        if layout.truncated_box is not None:
            raise ProbeFailed(
                f"truncated: the {layout.truncated_box} box ends past the end of the file"
            )
        facts.faststart = layout.faststart
    return facts


def parse(output: bytes, *, max_pixels: int) -> MediaFacts | None:
    """ffprobe's JSON → facts; None if it found no audio, video or picture with confidence.

    Raises ``ProbeFailed`` for a picture without a usable size, or one over ``max_pixels``.
    """
    try:
        document = json.loads(output)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProbeFailed("ffprobe's output is not JSON") from exc
    if not isinstance(document, dict):
        return None
    fmt = document.get("format") or {}
    container = str(fmt.get("format_name") or "")
    if not container or (_int(fmt.get("probe_score")) or 0) < MIN_PROBE_SCORE:
        return None
    streams = [_stream(raw) for raw in document.get("streams") or [] if isinstance(raw, dict)]
    if not any(s.kind in ("video", "audio") for s in streams):
        return None
    for s in streams:
        if s.kind != "video":
            continue
        if not s.width or not s.height:
            raise ProbeFailed("a picture has no usable size (its declared dimensions were refused)")
        if s.width * s.height > max_pixels:
            raise ProbeFailed(f"a picture of {s.width}x{s.height} is over the pixel limit")
    is_image = bool(IMAGE_FORMATS & set(container.split(",")))
    moving = [s for s in streams if s.kind == "video" and not s.attached_pic]
    kind: MediaKind = "image" if is_image else "video" if moving else "audio"
    if kind == "audio" and not any(s.kind == "audio" for s in streams):
        kind = "image"  # a lone cover picture
    main = moving[0] if moving else next((s for s in streams if s.kind == "video"), None)
    return MediaFacts(
        kind=kind,
        container=container,
        duration_s=None if kind == "image" else _float(fmt.get("duration")),
        bit_rate=None if kind == "image" else _int(fmt.get("bit_rate")),
        width=main.width if main and kind != "audio" else None,
        height=main.height if main and kind != "audio" else None,
        streams=streams,
    )


def _stream(raw: dict[str, Any]) -> StreamFacts:
    kind = str(raw.get("codec_type") or "data")
    disposition = raw.get("disposition")
    facts = StreamFacts(
        index=_int(raw.get("index")) or 0,
        kind=kind,
        codec=str(raw["codec_name"]) if raw.get("codec_name") else None,
        attached_pic=isinstance(disposition, dict) and bool(disposition.get("attached_pic")),
        profile=str(raw["profile"]) if raw.get("profile") else None,
    )
    if kind == "video":
        facts.pix_fmt = str(raw["pix_fmt"]) if raw.get("pix_fmt") else None
        facts.rotation = _rotation(raw.get("side_data_list"))
        facts.width = _int(raw.get("width"))
        facts.height = _int(raw.get("height"))
        facts.frame_rate = _rate(raw.get("avg_frame_rate")) or _rate(raw.get("r_frame_rate"))
    elif kind == "audio":
        facts.sample_rate = _int(raw.get("sample_rate"))
        facts.channels = _int(raw.get("channels"))
    return facts


def _rotation(side_data: object) -> int:
    """The display matrix's rotation in degrees, 0-359; 0 without one."""
    if not isinstance(side_data, list):
        return 0
    for entry in side_data:
        if isinstance(entry, dict) and "rotation" in entry:
            try:
                return int(float(str(entry["rotation"]))) % 360
            except ValueError:
                return 0
    return 0


def _read_layout(path: Path, size: int) -> BoxLayout:
    with path.open("rb", buffering=0) as file:
        return read_layout(file, size)


def _int(value: object) -> int | None:
    try:
        number = int(str(value))
    except ValueError:
        return None
    return number if number >= 0 else None


def _float(value: object) -> float | None:
    try:
        number = float(str(value))
    except ValueError:
        return None
    return round(number, 3) if math.isfinite(number) and number >= 0 else None


def _rate(value: object) -> float | None:
    numerator, _, denominator = str(value or "").partition("/")
    try:
        rate = float(numerator) / float(denominator or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return round(rate, 3) if math.isfinite(rate) and rate > 0 else None
