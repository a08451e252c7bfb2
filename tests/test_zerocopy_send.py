"""The zero-copy send extension of our uvicorn protocol on its own: a real uvicorn (in a thread,
on uvloop as ``mediasvc serve`` runs it, and on asyncio's loop), a tiny ASGI app that sends a
file with ``http.response.zerocopysend``, raw sockets as clients. Assertions are on bytes and
counts: what arrives, in which order, what the file position says was sent, descriptors left."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import uvloop

from mediasvc.server import ZEROCOPY_EXTENSION
from mediasvc.server.uvicorn_protocol import HeaderLimits, ZeroCopySender, protocol_factory

BOUND_S = 30.0  # bounds every wait: it only ends a test that would otherwise hang
MiB = 1 << 20
LIMITS = HeaderLimits(max_header_bytes=8192, header_timeout_s=10.0, lingering_close_s=1.0)

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_factory(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    return uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop


DATA = os.urandom(1 * MiB) * 24  # 24 MiB: far more than the socket buffers hold


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return path


@contextlib.contextmanager
def serving(
    app: App,
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    ssl_files: tuple[Path, Path] | None = None,
) -> Iterator[tuple[str, int]]:
    """uvicorn with our protocol in a thread of its own, on its own loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        http=protocol_factory(LIMITS),
        lifespan="off",
        log_level="warning",
        ssl_certfile=str(ssl_files[0]) if ssl_files else None,
        ssl_keyfile=str(ssl_files[1]) if ssl_files else None,
    )
    server = uvicorn.Server(config)

    def run() -> None:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        for _ in range(int(BOUND_S / 0.01)):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(BOUND_S)
        sock.close()


def file_app(
    path: Path, plan: Callable[[int], list[dict[str, Any]]], notes: dict[str, Any] | None = None
) -> App:
    """Sends the head, then the messages ``plan(fd)`` makes; records what it saw in ``notes``."""
    notes = {} if notes is None else notes

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        notes["extensions"] = set(scope.get("extensions", {}))
        fd = os.open(path, os.O_RDONLY)
        try:
            messages = plan(fd)
            body = sum(
                m.get("count", 0) if m["type"] == ZEROCOPY_EXTENSION else len(m.get("body", b""))
                for m in messages
            )
            headers = [(b"content-length", str(body).encode())] if notes.get("length", True) else []
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for message in messages:
                await send(message)
            notes["position"] = os.lseek(fd, 0, os.SEEK_CUR)
        finally:
            os.close(fd)

    return app


async def get(host: str, port: int, path: str = "/", method: str = "GET") -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(BOUND_S):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def zerocopy(fd: int, **keys: Any) -> dict[str, Any]:
    return {"type": ZEROCOPY_EXTENSION, "file": fd, **keys}


async def test_a_whole_file_a_range_and_body_messages_arrive_in_order(
    data_file: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    data = DATA

    def plan(fd: int) -> list[dict[str, Any]]:
        return [
            {"type": "http.response.body", "body": b"<head>", "more_body": True},
            zerocopy(fd, offset=0, count=len(data), more_body=True),
            {"type": "http.response.body", "body": b"<mid>", "more_body": True},
            zerocopy(fd, offset=12345, count=3 * MiB, more_body=True),
            {"type": "http.response.body", "body": b"<end>", "more_body": False},
        ]

    notes: dict[str, Any] = {}
    with serving(file_app(data_file, plan, notes), loop_factory) as (host, port):
        head, body = await get(host, port)
    assert head.startswith(b"HTTP/1.1 200")
    assert ZEROCOPY_EXTENSION in notes["extensions"]
    assert body == b"<head>" + data + b"<mid>" + data[12345 : 12345 + 3 * MiB] + b"<end>"
    assert notes["position"] == 0  # with an offset given, the file position is not used


async def test_without_offset_the_position_is_read_and_moved_past_what_was_sent(
    data_file: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    data = DATA

    def plan(fd: int) -> list[dict[str, Any]]:
        os.lseek(fd, 1000, os.SEEK_SET)
        return [zerocopy(fd, count=5000, more_body=True), zerocopy(fd, count=7, more_body=False)]

    notes: dict[str, Any] = {}
    with serving(file_app(data_file, plan, notes), loop_factory) as (host, port):
        _, body = await get(host, port)
    assert body == data[1000:6007]
    assert notes["position"] == 6007


async def test_chunked_encoding_and_a_count_up_to_the_files_end(
    data_file: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    data = DATA

    def plan(fd: int) -> list[dict[str, Any]]:
        return [zerocopy(fd, offset=len(data) - 100_000)]  # no count: to the end, then done

    notes: dict[str, Any] = {"length": False}
    with serving(file_app(data_file, plan, notes), loop_factory) as (host, port):
        head, body = await get(host, port)
    assert b"transfer-encoding: chunked" in head
    assert body == b"186a0\r\n" + data[-100_000:] + b"\r\n0\r\n\r\n"


async def test_head_sends_no_body(
    data_file: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    def plan(fd: int) -> list[dict[str, Any]]:
        return [zerocopy(fd, offset=0, count=1000)]

    with serving(file_app(data_file, plan), loop_factory) as (host, port):
        head, body = await get(host, port, method="HEAD")
    assert b"content-length: 1000" in head
    assert body == b""


async def test_what_uvicorn_buffered_goes_first_and_a_full_socket_is_waited_on(
    data_file: Path,
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 8 MiB through uvicorn's own write path, to a client that reads nothing yet: most of it
    # sits in the transport's buffer when the zero-copy send begins.
    data = DATA
    buffered = os.urandom(8 * MiB)
    waits = 0
    original = ZeroCopySender._writable

    async def counted(self: ZeroCopySender) -> None:
        nonlocal waits
        waits += 1
        await original(self)

    monkeypatch.setattr(ZeroCopySender, "_writable", counted)

    def plan(fd: int) -> list[dict[str, Any]]:
        return [
            {"type": "http.response.body", "body": buffered, "more_body": True},
            zerocopy(fd, offset=0, count=len(data)),
        ]

    with serving(file_app(data_file, plan), loop_factory) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        await asyncio.sleep(0.5)  # pacing only: the server fills every buffer meanwhile
        async with asyncio.timeout(BOUND_S):
            raw = await reader.read()
        writer.close()
    assert raw.partition(b"\r\n\r\n")[2] == buffered + data
    assert waits > 0  # the socket was full at least once: flow control, not a busy loop


async def test_a_client_that_goes_away_ends_the_send_with_what_the_kernel_took(
    data_file: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    size = len(DATA)
    outcome: dict[str, int] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        fd = os.open(data_file, os.O_RDONLY)
        try:
            headers = [(b"content-length", str(size).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send(zerocopy(fd, count=size))  # from position 0, returns when cut short
            outcome["sent"] = os.lseek(fd, 0, os.SEEK_CUR)
            async with asyncio.timeout(BOUND_S):
                while (await receive())["type"] != "http.disconnect":
                    pass
            outcome["disconnected"] = 1
        finally:
            os.close(fd)

    with serving(app, loop_factory) as (host, port):
        client = socket.create_connection((host, port))
        client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        received = 0
        while received < 1 * MiB:
            received += len(client.recv(65536))
        # A close with unread data is a reset.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()
        for _ in range(int(BOUND_S / 0.01)):
            if "disconnected" in outcome:
                break
            await asyncio.sleep(0.01)
    assert outcome["disconnected"] == 1
    assert 1 * MiB <= outcome["sent"] < size  # what the kernel took: at least what was read


async def test_a_file_shorter_than_the_count_closes_the_connection(
    tmp_path: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    short = tmp_path / "short.bin"
    short.write_bytes(b"x" * 1000)

    def plan(fd: int) -> list[dict[str, Any]]:
        return [zerocopy(fd, offset=0, count=5000)]

    with serving(file_app(short, plan), loop_factory) as (host, port):
        head, body = await get(host, port)
    assert b"content-length: 5000" in head
    assert body == b"x" * 1000  # then the close: the client sees a truncated body


async def test_a_stalled_send_cancelled_by_the_app_leaves_no_descriptor_behind(
    data_file: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    """The app's send timeout cancels a zero-copy send to a client that reads nothing; the
    duplicate descriptor it waited on is closed (else an abort's reset would never happen)."""
    cancelled = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        fd = os.open(data_file, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            headers = [(b"content-length", str(size).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await send(zerocopy(fd, count=size))
            cancelled.set()
            scope["extensions"]["mediasvc.connection.abort"]["abort"]()
        finally:
            os.close(fd)

    before = len(os.listdir("/proc/self/fd"))
    with serving(app, loop_factory) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await asyncio.to_thread(cancelled.wait, BOUND_S)
        with pytest.raises(ConnectionResetError):  # the abort's reset, not the rest of the file
            async with asyncio.timeout(BOUND_S):
                while await reader.read(MiB):
                    pass
        writer.close()
    assert len(os.listdir("/proc/self/fd")) <= before


async def test_not_offered_over_tls(
    tls_files: tuple[Path, Path], loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    cert = tls_files[0]
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["extensions"] = set(scope.get("extensions", {}))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with serving(app, loop_factory, ssl_files=tls_files) as (host, port):
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(BOUND_S):
            assert (await reader.read()).startswith(b"HTTP/1.1 204")
        writer.close()
    assert ZEROCOPY_EXTENSION not in seen["extensions"]
    assert "mediasvc.connection.abort" in seen["extensions"]


async def test_each_message_gives_the_loop_a_turn(
    data_file: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    """Small messages to a client with room to spare never make the send wait: the loop still
    turns once per message, or one download would starve every other connection."""
    turns: dict[str, int] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        fd = os.open(data_file, os.O_RDONLY)
        try:
            headers = [(b"content-length", b"50000")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await asyncio.sleep(0)  # the ticker runs once
            before = ticks
            for i in range(50):
                await send(zerocopy(fd, offset=i * 1000, count=1000, more_body=i < 49))
            turns["during"] = ticks - before
        finally:
            ticker.cancel()
            os.close(fd)

    with serving(app, loop_factory) as (host, port):
        _, body = await get(host, port)
    assert body == DATA[:50_000]
    assert turns["during"] >= 49
