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

It also offers the app the ``ABORT_EXTENSION`` (``mediasvc.server``): a way to drop a connection
whose client stopped reading, which a download's send timeout needs.

uvicorn instantiates the protocol itself, so the limits ride in a ``functools.partial``
(:func:`protocol_factory`); unlike a class built at run time, it survives the pickling that
starts uvicorn's worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mediasvc.api.problems import problem_for
from mediasvc.errors import HeadersTooLarge, MediaServiceError, RequestTimeout
from mediasvc.server import ABORT_EXTENSION

if TYPE_CHECKING:
    from mediasvc.config import Settings


@dataclass(frozen=True)
class HeaderLimits:
    max_header_bytes: int
    header_timeout_s: float


class MediasvcHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` whose header blocks are bounded in bytes and in time."""

    def __init__(self, *args: Any, limits: HeaderLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._header_bytes = 0  # of the open header block, or of the next one if none is open
        self._in_message = False  # between the parser's message begin and message complete
        self._in_header_block = False  # between message begin and headers complete
        self._message_begins = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False  # a header block was refused: nothing more goes to the parser

    # --- the connection -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_message:
            self._arm_header_timer()  # the first byte of a request (or a stray blank line)
        while data:
            if self._in_message and not self._in_header_block:
                piece, data = data, b""  # a body: bounded by uvicorn's flow control and the app
            else:
                # A header block is open or may start here: the parser gets no byte past the limit.
                room = self.limits.max_header_bytes - self._header_bytes
                if room <= 0:
                    self._refuse_header_block()
                    return
                piece, data = data[:room], data[room:]
            if not self._feed(piece):
                return

    def _feed(self, piece: bytes) -> bool:
        """Parse ``piece``; count it against the header block left open. False: stop feeding."""
        was_idle = not self._in_message
        begins = self._message_begins
        super().data_received(piece)
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

    def on_headers_complete(self) -> None:
        self._in_header_block = False
        self._header_bytes = 0
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    # --- refusing ----------------------------------------------------------------------------

    def _response_in_flight(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse_header_block(self) -> None:
        self._refused = True
        self._cancel_header_timer()
        self.logger.warning(
            "%s: request headers over %d bytes refused", self._peer(), self.limits.max_header_bytes
        )
        if self._response_in_flight():
            # Pipelined behind a response still going out, which a 431 must not interleave with:
            # read nothing more and close once that response is complete.
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self._answer_and_close(
            HeadersTooLarge(
                f"the request headers exceed {self.limits.max_header_bytes} bytes, "
                "the most accepted"
            )
        )

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._header_timeout
            )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
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

    def _answer_and_close(self, error: MediaServiceError) -> None:
        """Write ``error`` as problem+json (as the app would) with ``Connection: close``."""
        response = problem_for(error)
        head = [f"HTTP/1.1 {error.status} {error.title}\r\n".encode("ascii")]
        for name, value in [*self.server_state.default_headers, *response.raw_headers]:
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + bytes(response.body))
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


def protocol_factory(limits: HeaderLimits) -> type[asyncio.Protocol]:
    """What to pass as ``uvicorn.run(http=…)``: uvicorn calls it as it would the class."""
    factory = functools.partial(MediasvcHttpProtocol, limits=limits)
    return cast("type[asyncio.Protocol]", factory)


def limits_from(settings: Settings) -> HeaderLimits:
    return HeaderLimits(
        max_header_bytes=settings.max_header_bytes, header_timeout_s=settings.header_timeout_s
    )
