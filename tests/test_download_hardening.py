"""Downloads against misbehaving clients and racing deletes, through a real `mediasvc serve`.

- A client that stops reading pins at most one read of memory, is dropped after the send
  timeout (descriptor and connection gone while the client still holds its end), and the memory
  goes back to the system (issue 11, item 3).
- A file deleted under a download is sent whole (opened before the headers) or is a 410:
  never a 503, never a 200 without its body (item 7).
- An access-time write that fails does not fail the download (item 8, read path).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from mediasvc.db.session import make_engine
from tests.conftest import RunningServer, truncate
from tests.helpers import random_bytes, stalled_reader, upload_data, wait_until

MiB = 1024 * 1024
CHUNK_BYTES = 4 * MiB  # download_chunk_size_bytes, the default
PART_BYTES = 1 * MiB  # download_send_part_bytes, the default


def process_figures(pid: int) -> dict[str, int]:
    """RSS and its peak (bytes), threads and open descriptors of a process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        "rss": int(fields["VmRSS"].split()[0]) * 1024,
        "peak_rss": int(fields["VmHWM"].split()[0]) * 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def connections_held(pid: int, port: int) -> int:
    """Descriptors of ``pid`` that are TCP connections on its listening ``port``."""
    inodes = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    held = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            listening = fields[3] == "0A"
            if local_port == port and not listening and fields[9] in inodes:
                held += 1
    return held


def port_of(server: RunningServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


@pytest.mark.e2e
async def test_stalled_range_readers_are_bounded_dropped_and_their_memory_returned(
    start_server: Callable[..., RunningServer], pg_url: str
) -> None:
    await truncate(pg_url)
    server = start_server(
        {
            "MEDIASVC_DATABASE_URL": pg_url,
            "MEDIASVC_DOWNLOAD_SEND_TIMEOUT_S": "3",
            "MEDIASVC_MALLOC_TRIM_EVERY_S": "1",
        }
    )
    readers_count = 50
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
        meta = await upload_data(http, random_bytes(32 * MiB, seed=11))
    idle = process_figures(server.pid)

    readers = [
        stalled_reader(
            server.base_url, f"/api/v1/files/{meta['uid']}", headers="Range: bytes=0-\r\n"
        )
        for _ in range(readers_count)
    ]
    try:
        # Every request is taken and stalled, then the send timeout drops them all while the
        # clients still hold their ends open: the server's descriptors come back.
        port = port_of(server)
        wait_until(
            lambda: connections_held(server.pid, port) == readers_count, "all readers connected"
        )
        wait_until(
            lambda: connections_held(server.pid, port) == 0, "the stalled connections dropped"
        )
        dropped = process_figures(server.pid)
        # Their descriptors are closed (the database pool may have grown by its connections).
        assert dropped["fds"] <= idle["fds"] + 30
        # At most one read plus one part per stalled download (was two reads and more).
        grown = dropped["peak_rss"] - idle["rss"]
        assert grown <= readers_count * (CHUNK_BYTES + PART_BYTES + MiB), grown / MiB
        # Each client sees its connection closed (reset), not a response that goes on.
        for sock in readers:
            sock.settimeout(30)
            try:
                while sock.recv(1 << 20):
                    pass
            except ConnectionResetError:
                pass
        # And the memory goes back to the system (a periodic malloc_trim).
        wait_until(
            lambda: process_figures(server.pid)["rss"] <= idle["rss"] + 64 * MiB,
            "memory returned",
        )
        after = process_figures(server.pid)
        assert after["threads"] <= idle["threads"] + 40  # anyio's worker threads, no more
    finally:
        for sock in readers:
            sock.close()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
        assert (await http.get("/healthz")).status_code == 200


@pytest.mark.e2e
async def test_delete_racing_downloads_gives_whole_bodies_or_410(
    start_server: Callable[..., RunningServer], pg_url: str
) -> None:
    await truncate(pg_url)
    server = start_server({"MEDIASVC_DATABASE_URL": pg_url})
    files, gets_per_file = 30, 10
    data = random_bytes(1_000_000, seed=12)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    statuses: Counter[int] = Counter()
    truncated = 0
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=120) as http:
        metas = [await upload_data(http, data) for _ in range(files)]

        async def get(uid: str, pause_s: float) -> None:
            nonlocal truncated
            await asyncio.sleep(pause_s)
            try:
                response = await http.get(f"/api/v1/files/{uid}")
            except httpx.RemoteProtocolError:  # a 200 whose body stopped short
                truncated += 1
                return
            statuses[response.status_code] += 1
            if response.status_code == 200:
                if response.content != data:
                    truncated += 1
            else:
                assert response.headers["content-type"] == "application/problem+json"

        async def delete(meta: dict[str, str]) -> None:
            await asyncio.sleep(0.002)
            headers = {"X-Delete-Token": meta["delete_token"]}
            response = await http.delete(f"/api/v1/files/{meta['uid']}", headers=headers)
            assert response.status_code == 204

        for meta in metas:
            pauses = [0.0005 * index for index in range(gets_per_file)]
            await asyncio.gather(delete(meta), *(get(meta["uid"], pause) for pause in pauses))
    assert truncated == 0
    assert set(statuses) <= {200, 410}, statuses
    assert sum(statuses.values()) == files * gets_per_file


@pytest.fixture
def fail_access_time_writes(pg_url: str) -> Callable[[bool], object]:
    """A PostgreSQL trigger that refuses writes of last_accessed_at as a full disk would."""

    async def set_failing(on: bool) -> None:
        engine = make_engine(pg_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("DROP TRIGGER IF EXISTS disk_full ON files"))
                if on:
                    await connection.execute(
                        text(
                            "CREATE OR REPLACE FUNCTION disk_full() RETURNS trigger AS $$ BEGIN "
                            "RAISE EXCEPTION 'could not extend file' USING ERRCODE = '53100'; "
                            "END $$ LANGUAGE plpgsql"
                        )
                    )
                    await connection.execute(
                        text(
                            "CREATE TRIGGER disk_full BEFORE UPDATE OF last_accessed_at ON files "
                            "FOR EACH ROW EXECUTE FUNCTION disk_full()"
                        )
                    )
        finally:
            await engine.dispose()

    return set_failing


async def test_download_does_not_depend_on_the_access_time_write(
    app: FastAPI,
    client: httpx.AsyncClient,
    pg_url: str,
    fail_access_time_writes: Callable[[bool], object],
) -> None:
    data = random_bytes(100_000, seed=13)
    meta = await upload_data(client, data)
    url = f"/api/v1/files/{meta['uid']}"
    await fail_access_time_writes(True)  # type: ignore[misc]
    try:
        for _ in range(3):
            response = await client.get(url)
            assert response.status_code == 200, response.text
            assert response.content == data
            assert (await client.get(url, headers={"Range": "bytes=0-9"})).content == data[:10]
            assert (await client.head(url)).status_code == 200
        access_log = app.state.services.access_log
        assert await access_log.flush() == 0  # refused: kept for a later flush
    finally:
        await fail_access_time_writes(False)  # type: ignore[misc]
    assert await access_log.flush() == 1
    engine = make_engine(pg_url)
    try:
        async with engine.connect() as connection:
            accessed = await connection.scalar(
                text("SELECT last_accessed_at FROM files WHERE uid = :uid"), {"uid": meta["uid"]}
            )
    finally:
        await engine.dispose()
    assert accessed is not None
