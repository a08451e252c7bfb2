"""The one response path alone (``delivery.serve`` + ``delivery.response``), at the ASGI level.

No app, no route: a request scope, a local file as the source, and the messages the response
sends. Single and multiple ranges, 416, If-Range, 304/412 (the source closed again), HEAD,
and a client that takes nothing until the send timeout.
"""

from __future__ import annotations

import dataclasses
import email.parser
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Scope

from mediasvc.delivery.response import SendConfig, SourceResponse
from mediasvc.delivery.serve import Representation, deliver
from mediasvc.delivery.sources import ByteSource, LocalFile
from mediasvc.errors import MalformedRange, PreconditionFailed, RangeNotSatisfiable
from mediasvc.server import ABORT_EXTENSION

pytestmark = pytest.mark.timeout(60)

KiB = 1024
SIZE = 100 * KiB + 7
ETAG = '"abc123"'
WHEN = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
CONFIG = SendConfig(chunk_size_bytes=16 * KiB, part_bytes=4 * KiB, max_ranges=5, send_timeout_s=60)
REPRESENTATION = Representation(
    etag=ETAG,
    last_modified=WHEN,
    media_type="video/mp4",
    headers={"Cache-Control": "private, max-age=86400"},
)


@pytest.fixture
def data(tmp_path: Path) -> bytes:
    data = os.urandom(SIZE)
    (tmp_path / "f").write_bytes(data)
    return data


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def scope_of(method: str = "GET", **headers: str) -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": "/f",
        "query_string": b"",
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


class Opener:
    """Opens the file as the source; counts how often it was asked to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened = 0

    async def __call__(self) -> ByteSource:
        self.opened += 1
        return await LocalFile.open(self.path)


async def respond(tmp_path: Path, scope: Scope, config: SendConfig = CONFIG) -> Response:
    return await deliver(Request(scope), REPRESENTATION, Opener(tmp_path / "f"), config)


async def run(
    response: Response, scope: Scope, send: Callable[[Message], Awaitable[None]] | None = None
) -> tuple[int, dict[str, str], bytes]:
    messages: list[Message] = []
    disconnected = anyio.Event()

    async def receive() -> Message:
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def collect(message: Message) -> None:
        messages.append(message)
        if send is not None:
            await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            disconnected.set()

    await response(scope, receive, collect)
    start = messages[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in messages[1:])
    return start["status"], headers, body


async def test_whole_body(tmp_path: Path, data: bytes) -> None:
    scope = scope_of()
    status, headers, body = await run(await respond(tmp_path, scope), scope)
    assert status == 200 and body == data
    assert headers["content-length"] == str(SIZE)
    assert headers["accept-ranges"] == "bytes"
    assert headers["etag"] == ETAG
    assert headers["last-modified"] == format_datetime(WHEN, usegmt=True)
    assert headers["content-type"] == "video/mp4"


async def test_single_range(tmp_path: Path, data: bytes) -> None:
    scope = scope_of(range="bytes=10-19")
    status, headers, body = await run(await respond(tmp_path, scope), scope)
    assert status == 206 and body == data[10:20]
    assert headers["content-range"] == f"bytes 10-19/{SIZE}"
    assert headers["content-length"] == "10"


async def test_multiple_ranges_are_multipart_byteranges(tmp_path: Path, data: bytes) -> None:
    scope = scope_of(range="bytes=0-9, 50000-50099, -5")
    response = await respond(tmp_path, scope)
    assert isinstance(response, SourceResponse) and response.body_bytes == 115
    status, headers, body = await run(response, scope)
    assert status == 206
    assert headers["content-length"] == str(len(body))
    content_type = headers["content-type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    message = email.parser.BytesParser().parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    parts = message.get_payload()
    assert isinstance(parts, list)
    expected = [(0, 10), (50000, 50100), (SIZE - 5, SIZE)]
    assert len(parts) == len(expected)
    for part, (start, end) in zip(parts, expected, strict=True):
        assert part["Content-Range"] == f"bytes {start}-{end - 1}/{SIZE}"
        assert part["Content-Type"] == "video/mp4"
        payload = part.get_payload(decode=True)
        assert payload == data[start:end]


async def test_more_ranges_than_max_ranges_is_the_whole_body(tmp_path: Path, data: bytes) -> None:
    scope = scope_of(range="bytes=0-0,2-2,4-4,6-6,8-8,10-10")  # six, max_ranges is five
    status, _, body = await run(await respond(tmp_path, scope), scope)
    assert status == 200 and body == data


async def test_416_names_the_size_and_closes_the_source(tmp_path: Path, data: bytes) -> None:
    before = open_fds()
    with pytest.raises(RangeNotSatisfiable) as raised:
        await respond(tmp_path, scope_of(range=f"bytes={SIZE}-"))
    assert raised.value.headers == {"Content-Range": f"bytes */{SIZE}"}
    with pytest.raises(MalformedRange):
        await respond(tmp_path, scope_of(range="bytes=5-2"))
    assert open_fds() == before


@pytest.mark.parametrize(
    ("if_range", "status"),
    [
        (ETAG, 206),
        (format_datetime(WHEN, usegmt=True), 206),
        ('"other"', 200),
        (f"W/{ETAG}", 200),  # If-Range needs a strong validator
    ],
)
async def test_if_range(tmp_path: Path, data: bytes, if_range: str, status: int) -> None:
    scope = scope_of(range="bytes=1-2", if_range=if_range)
    got, _, body = await run(await respond(tmp_path, scope), scope)
    assert got == status
    assert body == (data[1:3] if status == 206 else data)


@pytest.mark.parametrize(
    "headers",
    [
        {"if_none_match": ETAG},
        {"if_none_match": f'"x", W/{ETAG}'},  # weak comparison for If-None-Match
        {"if_modified_since": format_datetime(WHEN, usegmt=True)},
    ],
)
async def test_304_closes_the_source(tmp_path: Path, data: bytes, headers: dict[str, str]) -> None:
    before = open_fds()
    scope = scope_of(**headers, range="bytes=999999-")  # preconditions come before ranges
    opener = Opener(tmp_path / "f")
    response = await deliver(Request(scope), REPRESENTATION, opener, CONFIG)
    assert open_fds() == before
    status, sent, body = await run(response, scope)
    assert (status, body, opener.opened) == (304, b"", 1)
    assert sent["etag"] == ETAG and sent["cache-control"] == "private, max-age=86400"
    assert "content-length" not in sent or sent["content-length"] == "0"


@pytest.mark.parametrize(
    "headers",
    [{"if_match": '"other"'}, {"if_unmodified_since": "Sun, 06 Nov 1994 08:49:37 GMT"}],
)
async def test_412_closes_the_source(tmp_path: Path, data: bytes, headers: dict[str, str]) -> None:
    before = open_fds()
    opener = Opener(tmp_path / "f")
    with pytest.raises(PreconditionFailed):
        await deliver(Request(scope_of(**headers)), REPRESENTATION, opener, CONFIG)
    assert open_fds() == before


async def test_a_missing_source_is_its_own_error_whatever_the_conditionals(
    tmp_path: Path,
) -> None:
    """A 304 or 412 is only said of bytes that exist (a preview not made yet stays 404)."""
    opener = Opener(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        scope = scope_of(if_none_match=ETAG, if_modified_since="Sun, 06 Nov 2094 08:49:37 GMT")
        await deliver(Request(scope), REPRESENTATION, opener, CONFIG)


async def test_head_sends_the_headers_only(tmp_path: Path, data: bytes) -> None:
    before = open_fds()
    scope = scope_of("HEAD", range="bytes=0-99")
    status, headers, body = await run(await respond(tmp_path, scope), scope)
    assert (status, body) == (206, b"")
    assert headers["content-length"] == "100"
    assert open_fds() == before  # the source is closed after the headers


async def test_a_client_that_takes_nothing_is_aborted_at_the_send_timeout(
    tmp_path: Path, data: bytes
) -> None:
    before = open_fds()
    config = dataclasses.replace(CONFIG, send_timeout_s=0.2)
    aborted = anyio.Event()
    scope = {**scope_of(), "extensions": {ABORT_EXTENSION: {"abort": aborted.set}}}
    response = await respond(tmp_path, scope, config)
    assert isinstance(response, SourceResponse)
    bodies = 0

    async def stalled(message: Message) -> None:
        nonlocal bodies
        if message["type"] == "http.response.body":
            bodies += 1
            if bodies > 2:
                await anyio.sleep_forever()  # the client's window is full

    async def receive() -> Message:
        await aborted.wait()
        return {"type": "http.disconnect"}

    await response(scope, receive, stalled)
    assert aborted.is_set()
    assert response.sent_bytes == 2 * 4 * KiB  # two parts went, the third never did
    assert open_fds() == before


async def test_parts_sent_after_a_hang_up_are_not_counted(tmp_path: Path, data: bytes) -> None:
    # uvicorn (ASGI < 2.4) drops every send after the client hung up, at once and without a
    # word; only receive() tells. Parts "sent" that way must not be charged to a download budget.
    response = await respond(tmp_path, scope_of())
    assert isinstance(response, SourceResponse)
    hung_up = anyio.Event()
    bodies = 0

    async def send(message: Message) -> None:
        nonlocal bodies
        if message["type"] != "http.response.body" or hung_up.is_set():
            return  # dropped, as uvicorn does: nothing awaited
        bodies += 1
        if bodies == 3:  # the client went away after taking two parts: this one is dropped
            hung_up.set()
            return
        await anyio.lowlevel.checkpoint()  # a send the server takes yields to the loop

    async def receive() -> Message:
        await hung_up.wait()
        return {"type": "http.disconnect"}

    await response(scope_of(), receive, send)
    assert response.sent_bytes == 2 * 4 * KiB  # the two parts the client took, not the chunk
