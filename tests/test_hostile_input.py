"""Hostile input: header limits, slow and truncated bodies, multipart abuse, bad identifiers and
query values, and Range abuse measured by counting the server's reads.

Every test ends (teardown) by checking that the media root holds no ``.part`` file and that the
database holds exactly the rows the test meant to keep.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from mediasvc.app import create_app
from mediasvc.config import Settings
from mediasvc.db.session import make_engine
from mediasvc.ingest.feeder import DEFAULT_DEPTH
from tests.conftest import RunningServer, leftovers, truncate
from tests.helpers import (
    BOUNDARY,
    POLL_TIMEOUT_S,
    PROBLEM_JSON,
    assert_problem,
    connect,
    form_part,
    multipart_body,
    multipart_headers,
    part_files,
    poll_until,
    read_head,
    request_head,
    samples,
)

MiB = 1024 * 1024
UPLOAD_ENDPOINTS = [
    ("POST", "/api/v1/files/stream"),
    ("PUT", "/api/v1/files/stream"),
    ("PUT", "/api/v1/files/stream/name.bin"),
    ("POST", "/api/v1/files"),
]


# --- teardown: nothing left behind ---------------------------------------------------------------


async def db_uids(database_url: str) -> set[str]:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT uid FROM files"))
            return {row[0] for row in rows}
    finally:
        await engine.dispose()


@pytest.fixture
def kept() -> set[str]:
    """UIDs a test means to keep; every other row is an orphan."""
    return set()


@pytest.fixture(autouse=True)
def nothing_left_behind(tmp_path: Path, pg_url: str, kept: set[str]) -> Iterator[None]:
    # Set up first, so torn down last: after the app's lifespan and any server process ended.
    asyncio.run(truncate(pg_url))
    yield
    media_root = tmp_path / "media"  # both `make_settings` and `start_server` use this root
    assert part_files(media_root) == []
    assert asyncio.run(db_uids(pg_url)) == kept


class CountingBody:
    """A chunked request body that counts how many chunks the app pulled."""

    def __init__(self, data: bytes, chunk_size: int = 16 * 1024) -> None:
        self.data = data
        self.chunk_size = chunk_size
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.chunk_size):
            self.pulled += 1
            yield self.data[start : start + self.chunk_size]


def upload_headers(url: str) -> dict[str, str]:
    return multipart_headers() if url == "/api/v1/files" else {}


def upload_body(url: str, data: bytes) -> bytes:
    return (
        multipart_body(form_part("file", data, filename="f.bin"))
        if url == "/api/v1/files"
        else data
    )


# --- header limits (431) -------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "url"), UPLOAD_ENDPOINTS)
@pytest.mark.parametrize("shape", ["many-headers", "one-huge-header"])
async def test_oversized_headers_are_431_before_the_body_is_read(
    client: httpx.AsyncClient, settings: Settings, method: str, url: str, shape: str
) -> None:
    limit = settings.max_header_bytes
    if shape == "many-headers":
        headers = [(f"X-Pad-{i}", "v" * 16) for i in range(limit // 24 + 1)]
    else:
        headers = [("X-Filename", "a" * (limit + 1))]
    body = CountingBody(upload_body(url, random.Random(1).randbytes(256 * 1024)))
    response = await client.request(
        method, url, content=body, headers=[*upload_headers(url).items(), *headers]
    )
    problem = assert_problem(response, 431)
    assert str(limit) in problem["detail"]
    assert body.pulled == 0  # refused before a single body byte was read


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_oversized_headers_on_a_download_are_431(
    client: httpx.AsyncClient, settings: Settings, kept: set[str], method: str
) -> None:
    meta = (await client.post("/api/v1/files/stream", content=b"hello")).json()
    kept.add(meta["uid"])
    # One Range header with thousands of ranges is where an oversized header would cost the most.
    huge_range = "bytes=" + ",".join(f"{i}-{i}" for i in range(settings.max_header_bytes // 4))
    response = await client.request(
        method, f"/api/v1/files/{meta['uid']}", headers={"Range": huge_range}
    )
    assert_problem(response, 431)


async def test_headers_at_the_limit_are_accepted(
    client: httpx.AsyncClient, settings: Settings, kept: set[str]
) -> None:
    # The middleware counts name + value + 4 (": " and CRLF) for every header the server saw.
    response = await client.get("/healthz")
    assert response.status_code == 200
    base = sum(len(k) + len(v) + 4 for k, v in response.request.headers.raw)
    pad = settings.max_header_bytes - base - len("x-pad") - 4
    ok = await client.get("/healthz", headers={"X-Pad": "p" * pad})
    assert ok.status_code == 200, ok.text
    over = await client.get("/healthz", headers={"X-Pad": "p" * (pad + 1)})
    assert_problem(over, 431)


# --- a real uvicorn: raw sockets for what httpx won't do ------------------------------------------


def read_status(sock: socket.socket) -> int:
    return read_head(sock)[0]


def closed_by_server(sock: socket.socket, timeout_s: float = POLL_TIMEOUT_S) -> bool:
    """Read (and drop) whatever comes until the server closes; False if it is still open."""
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def listing(server: RunningServer) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.base_url}/api/v1/files", timeout=POLL_TIMEOUT_S)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_idle_body_in_process_is_408_with_connection_close(
    make_settings: Callable[..., Settings], settings: Settings
) -> None:
    # The ASGI server side of a stalled client: receive() never returns after the first chunk.
    app = create_app(make_settings(body_idle_timeout_s=0.2))
    never = asyncio.Event()
    messages = [{"type": "http.request", "body": b"x" * 4096, "more_body": True}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await never.wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/files/stream",
        "raw_path": b"/api/v1/files/stream",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-length", b"10485760")],
        "client": ("127.0.0.1", 54321),
        "server": ("testserver", 80),
    }
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app(scope, receive, send), timeout=POLL_TIMEOUT_S)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 408
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert headers["content-type"] == PROBLEM_JSON
    assert headers["connection"] == "close"
    assert part_files(settings.media_root) == []


@pytest.mark.e2e
@pytest.mark.parametrize(("method", "url"), [UPLOAD_ENDPOINTS[0], UPLOAD_ENDPOINTS[3]])
@pytest.mark.parametrize("sent_before_stall", [0, 4096])
def test_stalled_body_is_dropped_with_408_and_cleaned_up(
    pg_server: Callable[..., RunningServer], method: str, url: str, sent_before_stall: int
) -> None:
    server = pg_server(body_idle_timeout_s=1)
    incoming = server.media_root / ".incoming"
    declared = 10 * MiB
    headers = {"Content-Length": str(declared), "X-Filename": "slow.bin", **upload_headers(url)}
    body = upload_body(url, random.Random(2).randbytes(declared))
    with connect(server) as sock:
        sock.sendall(request_head(method, url, headers) + body[:sent_before_stall])
        # The upload is under way: its .part file exists. Then the client sends nothing more.
        poll_until(lambda: part_files(incoming) != [], "the upload's .part file appears")
        status, response_headers = read_head(sock)
        assert status == 408, status
        # RFC 9110 §15.5.9: the server closes the connection. A client that sends more body
        # after the 408 must not keep it open (uvicorn re-arms no timer once it discards data).
        assert response_headers.get("connection") == "close", response_headers
        with contextlib.suppress(OSError):  # the server may have closed already
            sock.sendall(body[sent_before_stall : sent_before_stall + 1000])
        assert closed_by_server(sock)
    poll_until(lambda: part_files(incoming) == [], "the .part file is removed")
    assert listing(server) == []


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("method", "url"), [UPLOAD_ENDPOINTS[0], UPLOAD_ENDPOINTS[2], UPLOAD_ENDPOINTS[3]]
)
def test_truncated_body_leaves_nothing(
    pg_server: Callable[..., RunningServer], method: str, url: str
) -> None:
    server = pg_server()
    incoming = server.media_root / ".incoming"
    declared = 10 * MiB
    headers = {"Content-Length": str(declared), **upload_headers(url)}
    body = upload_body(url, random.Random(3).randbytes(declared))
    with connect(server) as sock:
        sock.sendall(request_head(method, url, headers) + body[: 3 * MiB])
        poll_until(lambda: part_files(incoming) != [], "the upload's .part file appears")
        # Content-Length promised 10 MiB; 3 MiB arrived; the connection ends.
    poll_until(lambda: part_files(incoming) == [], "the .part file is removed")
    assert listing(server) == []
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200


def uploads_answered(server: RunningServer) -> float:
    """How many upload requests the server has answered (whoever was left to read it)."""
    found = samples(httpx.get(f"{server.base_url}/metrics", timeout=POLL_TIMEOUT_S).text)
    return sum(v for (name, _), v in found.items() if name == "mediasvc_uploads_total")


@pytest.mark.e2e
@pytest.mark.parametrize(("method", "url"), [UPLOAD_ENDPOINTS[0], UPLOAD_ENDPOINTS[3]])
def test_a_whole_body_whose_client_left_before_the_answer_leaves_nothing(
    pg_server: Callable[..., RunningServer], method: str, url: str
) -> None:
    """The client sends its whole body and closes at once, before the server read it all: the
    201 and its one-time delete token would reach nobody, so no file is kept (its retry would
    make a duplicate)."""
    server = pg_server()
    body = upload_body(url, random.Random(4).randbytes(40_000))
    headers = {"Content-Length": str(len(body)), **upload_headers(url)}
    with connect(server) as sock:
        sock.sendall(request_head(method, url, headers) + body)
    poll_until(lambda: uploads_answered(server) == 1, "the server is done with the upload")
    assert leftovers(server.media_root) == []
    assert listing(server) == []


@pytest.mark.e2e
def test_huge_header_through_uvicorn_is_431_and_starts_no_upload(
    pg_server: Callable[..., RunningServer],
) -> None:
    server = pg_server()
    headers = {"Content-Length": str(10 * MiB), "X-Filename": "h" * (256 * 1024)}
    with connect(server) as sock:
        sock.sendall(request_head("POST", "/api/v1/files/stream", headers))
        assert read_status(sock) == 431
    assert part_files(server.media_root) == []
    assert listing(server) == []


# --- multipart: part count and part header size ---------------------------------------------------


async def test_more_parts_than_the_limit_is_400_and_reading_stops(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    max_parts = settings.multipart_max_parts
    fields = [form_part(f"f{i}", b"x") for i in range(max_parts)]
    file_part = form_part("file", random.Random(4).randbytes(1000), filename="f.bin")
    response = await client.post(
        "/api/v1/files", content=multipart_body(*fields, file_part), headers=multipart_headers()
    )
    problem = assert_problem(response, 400)
    assert f"more than {max_parts} parts" in problem["detail"]

    # A body of endless tiny parts is refused within the first batches, not parsed to the end.
    flood = multipart_body(*(form_part("x", b"") for _ in range(200_000)))  # ~9 MB
    body = CountingBody(flood)
    response = await client.post("/api/v1/files", content=body, headers=multipart_headers())
    assert_problem(response, 400)
    total_chunks = -(-len(flood) // body.chunk_size)
    assert body.pulled < total_chunks // 10, (body.pulled, total_chunks)


async def test_exactly_the_part_limit_is_accepted(
    client: httpx.AsyncClient, settings: Settings, kept: set[str]
) -> None:
    fields = [form_part(f"f{i}", b"x") for i in range(settings.multipart_max_parts - 1)]
    file_part = form_part("file", b"payload", filename="f.bin")
    response = await client.post(
        "/api/v1/files", content=multipart_body(*fields, file_part), headers=multipart_headers()
    )
    assert response.status_code == 201, response.text
    kept.add(response.json()["uid"])


@pytest.mark.parametrize("where", ["file-part", "other-part"])
async def test_part_headers_over_the_limit_are_400(
    client: httpx.AsyncClient, settings: Settings, where: str
) -> None:
    limit = settings.multipart_max_part_header_bytes
    padded = (
        b'form-data; name="file"; filename="f.bin"; x-pad="' + b"p" * limit + b'"'
        if where == "file-part"
        else b'form-data; name="note"; x-pad="' + b"p" * limit + b'"'
    )
    parts = [form_part("file", b"data", disposition=padded)]
    if where == "other-part":
        parts.append(form_part("file", b"data", filename="f.bin"))
    response = await client.post(
        "/api/v1/files", content=multipart_body(*parts), headers=multipart_headers()
    )
    problem = assert_problem(response, 400)
    assert f"exceed {limit} bytes" in problem["detail"]


@pytest.mark.parametrize(
    ("start", "filler"),
    [
        (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; x="'.encode(), b"a"),
        # The parser skips spaces after a colon itself (our header count never sees them): its
        # per-line bound must still stop the part.
        (f"--{BOUNDARY}\r\nContent-Disposition:".encode(), b" "),
    ],
    ids=["value", "spaces-after-colon"],
)
async def test_a_part_header_that_never_ends_is_400_early(
    client: httpx.AsyncClient, settings: Settings, start: bytes, filler: bytes
) -> None:
    body = CountingBody(start + filler * (8 * MiB))
    response = await client.post("/api/v1/files", content=body, headers=multipart_headers())
    problem = assert_problem(response, 400)
    assert f"exceed {settings.multipart_max_part_header_bytes} bytes" in problem["detail"]
    # Refused once the parser thread sees it: at most the feeder's buffers (all queued, plus
    # the one being filled) were read, not the 8 MiB body.
    in_flight = (DEFAULT_DEPTH + 1) * settings.io_chunk_size_bytes
    assert body.pulled <= in_flight // body.chunk_size + 1


# --- invalid identifiers and query values ---------------------------------------------------------

BAD_UIDS = [
    "abc",
    "a" * 25,
    "a" * 27,
    "A" * 26,  # upper case is not our alphabet
    "0" * 26,  # nor are 0, 1, 8, 9
    "a" * 4000,
    "..%2F..%2Fetc%2Fpasswd",
    "%00" + "a" * 25,
    "é" * 26,
    "a" * 26,  # well-formed, unknown
]


@pytest.mark.parametrize("uid", BAD_UIDS)
@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("HEAD", ""), ("GET", "/metadata"), ("DELETE", ""), ("GET", "/link")],
)
async def test_invalid_or_unknown_uid_is_404_problem(
    client: httpx.AsyncClient, uid: str, method: str, suffix: str
) -> None:
    headers = {"X-Delete-Token": "t"} if method == "DELETE" else {}
    response = await client.request(method, f"/api/v1/files/{uid}{suffix}", headers=headers)
    assert_problem(response, 404)


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "abc"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "-1"},
        {"limit": "1e3"},
        {"cursor": "garbage"},
        {"cursor": "%%%"},
        {"cursor": "x" * 201},
        {"cursor": _cursor(b"\xff\xfe")},
        {"cursor": _cursor(b"2026-01-01T00:00:00|" + b"a" * 26)},  # naive time
        {"cursor": _cursor(b"2026-01-01T00:00:00+00:00|not-a-uid")},
        {"cursor": _cursor(b"no separator")},
    ],
    ids=lambda p: "&".join(f"{k}={v[:20]}" for k, v in p.items()),
)
async def test_bad_list_query_is_422_problem(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    assert_problem(await client.get("/api/v1/files", params=params), 422)


@pytest.mark.parametrize(("method", "url"), UPLOAD_ENDPOINTS)
@pytest.mark.parametrize(
    "query",
    [
        "max_downloads=-1",
        "max_downloads=0",
        "max_downloads=1000001",
        "max_downloads=abc",
        "max_downloads=1.5",
        "expires_in=1e3",
        "expires_in=0",
        "expires_in=315360001",
        "expires_in=-5",
        "expires_in=",
    ],
)
async def test_bad_upload_options_are_422_before_the_body_is_read(
    client: httpx.AsyncClient, method: str, url: str, query: str
) -> None:
    body = CountingBody(upload_body(url, b"x" * 100_000))
    response = await client.request(
        method, f"{url}?{query}", content=body, headers=upload_headers(url)
    )
    assert_problem(response, 422)
    assert body.pulled == 0


async def test_bad_download_and_link_queries_are_422(
    client: httpx.AsyncClient, kept: set[str]
) -> None:
    meta = (await client.post("/api/v1/files/stream", content=b"hello")).json()
    kept.add(meta["uid"])
    uid = meta["uid"]
    assert_problem(await client.get(f"/api/v1/files/{uid}?inline=maybe"), 422)
    assert_problem(await client.get(f"/api/v1/files/{uid}/link?expires_in=abc"), 422)
    assert_problem(await client.get(f"/api/v1/files/{uid}/link?expires_in=0"), 422)


# --- Range abuse: count the server's reads --------------------------------------------------------


def io_counters(pid: int) -> dict[str, int]:
    """The kernel's I/O accounting of the whole process (all threads): syscr, rchar, …"""
    fields = Path(f"/proc/{pid}/io").read_text().split("\n")
    return {k: int(v) for k, v in (line.split(": ") for line in fields if line)}


def measured_get(
    http: httpx.Client, pid: int, url: str, headers: dict[str, str]
) -> tuple[httpx.Response, int, int]:
    """One GET, body read to the end; the server's read syscalls and bytes read while it ran."""
    before = io_counters(pid)
    response = http.get(url, headers=headers)
    after = io_counters(pid)
    return response, after["syscr"] - before["syscr"], after["rchar"] - before["rchar"]


# The request itself costs the server a few reads that don't depend on the Range: the socket
# reads of the request (uvloop reads a request of up to 64 KiB in one or two read() calls; the
# header bytes are counted separately below), a few PostgreSQL round trips (each one read() of a
# small reply), and possibly a tick of the in-process reconciler. 64 syscalls and 64 KiB bound
# all of that many times over, while serving 1,000 ranges one by one would cost at least 1,000
# reads: the margin can't hide the cost this test is about.
READ_SYSCALL_MARGIN = 64
READ_BYTES_MARGIN = 64 * 1024


@pytest.mark.e2e
def test_range_abuse_costs_no_more_reads_than_a_plain_download(
    pg_server: Callable[..., RunningServer], kept: set[str]
) -> None:
    # Ranges spread over the whole file make a long header: allow 64 KiB of headers here.
    server = pg_server(max_header_bytes=64 * 1024)
    size = 4 * MiB
    data = random.Random(5).randbytes(size)
    with httpx.Client(base_url=server.base_url, timeout=POLL_TIMEOUT_S) as http:
        uploaded = http.post("/api/v1/files/stream", content=data)
        assert uploaded.status_code == 201, uploaded.text
        uid = uploaded.json()["uid"]
        kept.add(uid)
        url = f"/api/v1/files/{uid}"

        # Background jobs (the cloud push, the media probe) read the file too: let them finish.
        def jobs_done() -> bool:
            meta = http.get(f"{url}/metadata").json()
            return bool(
                meta["cloud_status"] == "uploaded" and meta.get("probe_status") != "pending"
            )

        poll_until(jobs_done, "the background jobs are done")

        rng = random.Random(6)
        offsets = rng.sample(range(size), 1000)  # out of order, all over the file
        thousand = "bytes=" + ",".join(f"{o}-{o}" for o in offsets)
        chain = "bytes=0-999999,500000-1499999,1000000-1999999,1500000-2499999"
        cases = {
            "plain": {},
            "1000 tiny ranges": {"Range": thousand},
            "50 x whole file": {"Range": "bytes=" + ",".join(["0-"] * 50)},
            "overlapping chain": {"Range": chain},
            "20 unordered tiny": {"Range": "bytes=" + ",".join(f"{o}-{o}" for o in offsets[:20])},
            # Control: max_ranges (100) tiny ranges in order are served part by part, so the
            # counters must see at least one read per range: they do measure per-range cost.
            "control: 100 ordered tiny": {
                "Range": "bytes=" + ",".join(f"{o}-{o}" for o in sorted(offsets[:100]))
            },
        }
        for headers in cases.values():  # warm up: imports, first-use paths, the access time
            http.get(url, headers=headers).read()
        # Each request three times, keeping the least: anything else the process reads meanwhile
        # (a reconciler tick) only ever adds, so the minimum is the request's own cost.
        costs: dict[str, tuple[int, int]] = {}
        for name, headers in cases.items():
            runs = []
            for _ in range(3):
                response, syscr, rchar = measured_get(http, server.pid, url, headers)
                if name.startswith("control"):
                    assert response.status_code == 206
                else:
                    assert response.status_code == 200, (name, response.status_code)
                    assert response.content == data
                runs.append((syscr, rchar))
            costs[name] = (min(r[0] for r in runs), min(r[1] for r in runs))
        print("\nserver reads per request (syscr, rchar):", costs)

        plain_syscr, plain_rchar = costs["plain"]
        assert plain_rchar >= size  # the plain download does read the whole file
        for name, headers in cases.items():
            if name in ("plain",) or name.startswith("control"):
                continue
            syscr, rchar = costs[name]
            header_bytes = len(headers.get("Range", ""))
            assert syscr <= plain_syscr + READ_SYSCALL_MARGIN, (name, costs)
            assert rchar <= plain_rchar + header_bytes + READ_BYTES_MARGIN, (name, costs)
        control_syscr, control_rchar = costs["control: 100 ordered tiny"]
        assert control_syscr >= 100, costs
        assert control_rchar < plain_rchar, costs
