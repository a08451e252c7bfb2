"""Real S3-protocol servers on loopback, as pytest fixtures, and a byte-counting TCP proxy.

- ``moto_server``: moto's server mode. Speaks S3 well (multipart listing and abort included)
  but keeps every object in memory (~2.4 GB RSS for a 512 MiB object): small objects only.
- ``s3rver_server``: s3rver (npm, installed by ``npm ci --prefix tests/s3rver``), disk-backed:
  for large objects. It ignores checksums and has no multipart listing.

Each server is one process per test session on a port the OS picked (read back from its log);
each test gets a fresh bucket (``moto_bucket``, ``s3rver_bucket``). A server that does not come
up fails the tests that need it, loudly; nothing is skipped.

``CountingProxy`` sits between a client and a server and counts the bytes each way, so a test
can show what a ranged GET really fetched, and can slow uploads down.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
S3RVER_BIN = PROJECT_ROOT / "tests" / "s3rver" / "node_modules" / ".bin" / "s3rver"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
REGION = "us-east-1"
_RANGE_HEADER = re.compile(rb"\r\nrange: *bytes=(\d+)-", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = REGION

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def admin(self) -> Any:
        """A plain boto3 client, to look at the bucket from outside the code under test."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def new_bucket(self) -> S3Bucket:
        name = f"t-{secrets.token_hex(6)}"
        admin = self.admin()
        admin.create_bucket(Bucket=name)
        return S3Bucket(server=self, name=name, admin=admin)


@dataclass(frozen=True, slots=True)
class S3Bucket:
    server: S3Server
    name: str
    admin: Any  # boto3 S3 client

    def object_keys(self) -> list[str]:
        listing = self.admin.list_objects_v2(Bucket=self.name)
        return [item["Key"] for item in listing.get("Contents", [])]

    def multipart_uploads(self) -> list[str]:
        """Keys of incomplete multipart uploads (moto only; s3rver has no such listing)."""
        listing = self.admin.list_multipart_uploads(Bucket=self.name)
        return [upload["Key"] for upload in listing.get("Uploads", [])]


def _start(
    argv: list[str], log_path: Path, ready: re.Pattern[str]
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server whose log announces its port; fail (never skip) if it does not."""
    log = log_path.open("wb")
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent)
    finally:
        log.close()  # the child has its own descriptor
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if match := ready.search(text):
            return proc, int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    _stop(proc)
    pytest.fail(
        f"{argv[0]} did not start; its log:\n{log_path.read_text(errors='replace')[-3000:]}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    log_dir = tmp_path_factory.mktemp("moto")
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"]
    proc, port = _start(
        argv, log_dir / "moto.log", re.compile(r"Running on http://127\.0\.0\.1:(\d+)")
    )
    try:
        yield S3Server(f"http://127.0.0.1:{port}", access_key="test", secret_key="test")
    finally:
        _stop(proc)


@pytest.fixture
def moto_bucket(moto_server: S3Server) -> Iterator[S3Bucket]:
    bucket = moto_server.new_bucket()
    yield bucket
    _empty(bucket)  # moto holds objects in memory for the whole session otherwise


@pytest.fixture(scope="session")
def s3rver_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    if not S3RVER_BIN.exists():
        pytest.fail(f"{S3RVER_BIN} is missing: run `npm ci --prefix tests/s3rver`")
    data_dir = tmp_path_factory.mktemp("s3rver")
    argv = [str(S3RVER_BIN), "-d", str(data_dir / "store"), "-a", "127.0.0.1", "-p", "0", "-s"]
    proc, port = _start(argv, data_dir / "s3rver.log", re.compile(r"listening on [\d.]+:(\d+)"))
    try:
        # s3rver accepts only its fixed credential pair.
        yield S3Server(f"http://127.0.0.1:{port}", access_key="S3RVER", secret_key="S3RVER")
    finally:
        _stop(proc)


@pytest.fixture
def s3rver_bucket(s3rver_server: S3Server) -> Iterator[S3Bucket]:
    bucket = s3rver_server.new_bucket()
    yield bucket
    _empty(bucket)  # large objects: give the disk back


def _empty(bucket: S3Bucket) -> None:
    for key in bucket.object_keys():
        bucket.admin.delete_object(Bucket=bucket.name, Key=key)


class CountingProxy:
    """A loopback TCP proxy that counts bytes each way and can slow down the upstream direction.

    ``sent_bytes``: client → server (requests and uploads); ``received_bytes``: server → client.
    ``upload_delay_s`` is slept per forwarded chunk of at most 64 KiB towards the server;
    ``cut_after_received_bytes`` drops the connection once, when that many bytes came back.
    ``range_starts``: the first byte of each ``Range: bytes=N-…`` request header seen going up.
    """

    CHUNK_BYTES = 64 * 1024

    def __init__(
        self,
        target_port: int,
        *,
        upload_delay_s: float = 0.0,
        cut_after_received_bytes: int | None = None,
    ) -> None:
        self.target_port = target_port
        self.upload_delay_s = upload_delay_s
        self.cut_after_received_bytes = cut_after_received_bytes
        self.cuts = 0
        self.sent_bytes = 0
        self.received_bytes = 0
        self.range_starts: list[int] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        self.sent_bytes = self.received_bytes = 0
        self.range_starts = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, upstream=True),
                self._pipe(up_reader, writer, upstream=False),
            )
        finally:
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)
            self._tasks.discard(task)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        try:
            while data := await src.read(self.CHUNK_BYTES):
                if upstream:
                    self.sent_bytes += len(data)
                    self.range_starts += [int(m) for m in _RANGE_HEADER.findall(data)]
                    if self.upload_delay_s:
                        await asyncio.sleep(self.upload_delay_s)
                else:
                    self.received_bytes += len(data)
                dst.write(data)
                await dst.drain()
                cut = self.cut_after_received_bytes
                if not upstream and cut is not None and self.received_bytes >= cut:
                    self.cut_after_received_bytes = None
                    self.cuts += 1
                    dst.transport.abort()  # a reset mid-body, as a flaky network does
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()


@asynccontextmanager
async def counting_proxy(
    target_port: int, *, upload_delay_s: float = 0.0, cut_after_received_bytes: int | None = None
) -> AsyncIterator[CountingProxy]:
    proxy = CountingProxy(
        target_port,
        upload_delay_s=upload_delay_s,
        cut_after_received_bytes=cut_after_received_bytes,
    )
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
