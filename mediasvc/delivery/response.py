"""One response for every byte source, local or cloud: ranges, a send timeout, bounded memory.

Built, not inherited (as ``starlette/staticfiles.py`` builds its responses): it takes the ranges
``delivery.ranges`` already parsed and owns its ``__call__``:
- the bytes come from a ``ByteSource`` opened before the route returned, so a file deleted
  after that is still sent whole and one deleted before is an error with a status, never a
  ``200`` whose body is missing;
- one range is a 206 with ``Content-Range``; several are ``multipart/byteranges``;
- each chunk is sent as parts of at most ``part_bytes``, each dropped once the server took it:
  a client that stops reading pins one chunk, not one per queued message;
- every send has a timeout (nginx's ``send_timeout``): a client that reads nothing that long is
  disconnected (``delivery.abort``), and its memory and descriptor are freed;
- the file bytes the server took are counted, so a budget reservation is settled with what was
  sent (the server's write buffer and the kernel's hold at most one part more).

A local file under a server that offers ASGI's Zero Copy Send (our uvicorn protocol, plain TCP)
goes with it instead: a ``http.response.zerocopysend`` message without an offset per range
(a budget reservation's lease is renewed beside it, by time), so the server sends it from the
file's position and moves the position past what the kernel took; that position is what is
counted, exact even when the client goes away mid-range, and what the send timeout watches
(``delivery.stall``): one message per range, because each costs a trip through the middleware
and a loop turn (a 64 MiB Range in 4 MiB messages spent twice the CPU of one message). Without
the extension (granian, TLS, an in-process test client) the bytes are read and sent as above.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from secrets import token_hex

import anyio
import anyio.lowlevel
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from mediasvc.config import Settings
from mediasvc.delivery.abort import abort_connection
from mediasvc.delivery.reservation import Reservation
from mediasvc.delivery.sources import ByteSource
from mediasvc.delivery.stall import Stalled, send_while_moving
from mediasvc.server import ZEROCOPY_EXTENSION

logger = logging.getLogger(__name__)

# How long we wait for the server to notice a connection we reset (it takes one loop turn).
RESET_NOTICE_S = 5.0


@dataclass(frozen=True, kw_only=True)
class SendConfig:
    """How a response reads and sends (the ``download_*`` settings)."""

    chunk_size_bytes: int
    part_bytes: int
    max_ranges: int
    send_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> SendConfig:
        return cls(
            chunk_size_bytes=settings.download_chunk_size_bytes,
            part_bytes=settings.download_send_part_bytes,
            max_ranges=settings.max_ranges,
            send_timeout_s=settings.download_send_timeout_s,
        )


class SendTimeout(Exception):
    """The client took nothing for the send timeout."""


class ByteRanges:
    """The ``multipart/byteranges`` framing (RFC 9110 §14.6) of ``ranges`` of a ``size`` file."""

    def __init__(self, ranges: list[tuple[int, int]], size: int, content_type: str) -> None:
        self.boundary = token_hex(13)
        self._size = size
        self._content_type = content_type
        self.content_length = sum(
            len(self.part_header(start, end)) + (end - start) + 2 for start, end in ranges
        ) + len(self.closing)

    def part_header(self, start: int, end: int) -> bytes:
        return (
            f"--{self.boundary}\r\nContent-Type: {self._content_type}\r\n"
            f"Content-Range: bytes {start}-{end - 1}/{self._size}\r\n\r\n"
        ).encode("latin-1")

    @property
    def closing(self) -> bytes:
        return f"--{self.boundary}--".encode("latin-1")


class SourceResponse(Response):
    """The body of ``source`` (or ``ranges`` of it, ``[]`` for all) with ``headers``.

    ``headers`` are the representation's (ETag, Last-Modified, Cache-Control, …); the length,
    range and type headers are set here.
    """

    def __init__(
        self,
        source: ByteSource,
        *,
        ranges: list[tuple[int, int]],
        media_type: str,
        headers: Mapping[str, str],
        config: SendConfig,
    ) -> None:
        # Response's own __init__ would render an empty body and claim Content-Length 0.
        self.status_code = 206 if ranges else 200
        self.media_type = media_type
        self.background = None
        self.init_headers({**headers, "accept-ranges": "bytes"})
        self.source = source
        self.ranges = ranges
        self._config = config
        self._multipart: ByteRanges | None = None
        size = source.size
        if len(ranges) == 1:
            start, end = ranges[0]
            self.headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
            self.headers["content-length"] = str(end - start)
        elif ranges:
            self._multipart = ByteRanges(ranges, size, self.headers["content-type"])
            self.headers["content-type"] = (
                f"multipart/byteranges; boundary={self._multipart.boundary}"
            )
            self.headers["content-length"] = str(self._multipart.content_length)
        else:
            self.headers["content-length"] = str(size)
        self._reservation: Reservation | None = None
        self._disconnected = False
        self._completed = False
        self._zerocopy_fd: int | None = None  # the source's file, when the server sends it
        self.sent_bytes = 0  # source bytes (no multipart framing) the server took

    @property
    def body_bytes(self) -> int:
        """Source bytes a GET sends (what a budget reservation is for)."""
        return sum(end - start for start, end in self.ranges) if self.ranges else self.source.size

    def charge_to(self, reservation: Reservation) -> None:
        """Settle ``reservation`` with the bytes sent once the response ends, however it ends."""
        self._reservation = reservation

    async def discard(self) -> None:
        """The response will never run: release its source."""
        with anyio.CancelScope(shield=True):
            await self.source.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._respond(scope, receive, send)
        except SendTimeout:
            logger.warning(
                "dropped a download of %s: the client read nothing for %s s",
                self.source.name,
                self._config.send_timeout_s,
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
            with anyio.fail_after(self._config.send_timeout_s):
                await send(message)
        except TimeoutError as exc:
            raise SendTimeout from exc

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        start_message = {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }
        await self._timed_send(send, start_message)
        if scope["method"].upper() == "HEAD":
            await self._timed_send(send, {"type": "http.response.body", "body": b""})
            return

        zerocopy = ZEROCOPY_EXTENSION in scope.get("extensions", {})
        self._zerocopy_fd = self.source.descriptor() if zerocopy else None
        if self._zerocopy_fd is not None and self._reservation is None:
            # The server itself says when the client went away: a zero-copy send ends early,
            # and the file's position tells how far it got. Nothing to listen for, so no
            # second task (whose task group cost a fifth of a small Range's CPU time).
            await self._send_body(send)
            return
        timed_out = False
        async with anyio.create_task_group() as task_group:
            # A reservation's lease is renewed beside the send, by time: one message (a range
            # sent zero-copy) or one part may take a slow reader longer than the lease.
            task_group.start_soon(self._keep_renewed)

            async def stream() -> None:
                nonlocal timed_out
                try:
                    await self._send_body(send)
                except SendTimeout:
                    timed_out = True  # raised below, not wrapped in an ExceptionGroup
                finally:
                    task_group.cancel_scope.cancel()

            if self._zerocopy_fd is not None:
                await stream()  # the server itself says when the client went away
            else:
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

    async def _send_body(self, send: Send) -> None:
        multipart = self._multipart
        for start, end in self.ranges or [(0, self.source.size)]:
            if multipart is not None:
                await self._send_bytes(send, multipart.part_header(start, end))
            await self._send_range(send, start, end)
            if multipart is not None:
                await self._send_bytes(send, b"\r\n")
        if multipart is not None:
            await self._send_bytes(send, multipart.closing)
        await self._timed_send(send, {"type": "http.response.body", "body": b""})
        self._completed = not self._disconnected

    async def _keep_renewed(self) -> None:
        if self._reservation is not None:
            await self._reservation.keep_renewed()

    async def _send_bytes(self, send: Send, body: bytes) -> None:
        message = {"type": "http.response.body", "body": body, "more_body": True}
        await self._timed_send(send, message)

    async def _send_range(self, send: Send, start: int, end: int) -> None:
        if self._zerocopy_fd is not None:
            await self._sendfile_range(send, self._zerocopy_fd, start, end)
            return
        config = self._config
        position = start
        while position < end:
            size = min(config.chunk_size_bytes, end - position)
            parts = deque(
                await self.source.read(position, size, part_bytes=config.part_bytes, range_end=end)
            )
            if not parts:
                raise RuntimeError(f"{self.source.name} is shorter than expected")
            while parts:
                part = parts.popleft()
                await self._send_bytes(send, part)
                # uvicorn drops a send after a hang-up at once, without awaiting anything: one
                # loop turn lets the disconnect listener record the hang-up before we count the
                # part as sent (else the rest of the read is charged in one go).
                await anyio.lowlevel.checkpoint()
                if not self._disconnected:
                    self.sent_bytes += len(part)
                position += len(part)
                del part  # sent: let it go now, not when the chunk is done

    async def _sendfile_range(self, send: Send, fd: int, start: int, end: int) -> None:
        """The server sends the range from ``fd`` in one message; the file's position says how
        far it got, however the range ends, and must move at least once per send timeout."""
        os.lseek(fd, start, os.SEEK_SET)
        message = {"type": ZEROCOPY_EXTENSION, "file": fd, "count": end - start, "more_body": True}
        try:
            try:
                await send_while_moving(
                    functools.partial(send, message), fd, self._config.send_timeout_s
                )
            except Stalled as exc:
                raise SendTimeout from exc
            if os.lseek(fd, 0, os.SEEK_CUR) < end:
                self._disconnected = True  # the server sent what the kernel took, no more
        finally:
            self.sent_bytes += os.lseek(fd, 0, os.SEEK_CUR) - start


def not_modified(headers: Mapping[str, str]) -> Response:
    """A 304 with the validators and caching headers of the representation (RFC 9110 §15.4.5)."""
    kept = {"etag", "last-modified", "cache-control", "vary", "expires", "content-location"}
    return Response(
        status_code=304, headers={k: v for k, v in headers.items() if k.lower() in kept}
    )
