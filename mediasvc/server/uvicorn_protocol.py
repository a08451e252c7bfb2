"""Our uvicorn protocol: uvicorn's httptools protocol with a bounded and timed header block.

This is the ONLY module that may touch uvicorn's internals (``HttpToolsProtocol``, its
attributes and callbacks). What it relies on is pinned by ``tests/test_uvicorn_protocol.py``,
so an uvicorn upgrade that moves any of it fails there first. Keep the overrides minimal.

Why it exists: ASGI gives the app a request only once its headers are complete, and uvicorn's
parser (httptools) bounds neither their size nor the time they take. A 200 MB header was read
whole (41.7 s, +393 MB RSS) before the app's 431, and connections trickling a header line every
few seconds were never closed. So here, as nginx does (``large_client_header_buffers``,
``client_header_timeout``):

- a request's header block (request line, header lines, the blank line) is counted as its bytes
  go into the parser; a block longer than ``max_header_bytes`` gets no more bytes into the
  parser: the client gets 431 (problem+json, ``HeadersTooLarge``) and the connection is closed;
- a header block must be complete within ``header_timeout_s``: counted from the accept for a
  connection's first request (so a connection that sends nothing is closed too) and from the
  first byte for later ones (uvicorn's ``timeout_keep_alive`` covers the idle time between
  requests). A request that has begun gets 408 (``RequestTimeout``); a connection that sent no
  request is just closed.

A request body is not parsed free of charge either. A chunked body's framing (each chunk-size
line with its extensions and, after the last chunk, the trailer section) goes into the same
parser, and uvicorn keeps every trailer line in the request's header list: 300 MB of trailers
behind a 5-byte body were read and kept whole. So:

- the framing since the last complete chunk counts like a header block: over
  ``max_header_bytes``, no more bytes go to the parser; the request gets 431 if its response has
  not begun (its app sees a disconnect), and the connection is closed. Trailers are never handed
  to the app (``on_header`` drops them: we use none). Body pieces of a chunked request go to the
  parser at most as many bytes as the framing may still take, so the count is exact up to the
  piece in which the request's headers ended (itself within the header limit);
- after a chunk-size line, the chunk's data must begin, or for the last chunk the trailer section
  end, within ``header_timeout_s``: 408 (or a close once a response has begun).

And a response can complete before its request body is read (``/healthz`` with a body, a 413
refusing an upload early). uvicorn would then read and discard the rest of the body to reach the
next request on the connection, for as long as the client trickles it (10 GB declared, a byte
every few seconds: held forever). So, as nginx's lingering close: the connection is not kept
alive; nothing more is parsed, our side is shut for writing (the client sees the response end
and the close), and what still arrives is discarded for at most ``lingering_close_s`` (so a
close does not turn into a reset before the client read the response), then it is closed.
Responses to fully read requests keep the connection alive as before.

It also offers the app the ``ABORT_EXTENSION`` (``mediasvc.server``): a way to drop a connection
whose client stopped reading, which a download's send timeout needs.

And ASGI's "Zero Copy Send" extension (``http.response.zerocopysend``), which uvicorn lacks: the
app hands over a file descriptor, an offset and a count, and the bytes go from the page cache to
the socket with ``os.sendfile`` instead of through Python (the section "zero-copy send" below).

And the ``INFORMATIONAL_EXTENSION``: an interim (1xx) response before the final one, which ASGI
cannot express (the IETF resumable upload draft's 104 Upload Resumption Supported; the section
"informational responses" below, class ``InformationalSender``).

And a request's body read ahead is not lost when its client goes: uvicorn's ``receive()`` answers
``http.disconnect`` as soon as the connection is lost, dropping the body bytes it had already
received for the app (up to a few hundred KiB). A resumable upload keeps every byte that reached
the server, so the app gets them first (the section "body read ahead" below, ``KeptReadAhead``),
in a message marked ``DISCONNECTED_KEY`` (``mediasvc.server``): part of the extension, so an app
whose answer matters (a plain upload) can tell a body whose client is gone from a whole one.

What it overrides or touches of ``HttpToolsProtocol``, all pinned by the tests: ``data_received``
(what reaches the parser), the parser callbacks ``on_message_begin``, ``on_header`` (drops
trailers), ``on_headers_complete``, ``on_body``, ``on_chunk_header``, ``on_chunk_complete``,
``on_message_complete``, and ``on_response_complete`` (the lingering close); its ``cycle``
(``response_started``/``response_complete``, ``keep_alive``, ``disconnected``,
``message_event``), ``pipeline``, ``flow``, ``headers``, ``_unset_keepalive_if_required``;
for the zero-copy send, ``_start_asgi_task`` (to wrap the app's ``send``), the cycle's ``send``,
``scope``, ``chunked_encoding``, ``expected_content_length`` and ``flow.write_paused``/``drain``;
for informational responses, the ``scope`` and ``cycle`` that ``on_headers_complete`` builds;
for the body read ahead, the cycle's ``receive``, ``body``, ``more_body``, ``disconnected`` and
``response_complete``.

uvicorn instantiates the protocol itself, so the limits ride in a ``functools.partial``
(:func:`protocol_factory`); unlike a class built at run time, it survives the pickling that
starts uvicorn's worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from mediasvc.api.problems import problem_for
from mediasvc.errors import HeadersTooLarge, MediaServiceError, RequestTimeout
from mediasvc.server import (
    ABORT_EXTENSION,
    DISCONNECTED_KEY,
    INFORMATIONAL_EXTENSION,
    ZEROCOPY_EXTENSION,
    zerocopy_descriptor,
)

if TYPE_CHECKING:
    from mediasvc.config import Settings


@dataclass(frozen=True)
class HeaderLimits:
    max_header_bytes: int
    header_timeout_s: float
    lingering_close_s: float


class MediasvcHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` whose header blocks (and chunk framing) are bounded in bytes and
    in time, and whose connections close (lingering) after a response to an unread body."""

    def __init__(self, *args: Any, limits: HeaderLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._header_bytes = 0  # of the open header block, or of the next one if none is open
        self._in_message = False  # between the parser's message begin and message complete
        self._in_header_block = False  # between message begin and headers complete
        self._message_begins = 0
        self._headers_completed = 0
        # A chunked body: its framing since the last complete chunk (an upper bound), and the
        # body bytes and chunk ends seen by the piece being parsed.
        self._framed = False
        self._framing_bytes = 0
        self._piece_body_bytes = 0
        self._chunks_completed = 0
        # The header block's timer, or in a chunked body the chunk framing's (never both).
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False  # a header block or framing was refused: nothing more is parsed
        self._lingering = False  # a response went out before its body: discard, then close
        self._zerocopy: ZeroCopySender | None = None  # set once connected, where sendfile works

    # --- the connection -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that never sends a byte is closed too
        self._zerocopy = ZeroCopySender.for_transport(transport, self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)
        if self._zerocopy is not None:
            self._zerocopy.connection_lost()

    def data_received(self, data: bytes) -> None:
        if self._refused or self._lingering:
            return
        if not self._in_message:
            self._arm_header_timer()  # the first byte of a request (or a stray blank line)
        self._feed_all(memoryview(data))  # slices of a view: no copies of the rest of a read

    def _feed_all(self, data: memoryview) -> None:
        while data:
            if self._in_message and not self._in_header_block:
                if not self._framed:
                    # A Content-Length body: bounded by uvicorn's flow control and the app.
                    piece, data = data, data[:0]
                else:
                    # A chunked body: the parser gets no framing byte past the limit.
                    room = self.limits.max_header_bytes - self._framing_bytes
                    if room <= 0:
                        self._refuse_framing(self._too_large("the request's chunk framing exceeds"))
                        return
                    piece, data = data[:room], data[room:]
            else:
                # A header block is open or may start here: the parser gets no byte past the limit.
                room = self.limits.max_header_bytes - self._header_bytes
                if room <= 0:
                    self._refuse_header_block()
                    return
                piece, data = data[:room], data[room:]
            if not self._feed(piece):
                return

    def _feed(self, piece: memoryview) -> bool:
        """Parse ``piece``; count it against the header block or the chunk framing left open.
        False: stop feeding."""
        was_idle = not self._in_message
        begins, completed, chunks = (
            self._message_begins,
            self._headers_completed,
            self._chunks_completed,
        )
        self._piece_body_bytes = 0
        super().data_received(piece)  # type: ignore[arg-type]  # feed_data takes any buffer
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return False  # a parse error answered 400 and closed, or an upgrade took over
        if self._in_header_block:
            began = self._message_begins - begins
            if began == 0:
                self._header_bytes += len(piece)  # the block was open through the whole piece
            elif began == 1 and was_idle:
                self._header_bytes = len(piece)  # it began at the piece's start (blank lines aside)
            else:
                # It began after other requests in this piece, at an offset httptools does not
                # tell: count it from the next piece on (at most one socket read too lenient).
                self._header_bytes = 0
        elif self._in_message and self._framed and self._headers_completed == completed:
            # Its framing: what was not body. After a chunk's end within the piece, all of the
            # piece's framing is counted (an upper bound: httptools does not tell the offset).
            framing = len(piece) - self._piece_body_bytes
            if self._chunks_completed == chunks:
                self._framing_bytes += framing
            else:
                self._framing_bytes = framing
        return True

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._in_header_block = True
        self._message_begins += 1
        self._arm_header_timer()  # unless armed: a request that began behind another one
        super().on_message_begin()
        extensions = self.scope.setdefault("extensions", {})
        extensions[ABORT_EXTENSION] = {"abort": self._abort}
        if self._zerocopy is not None:
            extensions[ZEROCOPY_EXTENSION] = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_header_block:
            super().on_header(name, value)
        # else a trailer field: dropped (uvicorn would append it to the request's headers)

    def on_headers_complete(self) -> None:
        self._in_header_block = False
        self._header_bytes = 0
        self._headers_completed += 1
        self._framed = any(name == b"transfer-encoding" for name, _ in self.headers)
        self._framing_bytes = 0
        self._cancel_timer()
        super().on_headers_complete()
        InformationalSender.offer(self)
        KeptReadAhead.install(self)

    def on_body(self, body: bytes) -> None:
        self._piece_body_bytes += len(body)
        if self._framed:
            self._cancel_timer()  # the chunk's data began
        super().on_body(body)

    def on_chunk_header(self) -> None:
        # Its data follows, or, for the last chunk, the trailer section: either within the
        # header timeout.
        self._cancel_timer()
        self._timer = self.loop.call_later(self.limits.header_timeout_s, self._framing_timeout)

    def on_chunk_complete(self) -> None:
        self._chunks_completed += 1
        self._cancel_timer()

    def on_message_complete(self) -> None:
        self._in_message = False
        self._cancel_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # The parser is inside this response's own request body (a later request would be
        # queued in the pipeline): it was not read whole.
        body_unread = self._in_message and not self._in_header_block and not self.pipeline
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._refused:
            self.transport.close()  # a refused request was pipelined behind this response
        elif body_unread:
            self._linger()

    # --- refusing ----------------------------------------------------------------------------

    def _response_in_flight(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse_header_block(self) -> None:
        self._refused = True
        self._cancel_timer()
        self.logger.warning(
            "%s: request headers over %d bytes refused", self._peer(), self.limits.max_header_bytes
        )
        if self._response_in_flight():
            # Pipelined behind a response still going out, which a 431 must not interleave with:
            # read nothing more and close once that response is complete.
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self._answer_and_close(self._too_large("the request headers exceed"))

    def _too_large(self, what: str) -> HeadersTooLarge:
        return HeadersTooLarge(f"{what} {self.limits.max_header_bytes} bytes, the most accepted")

    def _refuse_framing(self, error: MediaServiceError) -> None:
        """Refuse the request whose chunked body is being parsed: nothing more is parsed."""
        self._refused = True
        self._cancel_timer()
        self.logger.warning("%s: %s", self._peer(), error.detail)
        if self.pipeline:
            # Its app has not started: a response ahead of it is still going out. Drop the
            # request; the connection closes once that response is complete.
            self.pipeline.clear()
            self.flow.pause_reading()
            return
        started = self.cycle.response_started
        # Its app sees a disconnect, and what it still sends is dropped.
        self.cycle.disconnected = True
        self.cycle.message_event.set()
        if started:
            self.transport.close()  # a response has begun: there is no answering any more
        else:
            self._answer_and_close(error)

    def _arm_header_timer(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._response_in_flight():
            # Early bytes of a pipelined request: the response ahead of it is the app's to time.
            self._arm_header_timer()
            return
        if not self._in_message:
            self.transport.close()  # no request at all: nobody to answer
            return
        self.logger.warning(
            "%s: request headers not complete after %g s",
            self._peer(),
            self.limits.header_timeout_s,
        )
        self._refused = True
        self._answer_and_close(
            RequestTimeout(
                f"the request headers did not arrive within {self.limits.header_timeout_s:g} s"
            )
        )

    def _framing_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._refused or self._lingering:
            return
        if self.pipeline:
            # Reading is paused behind a response still going out: not the client's delay.
            self._timer = self.loop.call_later(self.limits.header_timeout_s, self._framing_timeout)
            return
        self._refuse_framing(
            RequestTimeout(
                "the request's chunk data or trailer section did not arrive within "
                f"{self.limits.header_timeout_s:g} s"
            )
        )

    def _answer_and_close(self, error: MediaServiceError) -> None:
        """Write ``error`` as problem+json (as the app would) with ``Connection: close``."""
        response = problem_for(error)
        head = [f"HTTP/1.1 {error.status} {error.title}\r\n".encode("ascii")]
        for name, value in [*self.server_state.default_headers, *response.raw_headers]:
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + bytes(response.body))
        self.transport.close()

    # --- lingering close ---------------------------------------------------------------------

    def _linger(self) -> None:
        """The response is out, its request body is not: close, but not at once. A close with
        unread data makes the kernel send a reset, which can destroy the response before the
        client read it; so shut our side, discard what arrives, close after a bounded while."""
        self._lingering = True
        self._cancel_timer()
        self._unset_keepalive_if_required()  # not kept alive: uvicorn's idle timer is moot
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client sees the end (after the response)
        self._timer = self.loop.call_later(self.limits.lingering_close_s, self._end_linger)

    def _end_linger(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size():
            self._abort()  # the client does not even read its response: it holds nothing more
        else:
            self.transport.close()

    def _abort(self) -> None:
        """Reset the connection: the kernel drops what it still holds for it too (SO_LINGER 0);
        ``transport.abort()`` alone drops only our buffer and leaves the kernel flushing its own."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client"

    # --- zero-copy send (the ASGI extension; the sending is ZeroCopySender's) -----------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        sender = self._zerocopy
        if sender is not None:
            app = functools.partial(_with_zerocopy_send, app, cycle, sender)
        super()._start_asgi_task(cycle, app)


# --- zero-copy send ----------------------------------------------------------------------------
#
# ASGI's "Zero Copy Send" extension (asgiref docs/extensions.rst): after ``http.response.start``
# the app may send ``{"type": "http.response.zerocopysend", "file": f, "offset": o, "count": n,
# "more_body": b}``, mixed with ``http.response.body`` messages, as often as it likes; it behaves
# as a body message of those bytes. ``file`` is a descriptor or an object with ``fileno()``;
# without ``offset`` the file's position is used, and (as ``socket.sendfile``) moved past what
# was sent, so the app can tell how much went out even when the client went away mid-way; without
# ``count``, up to the file's end. The app closes the file.
#
# It is offered on plain-TCP connections only (with TLS the kernel cannot see the plaintext).
# Neither uvloop nor asyncio's ``loop.sendfile`` fits: uvloop has none, and both refuse a watcher
# on a transport's descriptor. So the bytes go with ``os.sendfile`` on the socket, non-blocking;
# when the kernel's buffer is full we wait for writability on a duplicate of the descriptor,
# watched from the message's first full buffer to its end (one watcher per message, not per
# wait: a 64 MiB Range fills the buffer ~20 times) and closed then, so an abort's reset is never
# delayed by it. Without ``offset`` the kernel moves the file's position as it sends, so the app
# can watch a long send progress (the download's send timeout). Order is kept: what uvicorn
# buffered (the head, earlier body messages) is flushed first; flow control is honoured (a paused
# transport is drained first, a full socket waited on); a client that went away ends the send
# with what the kernel took (the connection is aborted, the app sees ``http.disconnect``), as
# uvicorn drops a body message after a disconnect.


async def _with_zerocopy_send(
    app: Any,
    cycle: RequestResponseCycle,
    sender: ZeroCopySender,
    scope: Any,
    receive: Any,
    send: Any,
) -> None:
    """``app`` with a ``send`` that takes zero-copy messages (``_start_asgi_task`` wraps it)."""

    async def send_or_sendfile(message: Any) -> None:
        if message["type"] == ZEROCOPY_EXTENSION:
            await sender.send(cycle, message)
        else:
            await send(message)

    await app(scope, receive, send_or_sendfile)


class ZeroCopySender:
    """Sends file ranges of one connection's responses with ``os.sendfile``."""

    def __init__(
        self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, socket_fd: int
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._socket_fd = socket_fd
        self._waiter: asyncio.Future[None] | None = None
        self._watched_fd: int | None = None  # a duplicate of the socket, while a send waits

    @classmethod
    def for_transport(
        cls, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop
    ) -> ZeroCopySender | None:
        """None where the bytes can't go straight to the socket (TLS, no socket, no sendfile)."""
        if transport.get_extra_info("sslcontext") is not None or not hasattr(os, "sendfile"):
            return None
        sock = transport.get_extra_info("socket")
        fileno = getattr(sock, "fileno", None)
        socket_fd = fileno() if fileno is not None else -1
        return cls(transport, loop, socket_fd) if socket_fd >= 0 else None

    def connection_lost(self) -> None:
        self._wake()

    async def send(self, cycle: RequestResponseCycle, message: Any) -> None:
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected:
            return  # as uvicorn drops a body message after a disconnect
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"Unexpected ASGI message {ZEROCOPY_EXTENSION!r} at this point.")
        fd = zerocopy_descriptor(message)
        more_body = bool(message.get("more_body", False))
        offset = message.get("offset")
        from_position = offset is None
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        count = message.get("count")
        if count is None:
            count = max(0, os.fstat(fd).st_size - offset)
        if cycle.scope["method"] == "HEAD":
            count = 0  # uvicorn sends no body bytes for HEAD
        chunked = bool(cycle.chunked_encoding)
        if not chunked and count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        sent = 0
        try:
            if count:
                if chunked:
                    self._transport.write(b"%x\r\n" % count)
                # From the file's position, the kernel moves it as it sends.
                sent = await self._sendfile(cycle, fd, None if from_position else offset, count)
        finally:
            if not chunked:
                cycle.expected_content_length -= sent
        if sent < count:
            return  # the client went away
        if chunked and count:
            self._transport.write(b"\r\n")
        if not more_body:
            # uvicorn completes the response: the last chunk, keep-alive or close, the pipeline.
            await cycle.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _sendfile(
        self, cycle: RequestResponseCycle, fd: int, offset: int | None, count: int
    ) -> int:
        """Bytes of ``fd`` the kernel took for the socket: ``count``, or fewer if the client went
        away. From ``offset``, or the file's position (moved as it goes) when None. Raises
        RuntimeError if the file ends first."""
        sent = 0
        try:
            while self._transport.get_write_buffer_size() and not self._gone(cycle):
                await self._writable()  # what uvicorn buffered goes first
            while sent < count and not self._gone(cycle):
                try:
                    at = None if offset is None else offset + sent
                    sent += self._sendfile_once(fd, at, count - sent)
                except BlockingIOError:
                    await self._writable()
                except OSError as exc:
                    if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                        raise
                    self._transport.abort()  # uvicorn sees the loss; the app a disconnect
                    break
        finally:
            self._unwatch()
        # A client that takes everything at once never makes us wait: one loop turn per message
        # all the same, or a whole file's messages would starve every other connection.
        await asyncio.sleep(0)
        return sent

    def _sendfile_once(self, fd: int, offset: int | None, count: int) -> int:
        sent = os.sendfile(self._socket_fd, fd, offset, count)
        if sent == 0:
            raise RuntimeError(f"the file ended {count} bytes before the range sent from it")
        return sent

    def _gone(self, cycle: RequestResponseCycle) -> bool:
        return cycle.disconnected or self._transport.is_closing()

    async def _writable(self) -> None:
        """Until the socket takes more (or the connection is lost)."""
        if self._watched_fd is None:
            # The loop refuses a watcher on the transport's own descriptor; kept before it is
            # watched, so that _unwatch closes it whatever happens next.
            self._watched_fd = os.dup(self._socket_fd)
            self._loop.add_writer(self._watched_fd, self._wake)
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _unwatch(self) -> None:
        fd, self._watched_fd = self._watched_fd, None
        if fd is not None:
            try:
                self._loop.remove_writer(fd)
            finally:
                os.close(fd)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


# --- informational responses ---------------------------------------------------------------------
#
# A 1xx response is a status line and header fields, written before the final response on the
# same connection (RFC 9110 15.2); a client may get several. HTTP/1.0 clients get none (RFC 9110
# forbids it). It goes out only while the request's final response has not begun: uvicorn writes
# nothing of its own for a request before that, but its 100 Continue, which is a 1xx too, so the
# order of the two does not matter.


class InformationalSender:
    """Writes the 1xx responses of one request (uvicorn's ``RequestResponseCycle``)."""

    def __init__(self, protocol: MediasvcHttpProtocol, cycle: Any) -> None:
        self._protocol = protocol
        self._cycle = cycle

    @classmethod
    def offer(cls, protocol: MediasvcHttpProtocol) -> None:
        """Put the extension in the scope of the request whose headers just completed (its app
        has not run yet: uvicorn only scheduled it)."""
        scope, cycle = protocol.scope, protocol.cycle
        if scope.get("http_version") != "1.1" or cycle is None or cycle.scope is not scope:
            return  # HTTP/1.0, or an upgrade took the connection (no cycle was built)
        sender = cls(protocol, cycle)
        scope.setdefault("extensions", {})[INFORMATIONAL_EXTENSION] = {"send": sender.send}

    def send(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """Write ``status`` (100..199, not 101) with ``headers`` now; False if it is too late."""
        if not 100 <= status <= 199 or status == 101:
            raise ValueError(f"{status} is not an informational status an app may send")
        cycle, transport = self._cycle, self._protocol.transport
        if cycle.response_started or cycle.disconnected or transport.is_closing():
            return False
        reason = _INFORMATIONAL_REASONS.get(status, b"Informational")
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for name, value in headers:
            if b"\r" in name + value or b"\n" in name + value:
                raise ValueError("a header of an informational response has a line break")
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(b"\r\n")
        transport.write(b"".join(head))
        return True


_INFORMATIONAL_REASONS = {
    100: b"Continue",
    102: b"Processing",
    103: b"Early Hints",
    104: b"Upload Resumption Supported",
}


# --- body read ahead ---------------------------------------------------------------------------
#
# uvicorn appends each body piece the parser gives it to ``cycle.body`` (pausing the socket's reads
# past 64 KiB held; one read brings up to 256 KiB), and ``receive()`` hands that over. When the
# connection is lost, ``connection_lost`` sets ``cycle.disconnected``, and from then on
# ``receive()`` answers ``http.disconnect`` and never the bytes still in ``cycle.body``: they had
# crossed the network and were received, yet an app that keeps what arrived (a cut resumable
# upload) never sees them, and its client sends them again. So those bytes come first, as one more
# ``http.request`` marked ``DISCONNECTED_KEY`` (its client reads no answer, even when it ends the
# body), then the disconnect. Nothing changes once the response is complete (uvicorn then
# discards the body too), nor for a connection still open.


class KeptReadAhead:
    """The ``receive`` of one request (uvicorn's ``RequestResponseCycle``) that hands over the
    body bytes already received before it reports a disconnect."""

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle
        self._receive = cycle.receive  # uvicorn's own, bound to the cycle

    @classmethod
    def install(cls, protocol: MediasvcHttpProtocol) -> None:
        """Give the cycle whose headers just completed this ``receive``. uvicorn's
        ``run_asgi`` passes ``self.receive`` to the app when the task runs, which has not
        happened yet (it was only scheduled, or queued behind a pipelined response)."""
        cycle = protocol.cycle
        if cycle is None or cycle.scope is not protocol.scope:
            return  # an upgrade took the connection (no cycle was built)
        cycle.receive = cls(cycle).receive  # type: ignore[method-assign]

    async def receive(self) -> Any:
        message = await self._receive()
        cycle = self._cycle
        if message["type"] == "http.disconnect" and cycle.body and not cycle.response_complete:
            # Reset as uvicorn's own receive() does (0.54: a bytearray, its declared type).
            body, cycle.body = bytes(cycle.body), bytearray()
            # more_body as the parser left it: False if the whole body arrived before the loss.
            # The next call answers the disconnect (uvicorn's, as ``disconnected`` stays set).
            return {
                "type": "http.request",
                "body": body,
                "more_body": cycle.more_body,
                DISCONNECTED_KEY: True,
            }
        return message


def protocol_factory(limits: HeaderLimits) -> type[asyncio.Protocol]:
    """What to pass as ``uvicorn.run(http=…)``: uvicorn calls it as it would the class."""
    factory = functools.partial(MediasvcHttpProtocol, limits=limits)
    return cast("type[asyncio.Protocol]", factory)


def limits_from(settings: Settings) -> HeaderLimits:
    return HeaderLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        lingering_close_s=settings.lingering_close_s,
    )
