"""The informational-response extension of our uvicorn protocol on its own: a real uvicorn server
in this event loop, a tiny ASGI app, raw sockets. It leans on uvicorn's internals (the scope and
``RequestResponseCycle`` that ``on_headers_complete`` builds, the cycle's ``response_started``
and ``disconnected``): an uvicorn upgrade that moves them fails here, loudly, and the fallback
(no 104) would otherwise hide it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from mediasvc.server import INFORMATIONAL_EXTENSION
from mediasvc.server.uvicorn_protocol import HeaderLimits, protocol_factory

BOUND_S = 20.0  # bounds every wait below: it only ends a test that would otherwise hang


class App:
    """Sends a 104 (if the extension is there) before reading the body, answers, then tries
    another 104 after the final response began."""

    def __init__(self) -> None:
        self.offered: list[bool] = []
        self.sent_before: list[bool] = []
        self.sent_after: list[bool] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        extension = scope.get("extensions", {}).get(INFORMATIONAL_EXTENSION)
        self.offered.append(extension is not None)
        if extension is not None:
            headers = [(b"location", b"/api/v1/uploads/x"), (b"upload-draft-interop-version", b"8")]
            self.sent_before.append(extension["send"](104, headers))
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        payload = str(size).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(payload)).encode())],
            }
        )
        if extension is not None:
            self.sent_after.append(extension["send"](104, []))
        await send({"type": "http.response.body", "body": payload})


@contextlib.asynccontextmanager
async def running(app: App) -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    limits = HeaderLimits(max_header_bytes=8192, header_timeout_s=5, lingering_close_s=0.5)
    config = uvicorn.Config(app, http=protocol_factory(limits), lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(BOUND_S):
            while True:  # uvicorn sets a flag, no event, once it listens
                if server.started:
                    break
                await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, BOUND_S)
        sock.close()


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    async with asyncio.timeout(BOUND_S):
        data = b""
        while not data.endswith(b"\r\n\r\n5"):  # the body: the count of "hello"
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
    writer.close()
    return data


def test_the_uvicorn_internals_it_uses_are_there() -> None:
    """Fails loudly on an uvicorn that renamed what the extension reads."""
    assert callable(HttpToolsProtocol.on_headers_complete)
    fields = RequestResponseCycle.__init__.__code__.co_varnames
    assert "scope" in fields
    source = RequestResponseCycle.__init__.__code__.co_names
    for attribute in ("response_started", "disconnected", "scope"):
        assert attribute in source, attribute


async def test_a_104_goes_out_before_the_final_response_and_not_after() -> None:
    app = App()
    async with running(app) as port:
        data = await exchange(
            port, b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        )
    assert app.offered == [True] and app.sent_before == [True] and app.sent_after == [False]
    informational, rest = data.split(b"\r\n\r\n", 1)
    assert informational.splitlines() == [
        b"HTTP/1.1 104 Upload Resumption Supported",
        b"location: /api/v1/uploads/x",
        b"upload-draft-interop-version: 8",
    ]
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.count(b"HTTP/1.1") == 1


async def test_an_http_10_client_is_not_offered_it() -> None:
    app = App()
    async with running(app) as port:
        data = await exchange(
            port, b"POST /up HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        )
    assert app.offered == [False]
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b" 104 " not in data


async def test_with_100_continue_both_interim_responses_come() -> None:
    app = App()
    async with running(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(BOUND_S):
            seen = b""
            while b"100 Continue" not in seen:
                seen += await reader.read(65536)
            writer.write(b"hello")
            while not seen.endswith(b"\r\n\r\n5"):
                seen += await reader.read(65536)
        writer.close()
    assert seen.index(b"104 Upload Resumption Supported") < seen.index(b"100 Continue")
    assert seen.index(b"100 Continue") < seen.index(b"200 OK")


def test_only_informational_statuses() -> None:
    from mediasvc.server.uvicorn_protocol import InformationalSender

    sender = InformationalSender.__new__(InformationalSender)
    for status in (101, 200, 99):
        with pytest.raises(ValueError, match="informational"):
            sender.send(status, [])
