"""Multipart sizing: parts grow with the object so that any object S3 accepts fits in 10,000 parts.

5 MiB parts × 10,000 parts reach only ~48.8 GiB; S3 objects go to 5 TiB. The part size is
``max(setting, ceil(size / 10,000))``, and the number of parts in flight shrinks as parts grow,
so the upload's memory stays within a budget (the client holds each part in flight in memory).
"""

from __future__ import annotations

import math

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB

MAX_PARTS = 10_000
MIN_PART_SIZE_BYTES = 5 * MiB  # S3's floor for every part but the last
MAX_PART_SIZE_BYTES = 5 * GiB
MAX_OBJECT_SIZE_BYTES = 5 * TiB


def part_size_for(size_bytes: int, part_size_bytes: int) -> int:
    """The part size for an object of ``size_bytes``: the setting, grown to fit 10,000 parts."""
    if size_bytes > MAX_OBJECT_SIZE_BYTES:
        raise ValueError(f"{size_bytes} bytes is over S3's 5 TiB object limit")
    return max(part_size_bytes, MIN_PART_SIZE_BYTES, math.ceil(size_bytes / MAX_PARTS))


def upload_concurrency_for(part_size_bytes: int, *, concurrency: int, buffer_bytes: int) -> int:
    """Parts in flight: the setting, lowered so parts in flight fit ``buffer_bytes`` (≥ 1)."""
    return max(1, min(concurrency, buffer_bytes // part_size_bytes))
