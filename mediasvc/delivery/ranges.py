"""HTTP Range (RFC 9110 §14): the header is parsed once, here, into the ranges to send.

Single, suffix and open-ended byte-range-specs, sorted and merged; ``delivery.response`` sends
one range as a 206 and several as ``multipart/byteranges``. The rules, as Starlette's
FileResponse has them, with what it lacks:
- errors as our domain exceptions (problem+json, 416 with ``Content-Range: bytes */size``);
- RFC 9110 §14.2: a Range in a unit we don't know is ignored (the full 200), not a 400;
- RFC 9110 §15.5.17: unsatisfiable specs beside satisfiable ones are dropped, not a 416;
- more specs than ``max_ranges`` (a setting), or a pathological set: the full 200;
- ``If-Range`` (§13.1.5): the ranges only if the validator matches exactly, else the full 200.
Every source (local file, cloud object) gets the same ranges, so all paths agree.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from mediasvc.errors import MalformedRange, RangeNotSatisfiable

MAX_OVERLAPPING_RANGES = 2
MAX_UNORDERED_RANGES = 10


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
    ranges = _parse_specs(spec, size)
    if not ranges:
        raise MalformedRange("the Range header names no byte range")
    if any(start >= end for start, end in ranges if start < size):
        raise MalformedRange("a byte range ends before it starts")
    # RFC 9110 §15.5.17: 416 only when no range is satisfiable; Starlette refuses if any is not.
    requested = [(start, end) for start, end in ranges if start < size]
    if not requested:
        raise RangeNotSatisfiable(size)
    if _is_pathological(requested, size):
        return []
    satisfiable = sorted(requested)
    merged = [satisfiable[0]]
    for start, end in satisfiable[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end:  # overlapping or adjacent: one part
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    return merged


def requested_ranges(
    headers: Headers,
    method: str,
    size: int,
    *,
    etag: str,
    last_modified: str,
    max_ranges: int,
) -> list[tuple[int, int]]:
    """What a request asks to be sent: ranges, or ``[]`` for the whole representation.

    ``etag`` and ``last_modified`` are the response's own header values, for ``If-Range``.
    """
    http_range = headers.get("range")
    if method not in ("GET", "HEAD") or http_range is None:
        return []
    if_range = headers.get("if-range")
    # RFC 9110 §13.1.5: an exact, strong match of the ETag or the Last-Modified date.
    if if_range is not None and (
        if_range.startswith("W/") or if_range not in (etag, last_modified)
    ):
        return []
    return parse_range(http_range, size, max_ranges=max_ranges)


def _parse_specs(spec: str, size: int) -> list[tuple[int, int]]:
    """Each byte-range-spec as a half-open ``(start, end)``, clamped to the file; junk skipped.

    ``first-last`` (``last`` past the end reads to the end), ``first-``, and the suffix
    ``-length``. A start past the end is kept, for the caller to call it unsatisfiable.
    """
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        first, last = first.strip(), last.strip()
        if not dash or not (first or last) or not _digits(first) or not _digits(last):
            continue
        if not first:
            ranges.append((max(size - int(last), 0), size))
        elif last and int(last) < size:
            ranges.append((int(first), int(last) + 1))
        else:
            ranges.append((int(first), size))
    return ranges


def _digits(text: str) -> bool:
    """RFC 9110 1*DIGIT, or empty: not ``int()``'s signs, underscores or non-ASCII digits."""
    return text == "" or (text.isascii() and text.isdigit())


def _is_pathological(requested: list[tuple[int, int]], size: int) -> bool:
    """RFC 9110 §14.2 range sets a server may ignore, which we answer with the whole file.

    More than two overlapping ranges; more bytes asked than the file has (each overlap costs a
    re-read); many small ranges out of ascending order (each costs a seek). The whole file is
    then the cheapest correct answer: one sequential read, no multipart framing.
    """
    if len(requested) < 2:
        return False
    if sum(end - start for start, end in requested) > size:
        return True
    ordered = sorted(requested)
    # A range overlaps if it starts before the furthest end so far, not just the previous
    # range's end: comparing neighbours only missed ranges nested in an earlier, longer one
    # (`0-49,1-1,3-3,5-5` counted one overlap, not three). Found by tests/test_properties.py.
    overlaps, reach = 0, -1
    for start, end in ordered:
        overlaps += start < reach
        reach = max(reach, end)
    if overlaps > MAX_OVERLAPPING_RANGES:
        return True
    return len(requested) > MAX_UNORDERED_RANGES and requested != ordered
