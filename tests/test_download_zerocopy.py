"""Downloads through a real `mediasvc serve` (uvicorn, uvloop, our protocol) go zero-copy: real
clients (curl, aria2c, ffmpeg) get the right bytes, the metrics say the bytes went with
sendfile, and a thousand downloads, some cut mid-body, leave the process's descriptors as
they were. The response's own logic (ranges, conditionals) is pinned through the ASGI app
elsewhere; the budget through a real server in test_download_budget/_reservations."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer
from tests.helpers import parse_byteranges, random_bytes, samples

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
ZEROCOPY = ("mediasvc_bytes_sent_zerocopy_total", ())
SENT = ("mediasvc_bytes_sent_total", ())


def sent_counters(server: RunningServer) -> tuple[float, float]:
    found = samples(httpx.get(f"{server.base_url}/metrics", timeout=30).text)
    return found[SENT], found[ZEROCOPY]


def upload(server: RunningServer, path: Path) -> str:
    with path.open("rb") as body:
        response = httpx.post(f"{server.base_url}/api/v1/files/stream", content=body, timeout=120)
    assert response.status_code == 201, response.text
    return str(response.json()["uid"])


def curl(*args: str) -> bytes:
    done = subprocess.run(["curl", "-sS", "--fail", *args], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_curl_full_range_and_multipart_bodies_go_zero_copy(
    pg_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = pg_server()
    data = random_bytes(24 * MiB, seed=181)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    url = f"{server.base_url}/api/v1/files/{upload(server, path)}"
    sent_before, zerocopy_before = sent_counters(server)

    assert curl(url) == data
    assert curl("-r", "1000-5999", url) == data[1000:6000]
    assert curl("-r", f"{len(data) - 64 * 1024}-", url) == data[-64 * 1024 :]
    response = httpx.get(url, headers={"Range": "bytes=0-99,5000000-9999999"}, timeout=60)
    assert response.status_code == 206
    parts = parse_byteranges(response)
    assert [part.payload for part in parts] == [data[:100], data[5_000_000:10_000_000]]

    source_bytes = len(data) + 5000 + 64 * 1024 + 100 + 5_000_000
    sent_after, zerocopy_after = sent_counters(server)
    assert zerocopy_after - zerocopy_before == source_bytes  # every file byte with sendfile
    assert 0 < sent_after - sent_before - source_bytes < 1000  # and the multipart framing


def test_aria2c_segmented_download_is_whole(
    pg_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    if shutil.which("aria2c") is None:
        pytest.fail("aria2c is missing: apt-get install aria2 (make test does)")
    server = pg_server()
    data = random_bytes(40 * MiB, seed=182)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    uid = upload(server, path)
    _, zerocopy_before = sent_counters(server)
    out = tmp_path / "out"
    done = subprocess.run(
        [
            *("aria2c", "-q", "-x", "4", "-s", "4", "-k", "1M", "--allow-overwrite=true"),
            *("--auto-file-renaming=false", "-d", str(out), "-o", "got.bin"),
            f"{server.base_url}/api/v1/files/{uid}",
        ],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = (out / "got.bin").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert sent_counters(server)[1] - zerocopy_before >= len(data)


def test_ffmpeg_seeks_into_a_video_over_http(
    pg_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = pg_server()
    video = tmp_path / "clip.mp4"
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi"),
            *("-i", "testsrc2=size=320x240:rate=25", "-t", "20", "-c:v", "libx264"),
            *("-preset", "ultrafast", "-g", "25", "-b:v", "4M", str(video)),
        ],
        check=True,
        timeout=120,
    )
    uid = upload(server, video)
    _, zerocopy_before = sent_counters(server)
    frame = tmp_path / "frame.png"
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-nostdin", "-y", "-ss", "15"),
            *("-i", f"{server.base_url}/api/v1/files/{uid}", "-frames:v", "1", str(frame)),
        ],
        check=True,
        timeout=120,
    )
    assert frame.stat().st_size > 0
    sent = sent_counters(server)[1] - zerocopy_before
    assert sent > 0  # the header, then the seek's range, with sendfile


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raw_get(port: int, path: str, *, range_: str | None, cut_after: int | None) -> int:
    """One download on a fresh connection; read it whole, or reset after ``cut_after`` bytes.
    The number of body bytes read."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        extra = f"Range: bytes={range_}\r\n" if range_ else ""
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n".encode())
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += sock.recv(65536)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] in (b"200", b"206"), head
        got = len(body)
        while cut_after is None or got < cut_after:
            piece = sock.recv(1 << 20)
            if not piece:
                break
            got += len(piece)
        if cut_after is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # reset
        return got


def test_descriptors_unchanged_after_a_thousand_downloads_some_cut_mid_body(
    pg_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = pg_server()
    size = 8 * MiB  # more than the socket buffers take: a cut one is cut mid-sendfile
    path = tmp_path / "data.bin"
    path.write_bytes(random_bytes(size, seed=183))
    uid = upload(server, path)
    port = int(server.base_url.rsplit(":", 1)[1])
    target = f"/api/v1/files/{uid}"
    raw_get(port, target, range_=None, cut_after=None)  # warm up: pools, caches, the page cache
    before = descriptors(server.pid)
    rng = random.Random(184)
    full = cut = 0
    for i in range(1000):
        if i % 10 == 0:
            assert raw_get(port, target, range_=None, cut_after=256 * 1024) < size
            cut += 1
        elif i % 10 < 3:
            assert raw_get(port, target, range_=None, cut_after=None) == size
            full += 1
        else:
            start = rng.randrange(size - MiB)
            assert raw_get(port, target, range_=f"{start}-{start + MiB - 1}", cut_after=None) == MiB
    assert (full, cut) == (200, 100)
    deadline = time.monotonic() + 60
    while descriptors(server.pid) > before:  # the last resets take a loop turn to be seen
        assert time.monotonic() < deadline, (descriptors(server.pid), before)
        time.sleep(0.1)
    # Not more than before: the baseline may still hold a connection of the upload or the
    # database pool that has since closed; a leak would be one descriptor per download.
    assert descriptors(server.pid) <= before


def test_a_slow_reader_that_keeps_reading_outlasts_the_send_timeout(
    pg_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """A whole Range goes in one zero-copy message: the send timeout is on the client taking
    nothing (the file's position not moving), not on the message, so a slow, steady reader
    gets everything even though the body takes several timeouts."""
    server = pg_server(download_send_timeout_s=1)
    size = 8 * MiB
    data = random_bytes(size, seed=185)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    uid = upload(server, path)
    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # little held by us
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        request = f"GET /api/v1/files/{uid} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        raw = b""
        started = time.monotonic()
        while piece := sock.recv(128 * 1024):
            raw += piece
            time.sleep(0.05)  # at most 2.6 MB/s: over three seconds for the whole body
        took = time.monotonic() - started
    assert raw.partition(b"\r\n\r\n")[2] == data
    assert took > 2.0  # the body took twice the timeout and more, and was not cut


def test_a_download_cut_short_counts_what_was_sent_not_what_was_asked(
    pg_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """The whole range goes in one message; the sent-bytes metrics count how far the file's
    position moved, not the message's count (a player's probe that hangs up after 1 MiB of a
    32 MiB file is not 32 MiB sent)."""
    server = pg_server()
    size = 32 * MiB
    path = tmp_path / "data.bin"
    path.write_bytes(random_bytes(size, seed=186))
    uid = upload(server, path)
    port = int(server.base_url.rsplit(":", 1)[1])
    sent_before, zerocopy_before = sent_counters(server)
    assert raw_get(port, f"/api/v1/files/{uid}", range_=None, cut_after=MiB) < size
    deadline = time.monotonic() + 30
    while sent_counters(server)[1] == zerocopy_before:  # counted once the send has ended
        assert time.monotonic() < deadline
        time.sleep(0.1)
    sent_after, zerocopy_after = sent_counters(server)
    # What the client read plus what the kernel's buffers held (a few MiB on loopback).
    assert MiB <= zerocopy_after - zerocopy_before <= 12 * MiB
    assert sent_after - sent_before <= 12 * MiB  # published every few MiB: at most what was sent
