"""The browser-playable rendition: MP4 (H.264 High, yuv420p, AAC, faststart), or M4A for audio.

What each stream of the original becomes (``plan``), said in the metadata:
- the main video: copied when browsers decode it (H.264 8-bit 4:2:0, VP9, AV1), else encoded
  as H.264 High 4:2:0 8-bit at the source's size (odd dimensions rounded down to even) and
  frame rate (timestamps passed through: variable frame rate stays variable), turned upright
  when the source carries a rotation (ffmpeg's autorotate), 10-bit or 4:2:2 converted to 8-bit
  4:2:0; other video streams (a second angle) and cover pictures are dropped;
- every audio track: copied when MP4 takes it (AAC, MP3, Opus, FLAC), else AAC (stereo at most);
  the first stays the default track;
- text subtitles (SubRip, ASS/SSA, WebVTT, mov_text): converted to mov_text; picture subtitles
  (PGS, DVD, DVB) cannot go into MP4 as text and are dropped; data and attachment streams
  (fonts, timecodes) are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mediasvc.media.config import MediaConfig
from mediasvc.media.encode import input_args, run_encode
from mediasvc.media.playability import MP4_AUDIO, audio_streams, main_video, video_plays
from mediasvc.media.probe import MediaFacts

TEXT_SUBTITLES = frozenset({"subrip", "ass", "ssa", "webvtt", "mov_text", "text"})
# Video browsers decode that MP4 also carries as it is (VP8 has no MP4 mapping).
MP4_VIDEO_COPY = frozenset({"h264", "vp9", "av1"})
AUDIO_BIT_RATE = "160k"


@dataclass(frozen=True, slots=True)
class Dropped:
    index: int
    kind: str
    codec: str | None
    why: str


@dataclass(slots=True)
class Plan:
    """Which streams of the original go into the rendition, and how."""

    audio_only: bool
    video: int | None = None  # the stream index of the main video
    video_copy: bool = False
    # (index, copied, downmixed to stereo)
    audio: list[tuple[int, bool, bool]] = field(default_factory=list)
    subtitles: list[int] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)

    @property
    def media_type(self) -> str:
        return "audio/mp4" if self.audio_only else "video/mp4"

    @property
    def extension(self) -> str:
        return "m4a" if self.audio_only else "mp4"

    def kept(self) -> dict[str, Any]:
        """What the metadata says the rendition kept of the original."""
        return {
            "video": None if self.video is None else "copied" if self.video_copy else "encoded",
            "audio_tracks": len(self.audio),
            "subtitle_tracks": len(self.subtitles),
            "dropped": [asdict(d) for d in self.dropped],
        }


def plan(facts: MediaFacts) -> Plan:
    video = main_video(facts) if facts.kind == "video" else None
    result = Plan(audio_only=video is None)
    if video is not None:
        result.video = video.index
        result.video_copy = video_plays(video) and video.codec in MP4_VIDEO_COPY
    for stream in audio_streams(facts):
        copied = stream.codec in MP4_AUDIO
        result.audio.append((stream.index, copied, not copied and (stream.channels or 0) > 2))
    for stream in facts.streams:
        if stream.kind == "video" and stream.index != result.video:
            why = "a cover picture" if stream.attached_pic else "a second video stream"
            result.dropped.append(Dropped(stream.index, stream.kind, stream.codec, why))
        elif stream.kind == "subtitle":
            if stream.codec in TEXT_SUBTITLES and video is not None:
                result.subtitles.append(stream.index)
            else:
                why = "picture subtitles have no MP4 text form" if video else "audio-only file"
                result.dropped.append(Dropped(stream.index, stream.kind, stream.codec, why))
        elif stream.kind not in ("video", "audio"):
            why = "MP4 carries no such stream"
            result.dropped.append(Dropped(stream.index, stream.kind, stream.codec, why))
    return result


def rendition_command(config: MediaConfig, source: Path, target: Path, streams: Plan) -> list[str]:
    command = [*input_args(config, source), "-i", f"file:{source}"]
    output: list[str] = []
    if streams.video is not None:
        command += ["-map", f"0:{streams.video}"]
        if streams.video_copy:
            output += ["-c:v", "copy"]
        else:
            output += [
                "-c:v", "libx264", "-preset", config.transcode_preset,
                "-crf", str(config.transcode_crf), "-profile:v", "high",
                # Even dimensions (4:2:0 needs them), 8-bit 4:2:0; after autorotate.
                "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2,format=yuv420p",
                "-fps_mode", "passthrough",
            ]  # fmt: skip
    for number, (index, copied, downmixed) in enumerate(streams.audio):
        command += ["-map", f"0:{index}"]
        if copied:
            output += [f"-c:a:{number}", "copy"]
        else:
            output += [f"-c:a:{number}", "aac", f"-b:a:{number}", AUDIO_BIT_RATE]
        if downmixed:
            output += [f"-ac:a:{number}", "2"]
    for index in streams.subtitles:
        command += ["-map", f"0:{index}"]
    if streams.subtitles:
        output += ["-c:s", "mov_text"]
    return [
        *command,
        *output,
        "-threads", str(config.transcode_threads),
        "-map_metadata", "0", "-map_chapters", "0",
        "-max_muxing_queue_size", "4096",
        "-movflags", "+faststart",
        "-f", "mp4",
        f"file:{target}",
    ]  # fmt: skip


async def make_rendition(
    config: MediaConfig,
    source: Path,
    target: Path,
    facts: MediaFacts,
    streams: Plan,
    on_progress: Callable[[float], None],
) -> None:
    """Write the rendition of ``source`` to ``target``; ``EncodeFailed`` if ffmpeg fails."""
    await run_encode(
        config,
        rendition_command(config, source, target, streams),
        duration_s=facts.duration_s,
        on_progress=on_progress,
        hide={source: "file", target: "the rendition"},
    )
