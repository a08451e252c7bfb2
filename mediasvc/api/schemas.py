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
            metadata=record.caller_metadata,
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
