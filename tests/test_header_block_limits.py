"""Header blocks through a real ``mediasvc serve`` (uvicorn, httptools): too big ones are refused
before they are read, slow ones are timed out; so are a chunked body's trailers; a response sent
before its request body was read ends the connection (lingering close). Counted, not timed: the
server's RSS (VmRSS/VmHWM), its bytes read (``rchar``), its open fds, and status codes seen on
raw sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, truncate

pytestmark = pytest.mark.e2e

KiB = 1024
MiB = 1024 * KiB
LIMIT_BYTES = 16 * KiB  # max_header_bytes' default
HEADER_TIMEOUT_S = 2
LINGERING_CLOSE_S = 1
FLOOD_BYTES = 64 * MiB  # the hostile client gives up after this much
# What the server may read beyond the limit: its first socket read (uvloop reads up to 256 KiB)
# plus whatever its own database round trips read meanwhile. The old code read the whole flood.
READ_MARGIN_BYTES = 1 * MiB
RSS_MARGIN_BYTES = 4 * MiB  # the old code grew by ~2 bytes per byte of header
BOUND_S = 30.0  # bounds every wait below: it only ends a test that would otherwise hang
CONNECTIONS = 20


@pytest.fixture
def server(start_server: Callable[..., RunningServer], pg_url: str) -> RunningServer:
    asyncio.run(truncate(pg_url))
    return start_server(
        {
            "MEDIASVC_DATABASE_URL": pg_url,
            "MEDIASVC_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "MEDIASVC_LINGERING_CLOSE_S": str(LINGERING_CLOSE_S),
        }
    )


def status_of(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * KiB
    raise RuntimeError(f"no {field}")


def bytes_read(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def poll_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {BOUND_S} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def connect(server: RunningServer) -> Iterator[Callable[[], socket.socket]]:
    opened: list[socket.socket] = []
    host, port = server.base_url.removeprefix("http://").split(":")

    def open_one() -> socket.socket:
        sock = socket.create_connection((host, int(port)), timeout=BOUND_S)
        opened.append(sock)
        return sock

    yield open_one
    for sock in opened:
        sock.close()


def read_response(sock: socket.socket, buffered: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response from ``sock``; ``buffered`` keeps what arrived beyond it."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before a response: {bytes(buffered)!r}")
        buffered += chunk
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("closed inside a response body")
        rest += chunk
    buffered[:] = rest[length:]
    return int(status_line.split()[1]), headers, rest[:length]


def read_to_close(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (a reset after its answer counts)."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def block_of(size: int, path: str = "/healthz") -> bytes:
    """A GET whose header block (request line to blank line) is exactly ``size`` bytes."""
    head = f"GET {path} HTTP/1.1\r\nHost: t\r\nX-Pad: ".encode()
    return head + b"a" * (size - len(head) - 4) + b"\r\n\r\n"


def flood(sock: socket.socket, start: bytes, filler: bytes) -> int:
    """Send ``start`` then ``filler`` until the server stops taking it; the bytes it took."""
    sent = 0
    sock.sendall(start)
    try:
        while sent < FLOOD_BYTES:
            sock.sendall(filler)
            sent += len(filler)
        sock.sendall(b"\r\n\r\n")  # it took everything: end the block, so that it answers
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def assert_431(response: bytes) -> None:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), response[:200]
    assert b"content-type: application/problem+json" in head
    problem = json.loads(body)
    assert problem["type"] == "urn:mediasvc:problem:headers-too-large"
    assert problem["status"] == 431


@pytest.mark.parametrize(
    ("start", "filler"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Huge: ", b"a" * 64 * KiB),
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\n", b"X-A: b\r\n" * 8 * KiB),
    ],
    ids=["one-huge-header", "many-tiny-headers"],
)
def test_a_64_mib_header_block_is_431_after_reading_little_of_it(
    server: RunningServer, connect: Callable[[], socket.socket], start: bytes, filler: bytes
) -> None:
    pid = server.pid
    # Warm up the refusal path (imports, first-use allocations) so that it is not counted below.
    warm = connect()
    warm.sendall(block_of(2 * LIMIT_BYTES))
    assert read_response(warm, bytearray())[0] == 431

    rss_before, peak_before, read_before = (
        status_of(pid, "VmRSS"),
        status_of(pid, "VmHWM"),
        bytes_read(pid),
    )
    sock = connect()
    sent = flood(sock, start, filler)
    status, headers, body = read_response(sock, bytearray())
    read = bytes_read(pid) - read_before
    rss_growth = status_of(pid, "VmRSS") - rss_before
    peak_growth = status_of(pid, "VmHWM") - peak_before
    print(
        f"\nclient sent {sent / MiB:.1f} MiB before the server closed; the server read "
        f"{read / KiB:.0f} KiB, RSS +{rss_growth / KiB:.0f} KiB, peak +{peak_growth / KiB:.0f} KiB"
    )
    assert read <= LIMIT_BYTES + READ_MARGIN_BYTES
    assert peak_growth < RSS_MARGIN_BYTES
    assert (status, headers["content-type"]) == (431, "application/problem+json")
    assert json.loads(body)["type"] == "urn:mediasvc:problem:headers-too-large"
    assert read_to_close(sock) == b""  # and closed the connection
    assert sent < FLOOD_BYTES  # before the client gave up


def test_slow_header_blocks_are_408_and_their_connections_closed(
    server: RunningServer, connect: Callable[[], socket.socket]
) -> None:
    baseline = open_fds(server.pid)
    slow = [connect() for _ in range(CONNECTIONS)]
    for sock in slow:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
    received = {sock: b"" for sock in slow}
    open_ = set(slow)
    lines = 0
    most_fds = baseline
    deadline = time.monotonic() + BOUND_S
    while open_ and time.monotonic() < deadline:
        most_fds = max(most_fds, open_fds(server.pid))
        for sock in list(open_):  # a header line every 0.5 s: never idle, never complete
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"X-Slow: 1\r\n")
        lines += 1
        readable, _, _ = select.select(list(open_), [], [], 0.5)
        for sock in readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            received[sock] += chunk
            if not chunk:
                open_.discard(sock)
    print(
        f"\nslow connections closed after {lines} header lines; server fds {baseline} → {most_fds}"
    )
    assert not open_, f"{len(open_)} slow connections still open"
    assert most_fds > baseline  # the fd count does see the connections
    assert lines > HEADER_TIMEOUT_S  # they kept sending: the limit is on the block, not silence
    for data in received.values():
        assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data[:200]
        assert b'"type":"urn:mediasvc:problem:request-timeout"' in data
    poll_until(lambda: open_fds(server.pid) <= baseline, "the server closed their sockets")


def test_connections_that_send_nothing_are_closed(
    server: RunningServer, connect: Callable[[], socket.socket]
) -> None:
    baseline = open_fds(server.pid)
    silent = [connect() for _ in range(CONNECTIONS)]
    poll_until(lambda: open_fds(server.pid) > baseline, "the fd count sees the connections")
    for sock in silent:
        assert read_to_close(sock) == b""  # closed, with nothing to answer
    poll_until(lambda: open_fds(server.pid) <= baseline, "the server closed their sockets")


def test_a_block_of_exactly_the_limit_works_and_keep_alive_outlasts_the_header_timeout(
    server: RunningServer, connect: Callable[[], socket.socket]
) -> None:
    sock = connect()
    buffered = bytearray()
    for _ in range(2):
        sock.sendall(block_of(LIMIT_BYTES))
        status, headers, body = read_response(sock, buffered)
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert "connection" not in headers  # kept alive
        # Idle between requests, longer than the header timeout: keep-alive's to judge (5 s).
        time.sleep(HEADER_TIMEOUT_S + 1)
    sock.sendall(block_of(LIMIT_BYTES + 1))  # one byte more, on the same connection
    assert_431(read_to_close(sock))


TRAILER_LINE = b"X-T: " + b"a" * 1000 + b"\r\n"


@pytest.mark.parametrize(
    "head",
    [
        b"PUT /api/v1/files/stream/t.bin HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["upload", "healthz"],
)
def test_64_mib_of_trailers_cost_no_memory_and_end_the_connection(
    server: RunningServer, connect: Callable[[], socket.socket], head: bytes
) -> None:
    pid = server.pid
    warm = connect()  # the upload and refusal paths' first-use allocations are not counted
    warm.sendall(head + b"5\r\nhello\r\n0\r\n" + TRAILER_LINE * 64)
    read_to_close(warm)

    rss_before, peak_before, read_before = (
        status_of(pid, "VmRSS"),
        status_of(pid, "VmHWM"),
        bytes_read(pid),
    )
    sock = connect()
    sent = flood(sock, head + b"5\r\nhello\r\n0\r\n", TRAILER_LINE * 64)
    response = read_to_close(sock)  # and the server closed the connection
    read = bytes_read(pid) - read_before
    rss_growth = status_of(pid, "VmRSS") - rss_before
    peak_growth = status_of(pid, "VmHWM") - peak_before
    print(
        f"\nclient sent {sent / MiB:.1f} MiB of trailers; the server read {read / KiB:.0f} KiB, "
        f"RSS +{rss_growth / KiB:.0f} KiB, peak +{peak_growth / KiB:.0f} KiB; "
        f"answer {response[:12]!r}"
    )
    assert peak_growth < RSS_MARGIN_BYTES  # uvicorn alone kept every trailer line: ~+2x
    if head.startswith(b"PUT"):
        # The upload reads its body: the framing limit refuses it, nothing more is read.
        assert_431(response)
        assert read <= 2 * LIMIT_BYTES + READ_MARGIN_BYTES
        assert sent < FLOOD_BYTES
        incoming = server.media_root / ".incoming"
        poll_until(lambda: not list(incoming.glob("*")), "the refused upload kept nothing")
    else:
        # /healthz may answer before the framing is over the limit, then linger (reading and
        # discarding) for a bounded while: either way a short answer, then the close.
        assert response.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 431 ")), response[:200]


def test_trailers_trickling_are_408_and_their_connections_closed(
    server: RunningServer, connect: Callable[[], socket.socket]
) -> None:
    head = (
        b"PUT /api/v1/files/stream/t.bin HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    baseline = open_fds(server.pid)
    slow = [connect() for _ in range(CONNECTIONS)]
    for sock in slow:
        sock.sendall(head + b"5\r\nhello\r\n0\r\n")
    lines, most_fds, received = trickle_until_closed(server.pid, slow, b"X-Slow: 1\r\n")
    assert most_fds > baseline  # the fd count does see the connections
    assert lines > HEADER_TIMEOUT_S  # they kept sending: the limit is on the section, not silence
    for data in received:
        assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data[:200]
        assert b'"type":"urn:mediasvc:problem:request-timeout"' in data
    poll_until(lambda: open_fds(server.pid) <= baseline, "the server closed their sockets")


def trickle_until_closed(
    pid: int, socks: list[socket.socket], piece: bytes, *, past_eof: bool = False
) -> tuple[int, int, list[bytes]]:
    """Send ``piece`` on every socket every 0.5 s until the server closed them all; how many
    rounds that took, the most fds the server had meanwhile, and what each socket received.
    ``past_eof``: a client that keeps sending after the server's FIN, until a send or receive
    fails (the server has closed the socket and resets)."""
    received = {sock: b"" for sock in socks}
    open_ = set(socks)
    at_eof: set[socket.socket] = set()
    rounds = 0
    most_fds = 0
    deadline = time.monotonic() + BOUND_S
    while open_ and time.monotonic() < deadline:
        most_fds = max(most_fds, open_fds(pid))
        for sock in list(open_):
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                open_.discard(sock)
        rounds += 1
        waiting = list(open_ - at_eof)
        readable, _, _ = select.select(waiting, [], [], 0.5) if waiting else ([], [], [])
        if not waiting:
            time.sleep(0.5)
        for sock in readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                open_.discard(sock)
                continue
            received[sock] += chunk
            if not chunk:
                at_eof.add(sock)
                if not past_eof:
                    open_.discard(sock)
    assert not open_, f"{len(open_)} connections still open"
    return rounds, most_fds, [received[sock] for sock in socks]


def test_answered_requests_whose_endless_body_trickles_are_closed(
    server: RunningServer, connect: Callable[[], socket.socket]
) -> None:
    # Routes that read no body, sent 10 GB of it a byte at a time: the answer goes out, then
    # the connection is closed after the lingering close, not kept reading the body for ever.
    uid = "0" * 32
    heads = [
        b"GET /healthz",
        f"GET /api/v1/files/{uid}/metadata".encode(),
        f"DELETE /api/v1/files/{uid}".encode(),
    ]
    baseline = open_fds(server.pid)
    slow = [connect() for _ in range(CONNECTIONS)]
    for i, sock in enumerate(slow):
        sock.sendall(heads[i % 3] + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000000\r\n\r\n")
    rounds, most_fds, received = trickle_until_closed(server.pid, slow, b"x", past_eof=True)
    print(
        f"\n{CONNECTIONS} connections with endless bodies closed after {rounds} rounds of sending; "
        f"server fds {baseline} → {most_fds}"
    )
    assert most_fds > baseline  # the fd count does see the connections
    for i, data in enumerate(received):
        status = int(data.split(b" ", 2)[1])
        assert status == 200 if i % 3 == 0 else 400 <= status < 500, data[:200]
    assert rounds > 2 * LINGERING_CLOSE_S  # the client kept sending through the linger
    poll_until(lambda: open_fds(server.pid) <= baseline, "the server closed their sockets")


def test_an_upload_and_keep_alive_after_a_read_body_are_unaffected(
    server: RunningServer, connect: Callable[[], socket.socket]
) -> None:
    sock = connect()
    buffered = bytearray()
    body = b"z" * 100_000
    for name in ("a.bin", "b.bin"):  # Content-Length, then chunked with a trailer
        if name == "a.bin":
            sock.sendall(
                f"PUT /api/v1/files/stream/{name} HTTP/1.1\r\nHost: t\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        else:
            sock.sendall(
                f"PUT /api/v1/files/stream/{name} HTTP/1.1\r\nHost: t\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
                + b"%x\r\n" % len(body)
                + body
                + b"\r\n0\r\nX-Checksum: 1\r\n\r\n"
            )
        status, headers, answer = read_response(sock, buffered)
        assert status == 201, answer
        assert json.loads(answer)["size"] == len(body)
        assert "connection" not in headers  # kept alive
    # A body that /healthz does not read but that arrived whole: kept alive too.
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
    assert read_response(sock, buffered)[0] == 200
    sock.sendall(block_of(200))
    assert read_response(sock, buffered)[0] == 200
