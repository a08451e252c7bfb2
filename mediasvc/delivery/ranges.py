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

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.datastructures import Headers
from starlette.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send

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
    ranges = FileResponse._parse_ranges(spec, size)  # Starlette's per-spec parser
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


# Gives back bytes a download reserved but did not send (the client went away).
Refund = Callable[[int], Awaitable[None]]


class LocalFileResponse(FileResponse):
    """Starlette's FileResponse with our range rules, a read size from settings, and refunds."""

    def __init__(self, *args: Any, chunk_size: int, max_ranges: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunk_size = chunk_size
        self._max_ranges = max_ranges
        self._reserved_bytes = 0
        self._refund: Refund | None = None

    def planned_body_bytes(self, request_headers: Headers, size: int) -> int:
        """The file bytes this response will send: FileResponse's own Range/If-Range decision.

        Raises MalformedRange/RangeNotSatisfiable as the response itself would.
        """
        http_range = request_headers.get("range")
        if_range = request_headers.get("if-range")
        if http_range is None or (if_range is not None and not self._should_use_range(if_range)):
            return size
        ranges = self._parse_range_header(http_range, size)
        return sum(end - start for start, end in ranges) if ranges else size

    def refund_unsent(self, reserved_bytes: int, refund: Refund) -> None:
        """After sending, give back whatever part of ``reserved_bytes`` was not sent."""
        self._reserved_bytes = reserved_bytes
        self._refund = refund

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._refund is None:
            await super().__call__(scope, receive, send)
            return
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal sent
            await send(message)
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))

        try:
            await super().__call__(scope, receive, counting_send)
        finally:
            # Body bytes include multipart framing, so this errs towards refunding too little.
            unsent = self._reserved_bytes - min(sent, self._reserved_bytes)
            if unsent:
                with anyio.CancelScope(shield=True):
                    await self._refund(unsent)

    def _parse_range_header(self, http_range: str, file_size: int) -> list[tuple[int, int]]:  # type: ignore[override]
        return parse_range(http_range, file_size, max_ranges=self._max_ranges)
