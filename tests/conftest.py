"""Fixtures: a fresh PostgreSQL database per run, a fresh app and media root per test.

Tests talk to the real PostgreSQL on 127.0.0.1:5432 (MEDIASVC_TEST_PG overrides the server URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from sqlalchemy import text

from mediasvc.app import create_app
from mediasvc.config import Settings
from mediasvc.db.migrations import upgrade
from mediasvc.storage.local import VOLUME_ID_FILE

# Media made at test time by ffmpeg (tests/test_probe.py, tests/test_previews.py).
from tests.mediafiles import media_files  # noqa: F401

# S3 servers on loopback (moto, s3rver), shared by every test module that asks for them.
from tests.s3servers import moto_bucket, moto_server, s3rver_bucket, s3rver_server  # noqa: F401

# Shared helpers assert too: rewrite them as pytest does test modules (before they are imported).
pytest.register_assert_rewrite("tests.helpers")

# The Redis database the job tests flush (MEDIASVC_TEST_REDIS: one per parallel run).
REDIS_URL = os.environ.get("MEDIASVC_TEST_REDIS", "redis://127.0.0.1:6379/13")
# A server's start-up (import, migrations check, lifespan) takes ~2 s on a quiet machine; a
# loaded shared one has been seen past 30 s.
SERVER_START_TIMEOUT_S = 90
PG_SERVER = os.environ.get("MEDIASVC_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A database made for this run, migrated to head, dropped at the end."""
    name = f"mediasvc_test_{secrets.token_hex(4)}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    url = f"{PG_SERVER.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_admin(statement: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(f"{PG_SERVER}/postgres")
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


@pytest.fixture
def make_settings(tmp_path: Path, pg_url: str) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": pg_url,
            "media_root": tmp_path / "media",
            "cloud_root": tmp_path / "bucket",
            "io_chunk_size_bytes": 64 * 1024,
            "download_chunk_size_bytes": 64 * 1024,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


async def truncate(url: str) -> None:
    from mediasvc.db.session import make_engine

    engine = make_engine(url)
    async with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execute(
                text("TRUNCATE files, uploads, events, deliveries, delivery_attempts, imports")
            )
        else:
            tables = ("delivery_attempts", "deliveries", "events", "imports", "uploads", "files")
            for table in tables:
                await connection.execute(text(f"DELETE FROM {table}"))
    await engine.dispose()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """A fresh app with its lifespan running, on an empty files table."""
    await truncate(settings.database_url)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (cert.pem, key.pem)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def edge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The nginx edge of deploy/nginx in front of a real server that offloads (tests/edge.py),
    one per module that asks: its URL."""
    from tests.edge import offloading_edge  # it builds on this module

    with offloading_edge(tmp_path_factory.mktemp("edge")) as stack:
        yield stack.base_url


def leftovers(media_root: Path) -> list[Path]:
    """Every file under the media root but its volume id: a failed upload must leave none."""
    volume_id = media_root / VOLUME_ID_FILE
    return sorted(p for p in media_root.rglob("*") if p.is_file() and p != volume_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    def __init__(self, process: subprocess.Popen[bytes], base_url: str, media_root: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.media_root = media_root

    @property
    def pid(self) -> int:
        return self.process.pid


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the most resident memory the process has ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def launch_server(
    env: dict[str, str], tmp_path: Path, *, cwd: Path | None = None, args: Sequence[str] = ()
) -> RunningServer:
    """Start `mediasvc serve` (real uvicorn) in its own process; the caller stops it."""
    port = free_port()
    media_root = Path(env.get("MEDIASVC_MEDIA_ROOT", tmp_path / "media"))
    full_env = {**os.environ, "MEDIASVC_MEDIA_ROOT": str(media_root), **env}
    full_env.pop("GLIBC_TUNABLES", None)
    with (tmp_path / f"server-{port}.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mediasvc", "serve", "--port", str(port), *args],
            env=full_env,
            cwd=cwd or tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    wait_healthy(process, base_url, tmp_path / f"server-{port}.log")
    return RunningServer(process, base_url, media_root)


def wait_healthy(process: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    """Until ``base_url``/healthz answers 200 (``SERVER_START_TIMEOUT_S`` at most); the process
    is stopped and its log raised if it exits or never answers."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    stop_process(process)
    waited = f"did not answer within {SERVER_START_TIMEOUT_S} s"
    raise RuntimeError(f"server {waited}: {log.read_text()}")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start `mediasvc serve` (real uvicorn) in its own process; stopped after the test."""
    started: list[RunningServer] = []

    def start(
        env: dict[str, str], *, cwd: Path | None = None, args: Sequence[str] = ()
    ) -> RunningServer:
        server = launch_server(env, tmp_path, cwd=cwd, args=args)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_process(server.process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not gone within 15 s."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def pg_server(
    start_server: Callable[..., RunningServer], pg_url: str
) -> Callable[..., RunningServer]:
    def start(**settings: object) -> RunningServer:
        env = {f"MEDIASVC_{name.upper()}": str(value) for name, value in settings.items()}
        return start_server({"MEDIASVC_DATABASE_URL": pg_url, **env})

    return start


@contextlib.asynccontextmanager
async def flushed_redis(url: str) -> AsyncIterator[str]:
    """The Redis database ``url``, empty on the way in and on the way out."""
    client = aioredis.from_url(url)
    await client.flushdb()
    try:
        yield url
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """The tests' Redis database (MEDIASVC_TEST_REDIS), empty before and after each test."""
    async with flushed_redis(REDIS_URL) as url:
        yield url


@pytest.fixture(params=["postgresql", "sqlite"])
async def empty_db_url(request: pytest.FixtureRequest, pg_url: str, tmp_path: Path) -> str:
    """A migrated database with no rows, once on each kind: the run's PostgreSQL database
    truncated, then a new SQLite file under ``tmp_path``; its URL."""
    if request.param == "postgresql":
        await truncate(pg_url)
        return pg_url
    url = f"sqlite+aiosqlite:///{tmp_path}/db.sqlite"
    await asyncio.to_thread(upgrade, url)
    return url


@pytest.fixture
def serve(
    start_server: Callable[..., RunningServer], empty_db_url: str
) -> Callable[..., tuple[RunningServer, str]]:
    """Start a real `mediasvc serve` on an empty, migrated database: (server, database URL)."""

    def start(**env: str) -> tuple[RunningServer, str]:
        return start_server({"MEDIASVC_DATABASE_URL": empty_db_url, **env}), empty_db_url

    return start
