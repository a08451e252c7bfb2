"""JSON bodies of the API, as pydantic models (they also make the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from mediasvc.db.models import FileRecord
from mediasvc.delivery.budget import downloads_used


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
    downloads: int
    local: bool
    cloud_status: str
    cloud_path: str | None
    download_url: str

    @classmethod
    def from_record(cls, record: FileRecord, *, base_url: str) -> FileMetadata:
        downloads = downloads_used(record.bytes_served, record.size)
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
