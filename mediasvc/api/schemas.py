"""JSON bodies of the API, as pydantic models (they also make the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from mediasvc.db.models import FileRecord
from mediasvc.delivery.budget import downloads_settled


class StreamInfo(BaseModel):
    index: int
    kind: str = Field(description="video, audio, subtitle, data or attachment")
    codec: str | None
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = Field(default=None, description="Frames per second (video)")
    sample_rate: int | None = Field(default=None, description="Hz (audio)")
    channels: int | None = None
    attached_pic: bool = Field(default=False, description="A cover picture, not moving video")
    pix_fmt: str | None = Field(default=None, description="Video: e.g. yuv420p, yuv420p10le")
    profile: str | None = Field(default=None, description="e.g. High, High 10, Main 10, LC")
    rotation: int = Field(default=0, description="Video: display rotation, degrees (0-359)")


class PlaybackInfo(BaseModel):
    """Whether Chromium and Firefox play the file as it is, and why (not)."""

    plays_as_is: bool
    reason: str
    action: Literal["none", "remux", "transcode"] = Field(
        description="What the rendition is: none, a stream copy into MP4, or an encode"
    )


class MediaInfo(BaseModel):
    """What the probe job found (ffprobe, and our own walk of MP4/MOV boxes)."""

    kind: Literal["video", "audio", "image"]
    container: str = Field(description="ffprobe's format name, e.g. mov,mp4,m4a,3gp,3g2,mj2")
    duration_s: float | None
    bit_rate: int | None = Field(description="Overall bits per second")
    width: int | None = None
    height: int | None = None
    faststart: bool | None = Field(
        default=None,
        description="MP4/MOV: true if the moov atom precedes mdat (playback can start at once)",
    )
    streams: list[StreamInfo]
    playback: PlaybackInfo | None = Field(
        default=None, description="Audio and video: the browser playability decision"
    )


class RenditionInfo(BaseModel):
    """A file made from this one for browsers (its own UID; ``derived_from`` points back)."""

    uid: str
    role: Literal["playback"] = Field(description="playback: the browser-playable MP4/M4A")
    url: str
    format: str
    size: int
    duration_s: float | None
    bit_rate: int | None
    width: int | None
    height: int | None
    video_codec: str | None
    video_profile: str | None
    pix_fmt: str | None
    frame_rate: float | None
    audio_codec: str | None
    faststart: bool | None
    kept: dict[str, Any] = Field(
        description="What it kept of the original: video copied or encoded, audio and subtitle "
        "tracks, and each stream dropped with why"
    )


class StoryboardInfo(BaseModel):
    uid: str = Field(description="The sprite sheet (a JPEG file of its own)")
    vtt_url: str = Field(description="WebVTT cues with #xywh= fragments of the sheet")
    interval_s: float
    count: int
    columns: int
    rows: int
    tile_width: int
    tile_height: int


class HlsVariantInfo(BaseModel):
    uid: str = Field(description="The rung's fMP4 file (init and segments as byte ranges)")
    height: int
    width: int | None
    bandwidth: int = Field(description="Peak bits per second of a segment")
    average_bandwidth: int
    codecs: str


class HlsInfo(BaseModel):
    master_url: str
    complete: bool = Field(description="Every rung of the ladder is made")
    variants: list[HlsVariantInfo]


class ProcessingInfo(BaseModel):
    """The transcode job's state: renditions, storyboard."""

    state: Literal["pending", "running", "done", "failed", "skipped"]
    step: str | None = Field(description="What it is making now: rendition, storyboard, hls")
    percent: float = Field(description="Of all its steps, from ffmpeg's progress")
    attempts: int = Field(description="Runs started (a worker crash cuts one short)")
    error: str | None = Field(description="Why it failed or was skipped")
    steps: list[str]
    storyboard: StoryboardInfo | None
    hls: HlsInfo | None = Field(description="With MEDIASVC_HLS_LADDER: the HLS rungs made")


class FileMetadata(BaseModel):
    uid: str
    original_name: str | None
    extension: str | None
    format: str = Field(description="MIME type")
    size: int
    sha256: str
    created_at: datetime
    expires_at: datetime | None
    max_downloads: int | None
    downloads: int = Field(
        description="Full downloads used: ceil(bytes sent / size); bytes held by downloads "
        "still running count once they end. Counted only for files with max_downloads; 0 for "
        "the others"
    )
    local: bool
    cloud_status: str
    cloud_path: str | None
    download_url: str
    probe_status: str = Field(description="pending, done, failed or skipped")
    probe_error: str | None = Field(description="Why the probe failed (or what it could not do)")
    media: MediaInfo | None = Field(description="Null until probed, and for files not media")
    preview_url: str | None = Field(description="Poster frame or thumbnail (JPEG), once made")
    derived_from: str | None = Field(description="The original of a derived file (a remux)")
    faststart_uid: str | None = Field(description="The original's faststart copy, once made")
    processing: ProcessingInfo | None = Field(
        description="Video and audio originals: what the transcode job makes, and how far it got"
    )
    renditions: list[RenditionInfo] = Field(description="Files made from this one for browsers")
    metadata: dict[str, Any] | None = Field(
        default=None, description="The caller's own JSON object given at upload, as given"
    )

    @classmethod
    def from_record(cls, record: FileRecord, *, base_url: str) -> FileMetadata:
        downloads = downloads_settled(record)
        return cls(
            uid=record.uid,
            original_name=record.original_name,
            extension=record.extension,
            format=record.format,
            size=record.size,
            sha256=record.sha256,
            created_at=record.created_at,
            expires_at=record.expires_at,
            max_downloads=record.max_downloads,
            downloads=downloads,
            local=record.local,
            cloud_status=record.cloud_status,
            cloud_path=record.cloud_path,
            download_url=f"{base_url}/api/v1/files/{record.uid}",
            probe_status=record.probe_status,
            probe_error=record.probe_error,
            media=MediaInfo.model_validate(record.media) if record.media else None,
            preview_url=(
                f"{base_url}/api/v1/files/{record.uid}/preview" if record.preview_path else None
            ),
            derived_from=record.derived_from,
            faststart_uid=record.faststart_uid,
            processing=_processing(record, base_url),
            renditions=[
                RenditionInfo(url=f"{base_url}/api/v1/files/{r['uid']}", **r)
                for r in (record.processing or {}).get("renditions", [])
            ],
            metadata=record.caller_metadata,
        )


def _processing(record: FileRecord, base_url: str) -> ProcessingInfo | None:
    document = record.processing
    if document is None:
        return None
    storyboard = document.get("storyboard")
    hls = document.get("hls")
    return ProcessingInfo(
        state=document["state"],
        step=document.get("step"),
        percent=document.get("percent") or 0.0,
        attempts=document.get("attempts") or 0,
        error=document.get("error"),
        steps=document.get("steps") or [],
        storyboard=(
            StoryboardInfo(
                vtt_url=f"{base_url}/api/v1/files/{record.uid}/storyboard.vtt", **storyboard
            )
            if storyboard
            else None
        ),
        hls=(
            HlsInfo(
                master_url=f"{base_url}/api/v1/files/{record.uid}/hls/master.m3u8",
                complete=bool(hls.get("complete")),
                variants=[HlsVariantInfo.model_validate(v) for v in hls["variants"]],
            )
            if hls and hls.get("variants")
            else None
        ),
    )


class UploadedFile(FileMetadata):
    delete_token: str = Field(
        description="Shown once: send it as X-Delete-Token to delete the file"
    )


class FileList(BaseModel):
    items: list[FileMetadata]
    next_cursor: str | None


class SignedLink(BaseModel):
    url: str
    expires_at: datetime
