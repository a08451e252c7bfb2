"""Download limits as a byte budget (docs/design.md, "Download limits").

A file with ``max_downloads = k`` may send ``k × size`` body bytes in all, plus a seek allowance
of half the file (at most 64 MiB): players seek and resume without using up a download, and
k + 1 full downloads never fit. Each GET reserves what it is about to send in one atomic UPDATE
and gives back what it did not send; HEAD and 304 cost nothing.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from mediasvc.db.file_row import FileRow
from mediasvc.db.models import FileRecord

MiB = 1024 * 1024
MAX_SEEK_ALLOWANCE_BYTES = 64 * MiB


def unit_bytes(size: int) -> int:
    """What one download costs; an empty file still counts one byte, so its limit holds."""
    return max(size, 1)


def budget_bytes(record: FileRecord | FileRow) -> int | None:
    if record.max_downloads is None:
        return None
    allowance = min(record.size // 2, MAX_SEEK_ALLOWANCE_BYTES)
    return record.max_downloads * unit_bytes(record.size) + allowance


def downloads_used(bytes_served: int, size: int) -> int:
    return -(-bytes_served // unit_bytes(size))


def downloads_settled(record: FileRecord) -> int:
    """The metadata's ``downloads``: ceil(bytes sent / size), leaving out what downloads still
    running hold (they may yet give it back)."""
    sent = (record.bytes_served or 0) - (record.bytes_reserved or 0)  # unset on a new row
    return downloads_used(max(0, sent), record.size)


def remaining_downloads(record: FileRecord | FileRow, bytes_served: int) -> int:
    assert record.max_downloads is not None
    return max(0, record.max_downloads - downloads_used(bytes_served, record.size))


def is_exhausted(record: FileRecord | FileRow, bytes_served: int) -> bool:
    """Every full download is used: what is left is only the seek allowance."""
    assert record.max_downloads is not None
    return bytes_served >= record.max_downloads * unit_bytes(record.size)


def is_prefetch(headers: Headers) -> bool:
    """Link previews and speculative loads announce themselves (Sec-Purpose, Purpose, X-Moz)."""
    values = (headers.get(name, "") for name in ("sec-purpose", "purpose", "x-moz"))
    return any("prefetch" in value.lower() for value in values)
