"""HTTP Range: Starlette's parser and FileResponse, with the few things they lack.

Starlette parses each byte-range-spec (single, suffix, open-ended), answers ``If-Range`` and
sends single ranges and ``multipart/byteranges``. What we add, in ``parse_range``:
- errors as our domain exceptions (problem+json), not plain-text 400/416 responses;
- RFC 9110 §14.2: a Range in a unit we don't know is ignored (the full 200), not a 400;
- RFC 9110 §15.5.17: unsatisfiable specs beside satisfiable ones are dropped, not a 416;
- ``max_ranges`` and the read size from settings instead of class attributes.
The same ranges drive the cloud-backed response, so both paths agree.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import FileResponse

from mediasvc.errors import MalformedRange, RangeNotSatisfiable


def parse_range(header: str, size: int, *, max_ranges: int) -> list[tuple[int, int]]:
    """Half-open byte ranges to send, sorted and merged; ``[]`` means the whole file (200).

    Raises ``MalformedRange`` (400) or ``RangeNotSatisfiable`` (416).
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or size == 0:
        # RFC 9110 §14.2: a server MUST ignore a range unit it does not understand. An empty
        # file has no byte to point at: it is sent whole (empty), as nginx does.
        return []
    if spec.count(",") + 1 > max_ranges:
        return []
    ranges = FileResponse._parse_ranges(spec, size)  # Starlette's per-spec parser
    if not ranges:
        raise MalformedRange("the Range header names no byte range")
    if any(start >= end for start, end in ranges if start < size):
        raise MalformedRange("a byte range ends before it starts")
    # RFC 9110 §15.5.17: 416 only when no range is satisfiable; Starlette refuses if any is not.
    satisfiable = sorted((start, end) for start, end in ranges if start < size)
    if not satisfiable:
        raise RangeNotSatisfiable(size)
    merged = [satisfiable[0]]
    for start, end in satisfiable[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end:
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    return merged


class LocalFileResponse(FileResponse):
    """Starlette's FileResponse with our range rules and a read size from settings."""

    def __init__(self, *args: Any, chunk_size: int, max_ranges: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunk_size = chunk_size
        self._max_ranges = max_ranges

    def _parse_range_header(self, http_range: str, file_size: int) -> list[tuple[int, int]]:  # type: ignore[override]
        return parse_range(http_range, file_size, max_ranges=self._max_ranges)
