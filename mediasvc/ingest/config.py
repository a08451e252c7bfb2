"""What the ingest path is tuned by: its own few fields, taken from ``Settings`` in one place."""

from __future__ import annotations

from dataclasses import dataclass

from mediasvc.config import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestConfig:
    max_upload_size_bytes: int = 0  # the file's own bytes; 0: unlimited
    batch_bytes: int = 4 * 1024 * 1024  # one buffer: hashed and written as a whole
    buffer_budget_bytes: int = 256 * 1024 * 1024  # the buffers of all uploads together
    idle_timeout_s: float = 60.0
    min_rate_bytes_per_s: int = 0  # 0: off
    min_rate_window_s: float = 30.0
    multipart_max_parts: int = 16
    multipart_max_part_header_bytes: int = 8 * 1024
    max_uploads_in_flight: int = 0  # 0: no cap
    max_uploads_per_client: int = 0  # 0: no cap
    retry_after_s: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestConfig:
        return cls(
            max_upload_size_bytes=settings.max_upload_size_bytes,
            batch_bytes=settings.io_chunk_size_bytes,
            buffer_budget_bytes=settings.upload_buffer_budget_bytes,
            idle_timeout_s=settings.body_idle_timeout_s,
            min_rate_bytes_per_s=settings.body_min_rate_bytes_per_s,
            min_rate_window_s=settings.body_min_rate_window_s,
            multipart_max_parts=settings.multipart_max_parts,
            multipart_max_part_header_bytes=settings.multipart_max_part_header_bytes,
            max_uploads_in_flight=settings.max_uploads_in_flight,
            max_uploads_per_client=settings.max_uploads_per_client,
            retry_after_s=settings.upload_retry_after_s,
        )
