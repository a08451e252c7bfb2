"""Helpers shared by the test modules: one definition each, imported from here.

A test module imports what it shares from here (or fixtures from conftest.py), never from
another test module.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import re
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from arq.worker import Worker
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text, update

from mediasvc.app import create_app
from mediasvc.config import Settings
from mediasvc.db.migrations import upgrade
from mediasvc.db.models import EventRecord, FileRecord
from mediasvc.db.session import Database, make_engine
from mediasvc.ingest.checksum import repr_digest_header
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.worker import worker_settings
from tests.conftest import PG_SERVER, RunningServer, leftovers, truncate

MiB = 1024 * 1024
PROBLEM_JSON = "application/problem+json"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 answer: this status, problem+json, the four members (a HEAD has no body)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    if response.request.method == "HEAD":
        return {}
    problem: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= problem.keys()
    assert problem["status"] == status
    assert problem["detail"]
    return problem


# --- multipart/byteranges answers -------------------------------------------------------------

MULTIPART_CT = re.compile(r"multipart/byteranges; boundary=([0-9A-Za-z'()+_,./:=?-]{1,70})")


CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@dataclass
class Part:
    first: int
    last: int
    total: int
    content_type: str | None
    payload: bytes


def parse_byteranges(response: httpx.Response) -> list[Part]:
    """Parse a multipart/byteranges body strictly (RFC 9110 §14.6), reading each part by length."""
    match = MULTIPART_CT.fullmatch(response.headers["content-type"])
    assert match, response.headers["content-type"]
    delimiter = b"--" + match.group(1).encode("ascii")
    body = response.content
    assert int(response.headers["content-length"]) == len(body)
    assert body.startswith(delimiter + b"\r\n")
    pos = len(delimiter) + 2
    parts: list[Part] = []
    while True:
        header_end = body.index(b"\r\n\r\n", pos)
        headers: dict[str, str] = {}
        for line in body[pos:header_end].decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            assert sep, f"bad part header line {line!r}"
            headers[name.strip().lower()] = value.strip()
        content_range = CONTENT_RANGE.fullmatch(headers["content-range"])
        assert content_range, headers["content-range"]
        first, last, total = map(int, content_range.groups())
        assert first <= last < total
        start = header_end + 4
        parts.append(
            Part(
                first,
                last,
                total,
                headers.get("content-type"),
                body[start : start + last - first + 1],
            )
        )
        pos = start + last - first + 1
        assert body[pos : pos + 2] == b"\r\n"
        pos += 2
        assert body[pos : pos + len(delimiter)] == delimiter
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            pos += 2
            break
        assert body[pos : pos + 2] == b"\r\n"
        pos += 2
    assert body[pos:].strip(b"\r\n") == b"", "only CRLF may follow the close delimiter"
    return parts


# --- raw sockets against a served app, files on disk ------------------------------------------

# Bounds of the polls below: generous, they only end a test that would otherwise hang.
POLL_TIMEOUT_S = 30.0


def part_files(media_root: Path) -> list[Path]:
    return sorted(media_root.rglob("*.part"))


def connect(server: RunningServer) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=POLL_TIMEOUT_S)
    return sock


def read_head(sock: socket.socket, timeout_s: float = POLL_TIMEOUT_S) -> tuple[int, dict[str, str]]:
    """Status and headers of the response on ``sock``; (0, {}) if it closed without one.

    Bounded: recv() waits at most until the deadline (a socket timeout, not a sleep).
    """
    deadline = time.monotonic() + timeout_s
    received = b""
    while b"\r\n\r\n" not in received:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no response within {timeout_s} s: {received!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return 0, {}
        if not chunk:
            return 0, {}
        received += chunk
    status_line, *lines = received.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 "), status_line
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers


def poll_until(predicate: Callable[[], bool], what: str, timeout_s: float = POLL_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.01)  # a poll interval, not a wait for something to happen


def request_head(method: str, url: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {url} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- request bodies that count or hold, and what a failed upload leaves -----------------------


class CountingBody:
    """A request body sent chunked (or with the Content-Length given in headers) that counts how
    many chunks the app asked for, to tell "refused before reading" from "refused while reading"."""

    def __init__(self, data: bytes, chunk_size: int = 16 * 1024) -> None:
        self.data = data
        self.chunk_size = chunk_size
        self.pulled = 0
        self.chunks = -(-len(data) // chunk_size)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.chunk_size):
            self.pulled += 1
            yield self.data[start : start + self.chunk_size]


async def assert_nothing_left(client: httpx.AsyncClient, media_root: Path) -> None:
    assert leftovers(media_root) == []
    listing = await client.get("/api/v1/files")
    assert listing.status_code == 200, listing.text
    assert listing.json()["items"] == []


class HeldBody:
    """Sends ``data[:split]``, then nothing until ``go`` is set, then the rest."""

    def __init__(self, data: bytes, split: int) -> None:
        self.data, self.split, self.pulled = data, split, 0
        self.go = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.pulled += 1
        yield self.data[: self.split]
        await self.go.wait()
        self.pulled += 1
        yield self.data[self.split :]


# --- uploads through the app in-process -------------------------------------------------------

BATCH = 64 * 1024  # io_chunk_size_bytes in the test settings: the feeder's batch size


def random_bytes(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


@asynccontextmanager
async def client_for(
    settings: Settings, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """A client on a fresh app with these settings (request `client` too: it empties the table).
    ``raise_app_exceptions=False``: a server error comes back as the client would see it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def upload(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    response = await client.request(method, url, **kwargs)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    meta: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/api/v1/files/{meta['uid']}"
    return meta


PNG_HEADER = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00"
)


UID_RE = re.compile(r"^[a-z2-7]{26}$")


METADATA_FIELDS = {
    "uid",
    "original_name",
    "extension",
    "format",
    "size",
    "sha256",
    "created_at",
    "expires_at",
    "max_downloads",
    "downloads",
    "local",
    "cloud_status",
    "cloud_path",
    "download_url",
    # The probe job's (issue 7).
    "probe_status",
    "probe_error",
    "media",
    "preview_url",
    "derived_from",
    "faststart_uid",
    # The transcode job's (issue 16).
    "processing",
    "renditions",
    "metadata",
}


def assert_created(response: httpx.Response) -> dict[str, Any]:
    """A 201 upload answer: every metadata field and the delete token, a UID, its Location."""
    assert response.status_code == 201, response.text
    meta: dict[str, Any] = response.json()
    assert set(meta) == METADATA_FIELDS | {"delete_token"}
    assert UID_RE.match(meta["uid"])
    assert response.headers["location"] == f"/api/v1/files/{meta['uid']}"
    return meta


async def small_chunks(data: bytes, *, seed: int = 7, max_chunk: int = 997) -> AsyncIterator[bytes]:
    """`data` in many small chunks of varying size: httpx sends it chunked, no Content-Length."""
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        size = rng.randint(1, max_chunk)
        yield data[position : position + size]
        position += size


async def assert_downloads_exactly(
    client: httpx.AsyncClient, meta: dict[str, Any], body: bytes
) -> None:
    download = await client.get(f"/api/v1/files/{meta['uid']}")
    assert download.status_code == 200, download.text
    assert download.content == body
    assert hashlib.sha256(download.content).hexdigest() == meta["sha256"]
    assert int(download.headers["content-length"]) == len(body)
    assert download.headers["repr-digest"] == repr_digest_header(meta["sha256"])


def assert_stored_at_uid_path(media_root: Path, uid: str, body: bytes) -> None:
    """Exactly one file on disk, at <root>/<uid[:2]>/<uid>, holding the body; no .part left."""
    root = media_root.resolve()
    assert leftovers(root) == [root / uid[:2] / uid]
    assert (root / uid[:2] / uid).read_bytes() == body


def files_outside(root: Path, media_root: Path) -> list[Path]:
    media_root = media_root.resolve()
    return [
        p
        for p in root.resolve().rglob("*")
        if p.is_file() and media_root not in p.parents and p != media_root
    ]


# --- multipart/form-data bodies ---------------------------------------------------------------

BOUNDARY = "----mediasvcTestBoundary7MA4YWxkTrZu0gW"


def form_part(
    name: str,
    data: bytes,
    *,
    filename: str | bytes | None = None,
    content_type: str | None = None,
    disposition: bytes | None = None,
) -> bytes:
    """One part, framing included up to (not including) the CRLF before the next delimiter."""
    if disposition is None:
        disposition = b'form-data; name="' + name.encode() + b'"'
        if filename is not None:
            raw = filename if isinstance(filename, bytes) else filename.encode()
            disposition += b'; filename="' + raw + b'"'
    headers = b"Content-Disposition: " + disposition + b"\r\n"
    if content_type is not None:
        headers += b"Content-Type: " + content_type.encode() + b"\r\n"
    return headers + b"\r\n" + data


def multipart_body(*parts: bytes, boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """Parts joined by delimiters, ending with the closing delimiter unless ``close`` is False."""
    delimiter = b"--" + boundary.encode()
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (delimiter + b"--\r\n" if close else b"")


def multipart_headers(boundary: str = BOUNDARY) -> dict[str, str]:
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}


# --- jobs: an app beside a worker, rows, polling ----------------------------------------------


async def started(settings: Settings) -> tuple[FastAPI, httpx.AsyncClient]:
    await truncate(settings.database_url)
    app = create_app(settings)
    context = app.router.lifespan_context(app)
    await context.__aenter__()
    app.state.test_lifespan = context
    transport = httpx.ASGITransport(app=app)
    return app, httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def stopped(app: FastAPI, client: httpx.AsyncClient) -> None:
    await client.aclose()
    await app.state.test_lifespan.__aexit__(None, None, None)


async def run_worker(settings: Settings) -> None:
    """A real arq worker on the real Redis, in burst mode: runs what is queued, then returns."""
    cls = worker_settings(settings)
    worker = Worker(
        functions=cls.functions,
        redis_settings=cls.redis_settings,
        on_startup=cls.on_startup,
        on_shutdown=cls.on_shutdown,
        burst=True,
        poll_delay=0,
        handle_signals=False,
    )
    try:
        await worker.main()
    finally:
        await worker.close()


async def row(settings: Settings, uid: str) -> FileRecord:
    ctx = JobContext.build(settings)
    try:
        async with ctx.db.session() as session:
            record = await session.get(FileRecord, uid)
            assert record is not None
            return record
    finally:
        await ctx.db.dispose()


async def wait_for(condition: Callable[[], object], timeout_s: float = 30.0) -> None:
    """Poll an async condition until true, within a bound (no bare sleeps)."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    while not await condition():  # type: ignore[misc]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def age_rows(settings: Settings, **values: object) -> None:
    ctx = JobContext.build(settings)
    async with ctx.db.session() as session:
        await session.execute(update(FileRecord).values(**values))
        await session.commit()
    await ctx.db.dispose()


# --- the probe: media uploads and their probe results -----------------------------------------

DEAD_REDIS_URL = "redis://127.0.0.1:9/0"


async def upload_file(
    client: httpx.AsyncClient, path: Path, name: str | None = None, **headers: str
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/files/stream",
        content=await asyncio.to_thread(path.read_bytes),
        headers={"X-Filename": name or path.name, **headers},
    )
    assert response.status_code == 201, response.text
    meta: dict[str, Any] = response.json()
    return meta


async def upload_bytes(client: httpx.AsyncClient, body: bytes, name: str) -> dict[str, Any]:
    response = await client.post("/api/v1/files/stream", content=body, headers={"X-Filename": name})
    assert response.status_code == 201, response.text
    meta: dict[str, Any] = response.json()
    return meta


async def probed(
    client: httpx.AsyncClient,
    uid: str,
    timeout_s: float = 60,
    *,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The metadata once the in-process probe is no longer pending (polled, bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        url = f"/api/v1/files/{uid}/metadata"
        meta: dict[str, Any] = (await client.get(url, headers=headers)).json()
        if meta["probe_status"] != "pending":
            return meta
        assert time.monotonic() < deadline, f"still pending: {meta}"
        await asyncio.sleep(0.05)


# --- API keys, rows and leftovers -------------------------------------------------------------


async def db_rows(url: str) -> dict[str, str | None]:
    """Every row of the files table, tombstones included: uid → gone_reason."""
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(text("SELECT uid, gone_reason FROM files"))
            return {uid: reason for uid, reason in result}
    finally:
        await engine.dispose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def fresh_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client on a fresh app with these settings, on an empty files table."""
    await truncate(settings.database_url)
    async with client_for(settings) as http:
        yield http


async def assert_clean(settings: Settings, expected_rows: dict[str, str | None]) -> None:
    """No .part file, only the live files on disk, only the expected rows."""
    await assert_clean_at(settings.media_root, settings.database_url, expected_rows)


async def assert_clean_at(
    media_root: Path,
    database_url: str,
    expected_rows: dict[str, str | None],
    *,
    on_disk: set[str] | None = None,
) -> None:
    """No .part file; on disk the live files (or ``on_disk``); in the table exactly these rows."""
    files = leftovers(media_root)
    assert [p for p in files if p.name.endswith(".part")] == []
    if on_disk is None:
        on_disk = {uid for uid, reason in expected_rows.items() if reason is None}
    assert {p.name for p in files} == on_disk
    assert await db_rows(database_url) == expected_rows


# --- download budgets -------------------------------------------------------------------------


async def upload_data(client: httpx.AsyncClient, data: bytes, **params: int) -> dict[str, Any]:
    response = await client.post("/api/v1/files/stream", content=data, params=params)
    assert response.status_code == 201, response.text
    meta: dict[str, Any] = response.json()
    return meta


def assert_gone(response: httpx.Response) -> None:
    assert response.status_code == 410, response.text
    if response.request.method != "HEAD":
        assert response.headers["content-type"] == "application/problem+json"


# --- stalled readers --------------------------------------------------------------------------


def stalled_reader(base_url: str, path: str, *, headers: str = "") -> socket.socket:
    """A connection that asks for a download and then reads nothing (a small receive buffer)."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
    return sock


def wait_until(condition: Callable[[], bool], what: str, *, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


# --- end to end: big files and curl -----------------------------------------------------------


def make_file(path: Path, size_bytes: int) -> str:
    """Write ``size_bytes`` of varied bytes in 1 MiB blocks (never all in memory); return sha256."""
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for index in range(size_bytes // MiB):
            chunk = index.to_bytes(8, "big") + block[8:]
            digest.update(chunk)
            out.write(chunk)
        tail = block[: size_bytes % MiB]
        digest.update(tail)
        out.write(tail)
    return digest.hexdigest()


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--fail-with-body", *args],
        capture_output=True,
        timeout=600,
        check=True,
    )


# --- tus (api/tus.py) -------------------------------------------------------------------------

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}
UPLOADS = "/api/v1/uploads"


def metadata(**pairs: str | bytes) -> str:
    """An Upload-Metadata header."""
    encoded = []
    for key, value in pairs.items():
        raw = value.encode() if isinstance(value, str) else value
        encoded.append(f"{key} {base64.b64encode(raw).decode()}")
    return ",".join(encoded)


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


async def create(
    client: httpx.AsyncClient, length: int | None, headers: dict[str, str] | None = None, **kw: Any
) -> str:
    """A new upload's path."""
    sized = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    response = await client.post(UPLOADS, headers={**TUS, **sized, **(headers or {})}, **kw)
    assert response.status_code == 201, response.text
    assert parsedate_to_datetime(response.headers["upload-expires"]).tzinfo is not None
    return httpx.URL(response.headers["location"]).path


async def patch(
    client: httpx.AsyncClient, path: str, offset: int, data: bytes, **headers: str
) -> httpx.Response:
    return await client.patch(
        path, content=data, headers={**OCTETS, "Upload-Offset": str(offset), **headers}
    )


async def offset_of(client: httpx.AsyncClient, path: str, **headers: str) -> int:
    response = await client.head(path, headers={**TUS, **headers})
    assert response.status_code == 200, response.status_code
    return int(response.headers["upload-offset"])


async def send_in_pieces(
    client: httpx.AsyncClient, path: str, data: bytes, pieces: int, **headers: str
) -> httpx.Response:
    """``data`` in ``pieces`` PATCHes, each resumed from a HEAD; the last response."""
    step = -(-len(data) // pieces)
    response = None
    for start in range(0, len(data), step):
        assert await offset_of(client, path, **headers) == start
        response = await patch(client, path, start, data[start : start + step], **headers)
        assert response.status_code == 204, response.text
    assert response is not None
    return response


# --- Prometheus metrics ---------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, parsed by prometheus-client's own parser."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


# --- the events outbox ----------------------------------------------------------------------


async def events_about(settings: Settings, subject: str) -> list[EventRecord]:
    """The outbox's events about ``subject`` (a file's or an upload's uid), oldest first."""
    db = Database(settings.database_url)
    try:
        async with db.session() as session:
            query = select(EventRecord).where(EventRecord.subject == subject)
            return list((await session.scalars(query.order_by(EventRecord.id))).all())
    finally:
        await db.dispose()


@asynccontextmanager
async def database(url: str) -> AsyncIterator[Database]:
    db = Database(url)
    try:
        yield db
    finally:
        await db.dispose()


async def add_file(db: Database, **values: object) -> FileRecord:
    """A row of a 1234-byte video (``values`` set on it), as the ORM reads it back."""
    now = datetime.now(UTC)
    record = FileRecord(
        uid=secrets.token_hex(13),
        original_name="clip.mp4",
        format="video/mp4",
        size=1234,
        sha256="ab" * 32,
        created_at=now,
        delete_token_hash="cd" * 32,
        **values,
    )
    async with db.session() as session:
        session.add(record)
        await session.commit()
    async with db.session() as session:
        stored = await session.get(FileRecord, record.uid)
    assert stored is not None
    return stored


@asynccontextmanager
async def own_postgres_database() -> AsyncIterator[str]:
    """A database of the test's own, migrated to head, so its schema may be broken and its
    connections terminated at will."""
    name = f"mediasvc_own_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = f"{PG_SERVER.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
        await asyncio.to_thread(upgrade, url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def with_file_insert_cut_off(url: str, request: Awaitable[httpx.Response]) -> httpx.Response:
    """``request``'s answer when the database goes away under the INSERT of a new file's row
    (an outage, or a failover, mid-commit) in database ``url`` (own_postgres_database): the
    table is locked, the backend that waits for it is terminated, then the lock is let go."""
    name = url.rsplit("/", 1)[1]
    locker = await asyncpg.connect(f"{PG_SERVER}/{name}")
    # Another connection watches: pg_stat_activity is a snapshot within a transaction.
    watcher = await asyncpg.connect(f"{PG_SERVER}/postgres")
    locked = locker.transaction()
    await locked.start()
    await locker.execute("LOCK TABLE files IN ACCESS EXCLUSIVE MODE")
    task = asyncio.ensure_future(request)
    try:
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while True:
            assert not task.done(), "the request ended before it inserted a file's row"
            waiting = await watcher.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 "
                "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO files%'",
                name,
            )
            if waiting:
                break
            assert time.monotonic() < deadline, "no INSERT into files waited for the lock"
            await asyncio.sleep(0.02)
        for row in waiting:
            assert await watcher.fetchval("SELECT pg_terminate_backend($1)", row["pid"])
        await locked.rollback()
        return await task
    finally:
        task.cancel()  # a no-op once it answered
        await locker.close()
        await watcher.close()
