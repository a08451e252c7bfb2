"""tus end to end: a real `mediasvc serve` (uvicorn), real clients (tuspy, raw sockets), on
PostgreSQL and SQLite. What a cut, a crash (SIGKILL) and a second writer do to an upload, and
that what comes out is the file that went in (openssl's sha256)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from tusclient import client as tus_client

from mediasvc.db.models import UploadRecord
from mediasvc.db.session import make_engine
from mediasvc.resumable.writers import try_lock
from tests.conftest import RunningServer
from tests.helpers import OCTETS, TUS, UPLOADS, connect, poll_until, random_bytes, read_head

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
# Small batches and checkpoints, so a few MB cross several of each.
FINE = {
    "MEDIASVC_IO_CHUNK_SIZE_BYTES": str(64 * 1024),
    "MEDIASVC_UPLOAD_CHECKPOINT_EVERY_BYTES": str(256 * 1024),
    "MEDIASVC_UPLOAD_LEASE_CHECK_S": "0.2",
}
# What uvicorn may hold of a body when a newer request ends the one reading it (it pauses
# reading past 64 KiB buffered, and one read brings up to 256 KiB): those bytes are not read.
UVICORN_READ_AHEAD = 512 * 1024


def openssl_sha256(path: Path) -> str:
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-r", str(path)], check=True, capture_output=True
    )
    return out.stdout.split()[0].decode()


def head(server: RunningServer, path: str) -> httpx.Response:
    response = httpx.head(f"{server.base_url}{path}", headers=TUS, timeout=10)
    assert response.status_code == 200, response.status_code
    return response


def offset(server: RunningServer, path: str) -> int:
    return int(head(server, path).headers["upload-offset"])


def create(server: RunningServer, length: int) -> str:
    response = httpx.post(
        f"{server.base_url}{UPLOADS}", headers={**TUS, "Upload-Length": str(length)}, timeout=10
    )
    assert response.status_code == 201, response.text
    return httpx.URL(response.headers["location"]).path


def patch(server: RunningServer, path: str, at: int, data: bytes) -> httpx.Response:
    return httpx.patch(
        f"{server.base_url}{path}",
        content=data,
        headers={**OCTETS, "Upload-Offset": str(at)},
        timeout=60,
    )


def row_offset(db_url: str, path: str) -> int:
    """The upload's recorded offset, read from its row: unlike a HEAD, which ends a PATCH
    still running for the upload, it leaves that request alone."""

    async def read() -> int:
        engine = make_engine(db_url)
        try:
            async with engine.connect() as connection:
                uid = path.rsplit("/", 1)[1]
                query = select(UploadRecord.offset).where(UploadRecord.uid == uid)
                return int((await connection.execute(query)).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(read())


def unheld(server: RunningServer, path: str) -> bool:
    """No request holds the upload (the writer's lock on its file is free): one that was cut
    has recorded what it kept and ended."""
    fd = try_lock(server.media_root / ".incoming" / f"{path.rsplit('/', 1)[1]}.upload")
    if fd is None:
        return False
    os.close(fd)
    return True


def file_sha256(server: RunningServer, path: str) -> str:
    location = head(server, path).headers["content-location"]
    meta = httpx.get(f"{server.base_url}{location}/metadata", timeout=10)
    sha: str = meta.json()["sha256"]
    return sha


def start_patch(server: RunningServer, path: str, at: int, length: int, first: bytes):  # type: ignore[no-untyped-def]
    """A PATCH whose head says ``length`` bytes and whose body so far is ``first``."""
    sock = connect(server)
    head_lines = [
        f"PATCH {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in OCTETS.items()),
        f"Upload-Offset: {at}",
        f"Content-Length: {length}",
    ]
    sock.sendall(("\r\n".join(head_lines) + "\r\n\r\n").encode() + first)
    return sock


def test_tuspy_chunks_with_checksums_stops_and_resumes_in_a_new_process(
    serve: Callable[..., tuple[RunningServer, str]], tmp_path: Path
) -> None:
    server, _ = serve(**FINE)
    source = tmp_path / "film.bin"
    source.write_bytes(random_bytes(3 * MiB + 12_345, seed=21))
    endpoint = f"{server.base_url}{UPLOADS}"
    with source.open("rb") as stream:  # tuspy would leave a file it opened open
        uploader = tus_client.TusClient(endpoint).uploader(
            file_stream=stream,
            chunk_size=300_000,
            upload_checksum=True,
            metadata={"filename": "film.bin"},
        )
        uploader.upload(stop_at=1_000_000)
    url = uploader.url
    assert url is not None
    path = httpx.URL(url).path
    assert offset(server, path) == uploader.offset == 1_000_000
    # A new process knows only the URL and the file: it asks the server where to go on.
    script = textwrap.dedent(
        """
        import sys
        from tusclient import client
        endpoint, url, path = sys.argv[1:]
        uploader = client.TusClient(endpoint).uploader(
            path, url=url, chunk_size=300_000, upload_checksum=True
        )
        assert uploader.offset == 1_000_000, uploader.offset
        uploader.upload()
        """
    )
    subprocess.run(
        [sys.executable, "-c", script, endpoint, url, str(source)], check=True, timeout=120
    )
    assert file_sha256(server, path) == openssl_sha256(source)


def test_a_cut_keeps_every_byte_that_reached_the_server(
    serve: Callable[..., tuple[RunningServer, str]],
) -> None:
    """The client goes away mid-body (a FIN after its last byte): every byte it sent reached
    the server and counts, those uvicorn had received for the app when it saw the connection
    end included (tests/test_uvicorn_protocol.py shows that case on its own: here it depends
    on when the end arrives)."""
    server, db_url = serve(**FINE)
    data = random_bytes(6 * MiB, seed=5)
    path = create(server, len(data))
    sent = 3 * MiB + 1000  # not on a batch or block boundary
    sock = start_patch(server, path, 0, len(data), data[:sent])
    poll_until(lambda: row_offset(db_url, path) >= MiB, "a checkpoint during the PATCH")
    sock.close()  # the client goes away mid-body
    poll_until(lambda: unheld(server, path), "the cut request ended")
    assert offset(server, path) == sent
    assert patch(server, path, sent, data[sent:]).status_code == 204
    assert file_sha256(server, path) == hashlib.sha256(data).hexdigest()


def test_a_crash_mid_patch_falls_back_to_the_last_checkpoint(
    start_server: Callable[..., RunningServer], empty_db_url: str
) -> None:
    env = {"MEDIASVC_DATABASE_URL": empty_db_url, **FINE}
    server = start_server(env)
    data = random_bytes(5 * MiB + 77, seed=9)
    path = create(server, len(data))
    sock = start_patch(server, path, 0, len(data), data[: 3 * MiB])
    poll_until(lambda: row_offset(empty_db_url, path) >= MiB, "a checkpoint during the PATCH")
    server.process.kill()  # SIGKILL: no flush, no last checkpoint
    server.process.wait(timeout=30)
    sock.close()
    restarted = start_server(env)
    kept = offset(restarted, path)
    assert MiB <= kept <= 3 * MiB
    # Resumed from the checkpoint: whatever the file held past it was cut off, never hashed twice.
    assert patch(restarted, path, kept, data[kept:]).status_code == 204
    assert file_sha256(restarted, path) == hashlib.sha256(data).hexdigest()


def test_a_patch_in_another_process_takes_over(
    start_server: Callable[..., RunningServer], empty_db_url: str
) -> None:
    # Two servers on one database and media root: two worker processes of one node.
    env = {"MEDIASVC_DATABASE_URL": empty_db_url, **FINE}
    first, second = start_server(env), start_server(env)
    data = random_bytes(4 * MiB, seed=11)
    path = create(first, len(data))
    sent = 2 * MiB + 1000  # its last bytes wait in a batch no checkpoint has taken yet
    sock = start_patch(first, path, 0, len(data), data[:sent])
    poll_until(lambda: row_offset(empty_db_url, path) >= MiB, "the first PATCH under way")
    # A HEAD on the other process ends the older request (its generation moved on), which
    # kept its bytes and let go of the lock; the HEAD tells where the upload really is.
    kept = offset(second, path)
    assert sent - UVICORN_READ_AHEAD <= kept <= sent
    status, _ = read_head(sock)
    assert status == 409
    sock.close()
    assert patch(second, path, kept, data[kept:]).status_code == 204
    assert file_sha256(first, path) == hashlib.sha256(data).hexdigest()
