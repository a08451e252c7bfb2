"""What the ingest path is tuned by: its own few fields, taken from ``Settings`` in one place."""

from __future__ import annotations

from dataclasses import dataclass, fields

from mediasvc.config import GiB, KiB, MiB, Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestConfig:
    """The ingest fields of ``Settings``, under the same names and defaults (config.py
    describes each)."""

    max_upload_size_bytes: int = 16 * GiB  # the file's own bytes; 0: unlimited
    io_chunk_size_bytes: int = 4 * MiB  # one batch buffer: hashed and written whole
    upload_buffer_budget_bytes: int = 256 * MiB  # the buffers of all uploads together
    body_idle_timeout_s: float = 60.0
    body_min_rate_bytes_per_s: int = 1024  # 0: off
    body_min_rate_window_s: float = 30.0
    multipart_max_parts: int = 16
    multipart_max_part_header_bytes: int = 8 * KiB
    max_uploads_in_flight: int = 128  # 0: no cap
    max_uploads_per_client: int = 0  # 0: no cap
    upload_retry_after_s: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestConfig:
        return cls(**{field.name: getattr(settings, field.name) for field in fields(cls)})
