"""Our uvicorn protocol on its own: a real uvicorn server in this event loop, a tiny ASGI app,
raw sockets. These tests pin what ``mediasvc.server.uvicorn_protocol`` relies on in uvicorn, so an
uvicorn upgrade that moves it fails here. Assertions are on status codes, bytes and counts."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import pickle
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from mediasvc.server import ABORT_EXTENSION, DISCONNECTED_KEY
from mediasvc.server.uvicorn_protocol import HeaderLimits, MediasvcHttpProtocol, protocol_factory

LIMIT_BYTES = 4096
TIMEOUT_S = 0.5  # the header timeout of these servers
LINGER_S = 0.5  # their lingering close
BOUND_S = 20.0  # bounds every wait below: it only ends a test that would otherwise hang


class App:
    """Answers ``<method> <path> <body length>``; ``/slow`` waits for ``release``; ``/noread``
    answers without reading the body."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = asyncio.Event()
        self.release = asyncio.Event()
        self.disconnects = 0
        self.header_names: list[bytes] = []  # of the last request, once its body was read

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        self.called.set()
        size = 0
        while scope["path"] != "/noread":
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.header_names = [name for name, _ in scope["headers"]]
        if scope["path"] == "/slow":
            await self.release.wait()
        payload = f"{scope['method']} {scope['path']} {size}".encode()
        length = str(len(payload)).encode()
        headers = [(b"content-length", length)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@contextlib.asynccontextmanager
async def running(app: App, *, timeout_keep_alive: int = 5) -> AsyncIterator[tuple[str, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    limits = HeaderLimits(
        max_header_bytes=LIMIT_BYTES, header_timeout_s=TIMEOUT_S, lingering_close_s=LINGER_S
    )
    config = uvicorn.Config(
        app,
        http=protocol_factory(limits),
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=timeout_keep_alive,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(BOUND_S):
            while True:  # uvicorn sets a flag, no event, once it listens
                if server.started:
                    break
                await asyncio.sleep(0.01)
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, BOUND_S)
        sock.close()


def request(size: int, path: str = "/", *, method: str = "GET", body: bytes = b"") -> bytes:
    """A request whose header block (request line to blank line) is exactly ``size`` bytes."""
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\nX-Pad: ".encode()
    pad = size - len(head) - 4
    assert pad >= 0
    return head + b"a" * pad + b"\r\n\r\n" + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    async with asyncio.timeout(BOUND_S):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server still sends, once it has closed the connection."""
    async with asyncio.timeout(BOUND_S):
        return await reader.read()


async def test_header_block_of_exactly_the_limit_is_served() -> None:
    app = App()
    async with running(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request(LIMIT_BYTES))
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"GET / 0")
        writer.close()


@pytest.mark.parametrize(
    "write_bytes", [LIMIT_BYTES + 1, 1000], ids=["one-write", "1000-byte-writes"]
)
async def test_one_byte_over_the_limit_is_431_and_the_app_never_runs(write_bytes: int) -> None:
    app = App()
    async with running(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        data = request(LIMIT_BYTES + 1)
        for start in range(0, len(data), write_bytes):
            writer.write(data[start : start + write_bytes])
            await writer.drain()
            await asyncio.sleep(0.01)  # pacing, so the server sees several reads
        status, headers, body = await read_response(reader)
        assert status == 431
        assert headers["content-type"] == "application/problem+json"
        assert headers["connection"] == "close"
        problem = json.loads(body)
        assert problem["type"] == "urn:mediasvc:problem:headers-too-large"
        assert problem["title"] == "Request Header Fields Too Large"
        assert problem["status"] == 431
        assert str(LIMIT_BYTES) in problem["detail"]
        assert await closed_by_server(reader) == b""
        assert app.calls == 0
        writer.close()


async def test_the_parser_gets_no_byte_past_the_limit() -> None:
    fed: list[int] = []
    original = MediasvcHttpProtocol._feed

    def counting_feed(self: MediasvcHttpProtocol, piece: memoryview) -> bool:
        fed.append(len(piece))
        return original(self, piece)

    app = App()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MediasvcHttpProtocol, "_feed", counting_feed)
        async with running(app) as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 1024 * 1024)
            status, _, _ = await read_response(reader)
            writer.close()
    assert status == 431
    assert sum(fed) == LIMIT_BYTES


async def test_pipelined_requests_beyond_the_limit_together_are_all_served() -> None:
    app = App()
    async with running(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        # Five blocks of 3/4 of the limit in one write: no block is over, all of them are.
        writer.write(b"".join(request(LIMIT_BYTES * 3 // 4, f"/{i}") for i in range(5)))
        for i in range(5):
            status, _, body = await read_response(reader)
            assert (status, body) == (200, f"GET /{i} 0".encode())
        writer.close()


async def test_a_request_pipelined_after_a_body_is_served() -> None:
    app = App()
    async with running(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        body = b"x" * 100_000
        writer.write(request(200, "/up", method="POST", body=body) + request(LIMIT_BYTES, "/next"))
        assert (await read_response(reader))[::2] == (200, b"POST /up 100000")
        assert (await read_response(reader))[::2] == (200, b"GET /next 0")
        writer.close()


async def test_an_oversized_request_pipelined_behind_a_pending_response_closes_after_it() -> None:
    app = App()
    async with running(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        oversized = b"GET /big HTTP/1.1\r\nX-Big: " + b"a" * 2 * LIMIT_BYTES
        writer.write(request(200, "/slow") + oversized)
        await writer.drain()
        await asyncio.wait_for(app.called.wait(), BOUND_S)
        app.release.set()
        # The pending response goes out whole, then the connection closes: no 431 mixed into it.
        status, headers, body = await read_response(reader)
        assert (status, body) == (200, b"GET /slow 0")
        assert headers["connection"] == "close"
        assert await closed_by_server(reader) == b""
        assert app.calls == 1
        writer.close()


async def test_headers_trickling_past_the_timeout_get_408_and_close() -> None:
    app = App()
    async with running(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\n")
        lines_sent = 0
        received = b""
        async with asyncio.timeout(BOUND_S):
            while not reader.at_eof():
                with contextlib.suppress(ConnectionError):
                    writer.write(b"X-Slow: 1\r\n")
                    lines_sent += 1
                with contextlib.suppress(TimeoutError):
                    received += await asyncio.wait_for(reader.read(65536), TIMEOUT_S / 5)
        assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b'"type":"urn:mediasvc:problem:request-timeout"' in received
        assert lines_sent > 2  # it did keep sending: the timeout is on the block, not on silence
        assert app.calls == 0
        writer.close()


@pytest.mark.parametrize("keep_sending", [b"", b"\r\n"], ids=["silent", "blank-lines"])
async def test_a_connection_without_a_request_is_closed_without_an_answer(
    keep_sending: bytes,
) -> None:
    app = App()
    async with running(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        received = b""
        async with asyncio.timeout(BOUND_S):
            while not reader.at_eof():
                with contextlib.suppress(ConnectionError):
                    writer.write(keep_sending)
                with contextlib.suppress(TimeoutError):
                    received += await asyncio.wait_for(reader.read(65536), TIMEOUT_S / 5)
        assert received == b""
        writer.close()


async def test_keep_alive_idle_longer_than_the_header_timeout_is_not_a_header_timeout() -> None:
    app = App()
    async with running(app, timeout_keep_alive=5) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        for i in range(3):
            writer.write(request(300, f"/{i}"))
            assert (await read_response(reader))[::2] == (200, f"GET /{i} 0".encode())
            await asyncio.sleep(TIMEOUT_S * 2)  # idle: uvicorn's keep-alive timeout rules here
        writer.close()


def test_the_factory_survives_pickling_for_uvicorns_worker_processes() -> None:
    limits = HeaderLimits(max_header_bytes=1234, header_timeout_s=5.0, lingering_close_s=2.0)
    factory = pickle.loads(pickle.dumps(protocol_factory(limits)))
    assert factory.func is MediasvcHttpProtocol
    assert factory.keywords == {"limits": limits}


async def test_the_abort_extension_resets_a_connection_whose_client_reads_nothing() -> None:
    # A response far larger than the socket buffers, to a client that never reads: the app's
    # send blocks on flow control until it aborts; then the server drops the connection at once
    # (a graceful close would wait for the write buffer to drain, forever).
    aborted = asyncio.Event()
    blocked = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        abort = scope["extensions"][ABORT_EXTENSION]["abort"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        piece = b"x" * (1 << 20)
        try:
            async with asyncio.timeout(1.0):
                while True:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
        except TimeoutError:
            blocked.set()
        abort()
        async with asyncio.timeout(BOUND_S):
            while (await receive())["type"] != "http.disconnect":
                pass
        aborted.set()

    async with running(app) as (host, port):  # type: ignore[arg-type]
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            async with asyncio.timeout(BOUND_S):
                await aborted.wait()
            assert blocked.is_set()
            with pytest.raises(ConnectionResetError):  # a reset, not the rest of the body
                async with asyncio.timeout(BOUND_S):
                    while await reader.read(1 << 20):
                        pass
        finally:
            writer.close()


# --- the body read ahead of a lost connection ---------------------------------------------------


async def read_ahead_of_a_lost_connection(declared: int) -> list[dict[str, Any]]:
    """What an app receives that reads a body's first message, then waits while the client
    sends 31000 bytes of a ``declared``-byte body in all and goes away."""
    messages: list[dict[str, Any]] = []
    first, release, done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        messages.append(message)
        first.set()
        await release.wait()  # the rest of the body and the end arrive meanwhile
        while message.get("more_body"):
            message = await receive()
            messages.append(message)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        done.set()

    async with running(app) as (host, port):  # type: ignore[arg-type]
        reader, writer = await asyncio.open_connection(host, port)
        head = f"PUT /up HTTP/1.1\r\nHost: t\r\nContent-Length: {declared}\r\n\r\n"
        writer.write(head.encode() + b"a" * 1000)
        async with asyncio.timeout(BOUND_S):
            await first.wait()
        # Less than uvicorn's 64 KiB before it pauses reading: all of it is read, then the end.
        writer.write(b"b" * 30000)
        writer.write_eof()  # the client goes away
        assert await closed_by_server(reader) == b""  # the server saw the connection end
        writer.close()
        release.set()
        async with asyncio.timeout(BOUND_S):
            await done.wait()
    assert b"".join(m.get("body", b"") for m in messages) == b"a" * 1000 + b"b" * 30000
    return messages


async def test_the_body_received_before_the_connection_was_lost_reaches_the_app() -> None:
    """uvicorn answers ``http.disconnect`` once the connection is lost, even with body bytes it
    received and still holds for the app: those come first (``KeptReadAhead``)."""
    messages = await read_ahead_of_a_lost_connection(100_000)  # the client goes mid-body
    assert [m["type"] for m in messages][-2:] == ["http.request", "http.disconnect"]
    assert messages[-2]["more_body"] is True
    # Handed over after the loss, and marked so; what came while the client was there is not.
    assert [m.get(DISCONNECTED_KEY, False) for m in messages] == [False, True, False]


async def test_a_whole_body_received_before_the_connection_was_lost_is_marked() -> None:
    """Its last byte arrived, then the client went before the app read it: the body ends
    (``more_body`` False), marked ``DISCONNECTED_KEY``, as nobody reads the answer."""
    messages = await read_ahead_of_a_lost_connection(31_000)
    assert [m["type"] for m in messages] == ["http.request", "http.request"]
    assert [m["more_body"] for m in messages] == [True, False]
    assert [m.get(DISCONNECTED_KEY, False) for m in messages] == [False, True]


def test_the_cycle_internals_kept_read_ahead_uses_are_there() -> None:
    """Fails loudly on an uvicorn that renamed what ``KeptReadAhead`` reads or replaces."""
    assert inspect.iscoroutinefunction(RequestResponseCycle.receive)
    assert "receive" in RequestResponseCycle.run_asgi.__code__.co_names  # looked up per request
    assigned = RequestResponseCycle.__init__.__code__.co_names
    for attribute in ("body", "more_body", "disconnected", "response_complete", "scope"):
        assert attribute in assigned, attribute


# --- a chunked body's framing: trailers and chunk-size lines -------------------------------------

CHUNKED_HEAD = b"PUT /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"


async def closed_or_reset(reader: asyncio.StreamReader) -> bytes:
    """As ``closed_by_server``, for a client whose unread bytes make the server's close a reset."""
    try:
        return await closed_by_server(reader)
    except ConnectionResetError:
        return b""


def count_fed(patch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the pieces the protocol hands to uvicorn's parser."""
    fed: list[int] = []
    original = MediasvcHttpProtocol._feed

    def counting_feed(self: MediasvcHttpProtocol, piece: memoryview) -> bool:
        fed.append(len(piece))
        return original(self, piece)

    patch.setattr(MediasvcHttpProtocol, "_feed", counting_feed)
    return fed


@pytest.mark.parametrize(
    "framing",
    [
        b"5\r\nhello\r\n0\r\n"
        + b"X-T: aaaaaaaaaaaaaaaaaaaaaaaaaa\r\n" * 32768,  # 1 MiB of trailers
        b"5\r\nhello\r\n0\r\nX-T: " + b"a" * 1024 * 1024,  # one huge trailer line
        b"5\r\nhello\r\n5;ext=" + b"e" * 1024 * 1024,  # one huge chunk extension
    ],
    ids=["many-trailers", "one-huge-trailer", "chunk-extension"],
)
async def test_chunk_framing_over_the_limit_is_431_and_the_parser_gets_little_of_it(
    framing: bytes,
) -> None:
    app = App()
    with pytest.MonkeyPatch.context() as patch:
        fed = count_fed(patch)
        async with running(app) as (host, port):
            reader, writer = await asyncio.open_connection(host, port)
            with contextlib.suppress(ConnectionError):
                writer.write(CHUNKED_HEAD + framing)
                await writer.drain()
            status, headers, body = await read_response(reader)
            assert (status, headers["connection"]) == (431, "close")
            assert json.loads(body)["type"] == "urn:mediasvc:problem:headers-too-large"
            assert "chunk framing" in json.loads(body)["detail"]
            assert await closed_or_reset(reader) == b""
            writer.close()
    # The framing is counted from the first piece after the one the headers ended in (that
    # piece is within the header limit itself): at most twice the limit reached the parser.
    assert sum(fed) <= 2 * LIMIT_BYTES
    assert app.calls <= 1  # the app may have started on the headers: it saw a disconnect
    assert app.disconnects == app.calls


async def test_trailers_within_the_limit_are_served_and_not_given_to_the_app() -> None:
    app = App()
    async with running(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n")
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"PUT /up 5")
        assert b"x-trailer" not in app.header_names and b"x-other" not in app.header_names
        assert b"transfer-encoding" in app.header_names
        # And the connection is kept alive: the body was read whole.
        writer.write(request(300, "/next"))
        assert (await read_response(reader))[::2] == (200, b"GET /next 0")
        writer.close()


async def test_a_chunked_body_of_many_tiny_chunks_is_not_framing_over_the_limit() -> None:
    # 20000 chunks of 1 byte: 100 kB of framing, but never more than 5 bytes since a chunk ended.
    app = App()
    async with running(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(CHUNKED_HEAD + b"1\r\na\r\n" * 20000 + b"0\r\n\r\n")
        assert (await read_response(reader))[::2] == (200, b"PUT /up 20000")
        writer.close()


@pytest.mark.parametrize(
    ("start", "trickle"),
    [(b"5\r\nhello\r\n0\r\n", b"X-Slow: 1\r\n"), (b"5\r\nhello\r\n10\r\n", b"")],
    ids=["trailers-trickling", "chunk-data-never-begins"],
)
async def test_a_trailer_section_that_never_ends_gets_408_and_close(
    start: bytes, trickle: bytes
) -> None:
    app = App()
    async with running(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(CHUNKED_HEAD + start)
        lines_sent = 0
        received = b""
        async with asyncio.timeout(BOUND_S):
            while not reader.at_eof():
                with contextlib.suppress(ConnectionError):
                    writer.write(trickle)
                    lines_sent += 1
                with contextlib.suppress(TimeoutError):
                    received += await asyncio.wait_for(reader.read(65536), TIMEOUT_S / 5)
        assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b'"type":"urn:mediasvc:problem:request-timeout"' in received
        assert lines_sent > 2
        assert app.disconnects == app.calls == 1  # its app saw the request end in a disconnect
        writer.close()


# --- a response before its body: lingering close --------------------------------------------


async def send_until_closed(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> int:
    """Keep sending body bytes until the connection breaks; the pieces sent after the server
    shut its side (it discards them meanwhile)."""
    sent_after_eof = 0
    async with asyncio.timeout(BOUND_S):
        while True:
            try:
                writer.write(b"x" * 100)
                await writer.drain()
            except ConnectionError:
                return sent_after_eof
            if writer.transport.is_closing():
                return sent_after_eof
            with contextlib.suppress(TimeoutError):
                assert await asyncio.wait_for(reader.read(65536), LINGER_S / 10) == b""
            if reader.at_eof():
                sent_after_eof += 1


@pytest.mark.parametrize(
    "head",
    [
        b"GET /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000000\r\n\r\n",
        b"DELETE /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000000\r\n\r\n",
        CHUNKED_HEAD.replace(b"/up", b"/noread") + b"5\r\nhello\r\n",
        CHUNKED_HEAD.replace(b"/up", b"/noread") + b"5\r\nhello\r\n0\r\nX-T: 1\r\n",
    ],
    ids=["get", "delete", "chunked", "chunked-in-trailers"],
)
async def test_a_response_before_its_body_ends_the_connection_after_a_linger(head: bytes) -> None:
    app = App()
    async with running(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(head)
        status, _, body = await read_response(reader)  # the whole response first
        assert (status, body) == (200, head.split(b" ", 1)[0] + b" /noread 0")
        sent_after_eof = await send_until_closed(writer, reader)
        # The server shut its side at once, discarded for a while (the client's sends went
        # through), then closed: the connection broke.
        assert reader.at_eof()
        assert sent_after_eof > 1
        assert app.calls == 1
        writer.close()


async def test_a_body_received_whole_before_the_response_keeps_the_connection_alive() -> None:
    # The app reads none of it, but it is all in before the response: no reason to close.
    app = App()
    async with running(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        for _ in range(3):
            writer.write(request(300, "/noread", method="POST", body=b"x" * 1000))
            status, headers, body = await read_response(reader)
            assert (status, body) == (200, b"POST /noread 0")
            assert "connection" not in headers
        writer.write(request(300, "/last"))
        assert (await read_response(reader))[::2] == (200, b"GET /last 0")
        assert not reader.at_eof()
        writer.close()


async def test_a_pipelined_request_behind_an_unread_body_is_not_served() -> None:
    # The body of /noread never ends (10 GB declared): what follows is body, not a request.
    app = App()
    async with running(app) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000000\r\n\r\n"
            + request(300, "/next")
        )
        assert (await read_response(reader))[::2] == (200, b"POST /noread 0")
        assert await closed_by_server(reader) == b""
        assert app.calls == 1
        writer.close()
