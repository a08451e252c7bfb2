"""One response for every download, local or cloud: ranges, a send timeout, bounded memory.

Starlette's FileResponse decides the headers (from a stat result) and If-Range; the body is ours:
- the bytes come from a ``ByteSource`` opened before the route returned, so a file deleted
  after that is still sent whole and one deleted before is an error with a status, never a
  ``200`` whose body is missing;
- each chunk is sent as parts of at most ``part_bytes``, each dropped once the server took it:
  a client that stops reading pins one chunk, not one per queued message;
- every send has a timeout (nginx's ``send_timeout``): a client that reads nothing that long is
  disconnected (``delivery.abort``), and its memory and descriptor are freed;
- the file bytes the server took are counted, so a budget reservation is settled with what was
  sent (the server's write buffer and the kernel's hold at most one part more).
"""

from __future__ import annotations

import logging
from collections import deque
from secrets import token_hex
from typing import Any

import anyio
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send

from mediasvc.config import Settings
from mediasvc.delivery.abort import abort_connection
from mediasvc.delivery.ranges import parse_range
from mediasvc.delivery.reservation import Reservation
from mediasvc.delivery.sources import ByteSource

logger = logging.getLogger(__name__)


# How long we wait for the server to notice a connection we reset (it takes one loop turn).
RESET_NOTICE_S = 5.0


def body_options(settings: Settings) -> dict[str, Any]:
    """The settings every FileBodyResponse takes."""
    return {
        "chunk_size": settings.download_chunk_size_bytes,
        "part_bytes": settings.download_send_part_bytes,
        "max_ranges": settings.max_ranges,
        "send_timeout_s": settings.download_send_timeout_s,
    }


class SendTimeout(Exception):
    """The client took nothing for the send timeout."""


class FileBodyResponse(FileResponse):
    def __init__(
        self,
        source: ByteSource,
        *,
        chunk_size: int,
        part_bytes: int,
        max_ranges: int,
        send_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(source.name, **kwargs)
        self.source = source
        self.chunk_size = chunk_size
        self._part_bytes = part_bytes
        self._max_ranges = max_ranges
        self._send_timeout_s = send_timeout_s
        self._reservation: Reservation | None = None
        self._ranges: list[tuple[int, int]] | None = None
        self._disconnected = False
        self._completed = False
        self.sent_bytes = 0  # file bytes (no multipart framing) the server took

    @property
    def size(self) -> int:
        assert self.stat_result is not None
        return self.stat_result.st_size

    def plan(self, request_headers: Headers, method: str) -> list[tuple[int, int]]:
        """The byte ranges to send, ``[]`` for the whole file; raises 400/416 errors."""
        if self._ranges is None:
            http_range = request_headers.get("range")
            if_range = request_headers.get("if-range")
            if (
                method not in ("GET", "HEAD")
                or http_range is None
                or (if_range is not None and not self._if_range_matches(if_range))
            ):
                self._ranges = []
            else:
                self._ranges = parse_range(http_range, self.size, max_ranges=self._max_ranges)
        return self._ranges

    def _if_range_matches(self, if_range: str) -> bool:
        """RFC 9110 §13.1.5: an exact, strong match of the ETag or the Last-Modified date."""
        if if_range.startswith("W/"):
            return False
        return if_range in (self.headers["etag"], self.headers["last-modified"])

    def planned_body_bytes(self, request_headers: Headers, method: str) -> int:
        ranges = self.plan(request_headers, method)
        return sum(end - start for start, end in ranges) if ranges else self.size

    def charge_to(self, reservation: Reservation) -> None:
        """Settle ``reservation`` with the bytes sent once the response ends, however it ends."""
        self._reservation = reservation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._respond(scope, receive, send)
        except SendTimeout:
            logger.warning(
                "dropped a download of %s: the client read nothing for %s s",
                self.source.name,
                self._send_timeout_s,
            )
            if abort_connection(scope):
                # Let the server see the reset before we return, so it does not take this for
                # an app that forgot to finish its response.
                with anyio.move_on_after(RESET_NOTICE_S):
                    while (await receive())["type"] != "http.disconnect":
                        pass
        finally:
            with anyio.CancelScope(shield=True):
                await self.source.aclose()
                if self._reservation is not None:
                    # A whole body costs the whole reservation (an empty file's one byte too).
                    whole = self._reservation.reserved_bytes if self._completed else 0
                    await self._reservation.settle(max(self.sent_bytes, whole))

    async def _timed_send(self, send: Send, message: Message) -> None:
        try:
            with anyio.fail_after(self._send_timeout_s):
                await send(message)
        except TimeoutError as exc:
            raise SendTimeout from exc

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"].upper()
        ranges = self.plan(Headers(scope=scope), method)
        headers = MutableHeaders(raw=list(self.raw_headers))
        status = self.status_code
        boundary = ""
        if len(ranges) == 1:
            start, end = ranges[0]
            status = 206
            headers["content-range"] = f"bytes {start}-{end - 1}/{self.size}"
            headers["content-length"] = str(end - start)
        elif ranges:
            status = 206
            boundary = token_hex(13)
            length, _ = self.generate_multipart(
                ranges, boundary, self.size, self.headers["content-type"]
            )
            headers["content-type"] = f"multipart/byteranges; boundary={boundary}"
            headers["content-length"] = str(length)
        start_message = {"type": "http.response.start", "status": status, "headers": headers.raw}
        await self._timed_send(send, start_message)
        if method == "HEAD":
            await self._timed_send(send, {"type": "http.response.body", "body": b""})
            return

        timed_out = False
        async with anyio.create_task_group() as task_group:

            async def stream() -> None:
                nonlocal timed_out
                try:
                    await self._send_body(send, ranges or [(0, self.size)], boundary)
                except SendTimeout:
                    timed_out = True  # raised below, not wrapped in an ExceptionGroup
                finally:
                    task_group.cancel_scope.cancel()

            task_group.start_soon(stream)
            # Servers on ASGI < 2.4 (uvicorn) drop sends after a disconnect without a word:
            # listen for it, or the rest of the file would be read for nobody.
            while True:
                if (await receive())["type"] == "http.disconnect":
                    self._disconnected = True
                    task_group.cancel_scope.cancel()
                    break
        if timed_out:
            raise SendTimeout

    async def _send_body(self, send: Send, ranges: list[tuple[int, int]], boundary: str) -> None:
        frame = None
        if boundary:
            _, frame = self.generate_multipart(
                ranges, boundary, self.size, self.headers["content-type"]
            )
        for start, end in ranges:
            if frame is not None:
                await self._send_bytes(send, frame(start, end))
            await self._send_file_range(send, start, end)
            if frame is not None:
                await self._send_bytes(send, b"\r\n")
        if frame is not None:
            await self._send_bytes(send, f"--{boundary}--".encode("latin-1"))
        await self._timed_send(send, {"type": "http.response.body", "body": b""})
        self._completed = not self._disconnected

    async def _send_bytes(self, send: Send, body: bytes) -> None:
        message = {"type": "http.response.body", "body": body, "more_body": True}
        await self._timed_send(send, message)

    async def _send_file_range(self, send: Send, start: int, end: int) -> None:
        position = start
        while position < end:
            size = min(self.chunk_size, end - position)
            parts = deque(
                await self.source.read(position, size, part_bytes=self._part_bytes, range_end=end)
            )
            if not parts:
                raise RuntimeError(f"{self.source.name} is shorter than expected")
            while parts:
                part = parts.popleft()
                await self._send_bytes(send, part)
                if not self._disconnected:
                    self.sent_bytes += len(part)
                position += len(part)
                del part  # sent: let it go now, not when the chunk is done
            if self._reservation is not None:
                await self._reservation.keep_alive()
