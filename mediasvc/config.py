"""Settings: environment variables with the ``MEDIASVC_`` prefix, or a ``.env`` file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class Settings(BaseSettings):
    """Everything an operator can tune. Built once per app by ``create_app``, never at import."""

    model_config = SettingsConfigDict(env_prefix="MEDIASVC_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite+aiosqlite:///./data/mediasvc.db",
        description="SQLAlchemy async URL: postgresql+asyncpg://… in production.",
    )
    media_root: Path = Field(default=Path("./data/media"), description="Where files live on disk.")
    max_upload_size_bytes: int = Field(
        default=16 * GiB, ge=0, description="Largest file accepted; 0 means unlimited."
    )
    io_chunk_size_bytes: int = Field(
        default=1 * MiB,
        ge=4 * KiB,
        description="Batch size for disk writes and hashing on upload, read size on download.",
    )
    fsync: bool = Field(
        default=True, description="fsync files and directories before answering 201."
    )
    public_base_url: str | None = Field(
        default=None, description="Absolute base for download_url, e.g. https://media.example.com."
    )
    min_free_disk_bytes: int = Field(
        default=64 * MiB, ge=0, description="Headroom kept free on the media disk (507 below it)."
    )
    max_ranges: int = Field(
        default=100,
        ge=1,
        description="More ranges than this in one request get the full file (200).",
    )
    list_default_limit: int = Field(default=50, ge=1)
    list_max_limit: int = Field(default=1000, ge=1)

    @field_validator("public_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
