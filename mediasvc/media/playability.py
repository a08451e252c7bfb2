"""Can a browser play the original as it is? A decision from the probe's facts, with its reason.

"Plays" means Chromium and Firefox both play it from a Range-capable server: H.264 (8-bit
4:2:0), VP8, VP9 or AV1 video with AAC, MP3, Opus, Vorbis or FLAC audio, in MP4 with its index
(moov) first, or the WebM subset of Matroska (VP8/VP9/AV1 with Opus/Vorbis); audio alone also
in its own MP3, FLAC, Ogg or WAV (16-bit PCM) file. Everything else (HEVC, MPEG-2, MPEG-4
part 2, ProRes, DNxHD, WMV, 10-bit H.264, AVI, MPEG-TS, FLV, Matroska with other codecs, MP4
without faststart …) gets a rendition (jobs/transcode.py): a stream copy into MP4 when only the
container or its layout is wrong, an encode when a codec is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from mediasvc.media.probe import ISO_BMFF_FORMAT, MediaFacts, StreamFacts

# Video codecs browsers decode, with the pixel formats they take (ffprobe's names).
_H264_PIX_FMTS = frozenset({"yuv420p", "yuvj420p"})
_VP_AV1_PIX_FMTS = frozenset({"yuv420p", "yuvj420p", "yuv420p10le"})
BROWSER_VIDEO = frozenset({"h264", "vp8", "vp9", "av1"})
# Audio codecs that play in MP4 in both browsers, and in WebM.
MP4_AUDIO = frozenset({"aac", "mp3", "opus", "flac"})
WEBM_VIDEO = frozenset({"vp8", "vp9", "av1"})
WEBM_AUDIO = frozenset({"opus", "vorbis"})
# Audio-only containers that play with these codecs (ffprobe format name → codecs).
AUDIO_CONTAINERS: dict[str, frozenset[str]] = {
    "mp3": frozenset({"mp3"}),
    "flac": frozenset({"flac"}),
    "ogg": frozenset({"opus", "vorbis", "flac"}),
    "wav": frozenset({"pcm_s16le", "pcm_u8"}),
}
# Names people know, for the reasons (ffprobe's codec name → name).
CODEC_NAMES = {
    "hevc": "HEVC (H.265)",
    "mpeg2video": "MPEG-2",
    "mpeg1video": "MPEG-1",
    "mpeg4": "MPEG-4 Part 2",
    "prores": "ProRes",
    "dnxhd": "DNxHD",
    "wmv1": "WMV",
    "wmv2": "WMV",
    "wmv3": "WMV 9",
    "vc1": "VC-1",
    "h264": "H.264",
    "ac3": "AC-3",
    "eac3": "E-AC-3",
    "dts": "DTS",
    "pcm_s24le": "24-bit PCM",
    "pcm_s16be": "big-endian PCM",
    "wmav2": "WMA",
    "mp2": "MPEG audio layer II",
    "alac": "ALAC",
}


class Action(StrEnum):
    NONE = "none"  # plays as it is: no rendition
    REMUX = "remux"  # the streams are fine, the container or its layout is not: copy into MP4
    TRANSCODE = "transcode"  # a codec is not: encode (H.264/AAC, or AAC alone)


@dataclass(frozen=True, slots=True)
class Playback:
    plays_as_is: bool
    reason: str
    action: Action

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def main_video(facts: MediaFacts) -> StreamFacts | None:
    """The moving picture a player shows: the first video stream that is not cover art."""
    return next((s for s in facts.streams if s.kind == "video" and not s.attached_pic), None)


def audio_streams(facts: MediaFacts) -> list[StreamFacts]:
    return [s for s in facts.streams if s.kind == "audio"]


def video_plays(stream: StreamFacts) -> bool:
    """Whether browsers decode this video stream (in a container they read)."""
    if stream.codec == "h264":
        return (stream.pix_fmt or "yuv420p") in _H264_PIX_FMTS
    if stream.codec in ("vp8", "vp9", "av1"):
        return (stream.pix_fmt or "yuv420p") in _VP_AV1_PIX_FMTS
    return False


def decide(facts: MediaFacts) -> Playback | None:
    """The decision for a video or audio file; None for a picture."""
    if facts.kind == "image":
        return None
    video = main_video(facts) if facts.kind == "video" else None
    audio = audio_streams(facts)
    first_audio = audio[0] if audio else None
    names = set(facts.container.split(","))

    if video is not None and not video_plays(video):
        return Playback(False, _video_reason(video), Action.TRANSCODE)
    if first_audio is not None and first_audio.codec not in MP4_AUDIO | WEBM_AUDIO:
        return Playback(
            False,
            f"{_name(first_audio.codec)} audio: browsers do not decode it",
            Action.TRANSCODE,
        )
    audio_codec = first_audio.codec if first_audio else None

    if ISO_BMFF_FORMAT in names:
        if audio_codec is not None and audio_codec not in MP4_AUDIO:
            return Playback(False, f"{_name(audio_codec)} audio in MP4", Action.TRANSCODE)
        if facts.faststart is False:
            return Playback(
                False,
                "MP4 with its index (moov) after the media data: a browser cannot start before "
                "it has fetched the end of the file",
                Action.REMUX,
            )
        return Playback(True, _plays(video, audio_codec, "MP4"), Action.NONE)
    if "matroska" in names or "webm" in names:
        if (video is None or video.codec in WEBM_VIDEO) and (
            audio_codec is None or audio_codec in WEBM_AUDIO
        ):
            return Playback(True, _plays(video, audio_codec, "WebM"), Action.NONE)
        return Playback(
            False,
            "Matroska: browsers play only its WebM subset (VP8/VP9/AV1 with Opus/Vorbis)",
            _copy_or_encode(audio_codec),
        )
    if video is None and audio_codec is not None:
        for container, codecs in AUDIO_CONTAINERS.items():
            if container in names and audio_codec in codecs:
                return Playback(True, _plays(None, audio_codec, container.upper()), Action.NONE)
    return Playback(
        False,
        f"{_container_name(facts.container)} container: browsers do not read it",
        _copy_or_encode(audio_codec),
    )


def _copy_or_encode(audio_codec: str | None) -> Action:
    """The streams are fine; can they be copied into MP4 as they are?"""
    return Action.REMUX if audio_codec is None or audio_codec in MP4_AUDIO else Action.TRANSCODE


def _video_reason(video: StreamFacts) -> str:
    if video.codec == "h264":
        return (
            f"H.264 in {video.pix_fmt} ({video.profile or 'not 8-bit 4:2:0'}): browsers decode "
            "only 8-bit 4:2:0 H.264"
        )
    if video.codec == "hevc":
        return "HEVC (H.265) video: Firefox does not play it, Chromium only with a hardware decoder"
    if video.codec in BROWSER_VIDEO:
        return f"{_name(video.codec)} video in {video.pix_fmt}: browsers do not decode it"
    return f"{_name(video.codec)} video: browsers do not decode it"


def _plays(video: StreamFacts | None, audio_codec: str | None, container: str) -> str:
    parts = [_name(c) for c in (video.codec if video else None, audio_codec) if c]
    return f"{'/'.join(parts)} in {container}: plays in Chromium and Firefox"


def _name(codec: str | None) -> str:
    if codec is None:
        return "unknown"
    return CODEC_NAMES.get(codec, codec.upper() if len(codec) <= 4 else codec)


def _container_name(container: str) -> str:
    first = container.split(",")[0]
    return {"mpegts": "MPEG-TS", "mpeg": "MPEG-PS", "asf": "ASF (WMV)", "flv": "FLV"}.get(
        first, first.upper()
    )
