"""SQLAlchemy models: a row per file (kept as a tombstone once the file is gone), a row per
resumable upload while it is under way (mediasvc/resumable/), the outbox of events about files
with their webhook deliveries and attempts, and URL imports in progress."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
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


class ProcessingState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
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
    # What the transcode job made of this original and how far it got (jobs/transcode.py):
    # state, percent, error, attempts, renditions, storyboard, HLS. None: nothing to make.
    processing: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # processing's state, as a column the reconciler can query, and when it last changed.
    processing_state: Mapped[str | None] = mapped_column(String(16))
    processing_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The caller's own JSON object given at upload (events/metadata.py bounds it); echoed in the
    # file's metadata and in every event about it.
    caller_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)

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
        Index("ix_files_processing_state", "processing_state"),
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


# An integer key that autoincrements on both databases (SQLite only does for INTEGER PRIMARY KEY).
_SERIAL = BigInteger().with_variant(Integer(), "sqlite")


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"  # every try failed: kept for the admin, redelivered only on request


class EventRecord(Base):
    """The outbox: one row per event, written in the transaction of the change it reports."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(_SERIAL, primary_key=True, autoincrement=True)
    # The Standard Webhooks message id (webhook-id): the same on every delivery of the event.
    msg_id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(40))
    # The file (or upload) the event is about: deliveries keep this order per subject.
    subject: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    # When every endpoint that wants it had it delivered or dead-lettered; None: still owed.
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_events_subject", "subject", "id"),
        Index(
            "ix_events_unsettled",
            "created_at",
            postgresql_where=settled_at.is_(None),
            sqlite_where=settled_at.is_(None),
        ),
    )


class DeliveryRecord(Base):
    """One event to one endpoint: its state, and (in ``AttemptRecord``) every try."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(_SERIAL, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    # sha256 of the endpoint's URL: the unique key (a URL may be longer than an index allows).
    endpoint_id: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    # Tries since the delivery was opened or last redelivered (the backoff and the dead letter
    # count these); every try is also an AttemptRecord.
    tries: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id", name="uq_deliveries_event_endpoint"),
        Index("ix_deliveries_subject", "subject", "endpoint_id", "status"),
        Index("ix_deliveries_status", "status"),
    )


class AttemptRecord(Base):
    """One HTTP request of a delivery: the status code, or why there was none."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(_SERIAL, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_delivery_attempts_delivery", "delivery_id"),)


class ImportStatus(enum.StrEnum):
    IMPORTING = "importing"
    DONE = "done"
    FAILED = "failed"


class ImportRecord(Base):
    """A URL import: the uid its file will have, what to fetch, and how it went."""

    __tablename__ = "imports"

    uid: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=ImportStatus.IMPORTING.value)
    error: Mapped[str | None] = mapped_column(Text)
    # The request's options (filename, expected_sha256, max_downloads, expires_in, metadata).
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    owner: Mapped[str | None] = mapped_column(String(64))
    delete_token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
