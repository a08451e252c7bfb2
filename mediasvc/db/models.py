"""SQLAlchemy models: a row per file (kept as a tombstone once the file is gone), and a row per
resumable upload while it is under way (mediasvc/resumable/)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on PostgreSQL and SQLite alike (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class CloudStatus(enum.StrEnum):
    PENDING = "pending"
    UPLOADING = "uploading"
    UPLOADED = "uploaded"
    FAILED = "failed"


class ProbeStatus(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class GoneReason(enum.StrEnum):
    DELETED = "deleted"
    EXPIRED = "expired"
    EXHAUSTED = "exhausted"


class Base(DeclarativeBase):
    pass


class FileRecord(Base):
    __tablename__ = "files"

    uid: Mapped[str] = mapped_column(String(32), primary_key=True)
    original_name: Mapped[str | None] = mapped_column(Text)
    extension: Mapped[str | None] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    max_downloads: Mapped[int | None] = mapped_column(Integer)
    # Body bytes charged to the download budget, open reservations included.
    bytes_served: Mapped[int] = mapped_column(BigInteger, default=0)
    # The part of bytes_served reserved by downloads still in flight, and until when that holds:
    # running downloads renew the lease, so the reservations of a crashed process lapse.
    bytes_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    reservations_expire_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    local: Mapped[bool] = mapped_column(Boolean, default=True)
    cloud_status: Mapped[str] = mapped_column(String(16), default=CloudStatus.PENDING.value)
    cloud_path: Mapped[str | None] = mapped_column(Text)
    cloud_error: Mapped[str | None] = mapped_column(Text)
    delete_token_hash: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(64))
    derived_from: Mapped[str | None] = mapped_column(String(32))
    gone_reason: Mapped[str | None] = mapped_column(String(16))
    gone_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When cloud_status last changed: the reconciler finds pushes stuck past a timeout by it.
    cloud_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cloud_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Least-recently-used eviction when the disk is over its high watermark.
    last_accessed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Media facts from the probe job (mediasvc.media.probe.MediaFacts as JSON); None: not media.
    media: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    probe_status: Mapped[str] = mapped_column(String(16), default=ProbeStatus.PENDING.value)
    probe_error: Mapped[str | None] = mapped_column(Text)
    # When probe_status last changed (None: since created_at); the reconciler's clock.
    probe_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Object key of the preview image once it is in the cloud (a local copy may exist before).
    preview_path: Mapped[str | None] = mapped_column(Text)
    # The faststart remux of this file (a live row with derived_from = this uid).
    faststart_uid: Mapped[str | None] = mapped_column(String(32))
    # The media volume (storage.local.LocalStore.volume_id) that holds the local copy; None on
    # rows from before it was recorded. Only that volume's sweep judges whether the copy is gone.
    volume: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        # Listing: live files, newest first, keyset-paginated on (created_at, uid).
        Index(
            "ix_files_live_created",
            "created_at",
            "uid",
            postgresql_where=gone_reason.is_(None),
            sqlite_where=gone_reason.is_(None),
        ),
        Index("ix_files_cloud_status", "cloud_status"),
        Index("ix_files_expires_at", "expires_at"),
        Index("ix_files_probe_status", "probe_status"),
        Index("ix_files_derived_from", "derived_from"),
    )


class UploadConcat(enum.StrEnum):
    PARTIAL = "partial"  # a piece of a later final upload; never a file of its own
    FINAL = "final"  # the concatenation of finished partial uploads


class UploadRecord(Base):
    """A resumable upload: its offset is the count of bytes durably in its ``.upload`` file and
    ``hash_state`` the sha256 state after exactly those bytes (both written together at each
    checkpoint). Once complete, the file of the same uid exists and the row stays (HEAD still
    answers) until it expires."""

    __tablename__ = "uploads"

    uid: Mapped[str] = mapped_column(String(32), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    length: Mapped[int | None] = mapped_column(BigInteger)  # None: deferred
    # rehashes' serialized SHA-256 state after ``offset`` bytes.
    hash_state: Mapped[bytes] = mapped_column(LargeBinary)
    # The state the hashing started from: a fresh hash, or for a partial upload, where the
    # partial finished just before it by the same owner ended (concatenation continues it).
    hash_start: Mapped[bytes] = mapped_column(LargeBinary)
    metadata_header: Mapped[str | None] = mapped_column(Text)  # Upload-Metadata as received
    owner: Mapped[str | None] = mapped_column(String(64))
    concat: Mapped[str | None] = mapped_column(String(8))  # UploadConcat, None: a plain upload
    parts: Mapped[list[str] | None] = mapped_column(JSON)  # a final upload's partials, in order
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Raised by each request that takes the upload over: the writer holding it sees the change
    # at its next look and ends (resumable/writers.py).
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # The internal URL of the API node that holds the bytes (MEDIASVC_INTERNAL_URL when it was
    # created; None: a single node). Only that node writes them; the others forward to it.
    node_url: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        Index("ix_uploads_expires_at", "expires_at"),
        Index("ix_uploads_owner_completed", "owner", "concat", "completed_at"),
    )
