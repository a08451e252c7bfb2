"""End to end: a real `mediasvc serve` (uvicorn) process and real curl, on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, leftovers, peak_rss_bytes, truncate
from tests.helpers import curl, make_file
from tests.mediafiles import SAMPLE_MP4

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
# The bound for the server's peak RSS while a multi-GB file goes through.
MAX_SERVER_RSS_BYTES = 150 * MiB


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def pg_server(start_server: Callable[..., RunningServer], pg_url: str) -> RunningServer:
    asyncio.run(truncate(pg_url))
    return start_server({"MEDIASVC_DATABASE_URL": pg_url})


def test_curl_upload_file_1gib_round_trip_in_bounded_memory(
    pg_server: RunningServer, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    expected = make_file(source, 1024 * MiB + 12345)
    uploaded = curl("-T", str(source), f"{pg_server.base_url}/api/v1/files/stream/")
    meta = json.loads(uploaded.stdout)
    assert meta["sha256"] == expected
    assert meta["original_name"] == "big.bin"
    assert meta["size"] == source.stat().st_size
    source.unlink()  # room for the download

    target = tmp_path / "back.bin"
    curl("-o", str(target), meta["download_url"])
    assert sha256_of(target) == expected
    rss = peak_rss_bytes(pg_server.pid)
    print(f"server peak RSS after 1 GiB up and down: {rss / MiB:.1f} MiB")
    assert rss < MAX_SERVER_RSS_BYTES, f"server peak RSS {rss / MiB:.0f} MiB"


def test_curl_data_binary_round_trip(pg_server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "clip.bin"
    expected = make_file(source, 64 * MiB + 1)
    uploaded = curl("--data-binary", f"@{source}", f"{pg_server.base_url}/api/v1/files/stream")
    meta = json.loads(uploaded.stdout)
    assert meta["sha256"] == expected
    assert meta["format"] == "application/octet-stream"  # curl's form type is generic: sniffed
    target = tmp_path / "back.bin"
    curl("-o", str(target), meta["download_url"])
    assert sha256_of(target) == expected


def test_curl_multipart_and_range_resume(pg_server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "movie.mp4"
    expected = make_file(source, 8 * MiB + 7)
    uploaded = curl("-F", f"file=@{source};type=video/mp4", f"{pg_server.base_url}/api/v1/files")
    meta = json.loads(uploaded.stdout)
    assert meta["sha256"] == expected and meta["format"] == "video/mp4"

    # A download cut after 3 MiB, resumed by curl with a Range request (-C -).
    partial = tmp_path / "partial.mp4"
    with source.open("rb") as original:
        partial.write_bytes(original.read(3 * MiB))
    curl("-C", "-", "-o", str(partial), meta["download_url"])
    assert sha256_of(partial) == expected


def test_curl_upload_with_wrong_checksum_leaves_nothing(
    pg_server: RunningServer, tmp_path: Path
) -> None:
    source = tmp_path / "f.bin"
    make_file(source, 3 * MiB)
    result = subprocess.run(
        [
            "curl",
            "-s",
            "-T",
            str(source),
            "-H",
            "X-Checksum-Sha256: " + "0" * 64,
            "-w",
            "%{http_code}",
            "-o",
            str(tmp_path / "body.json"),
            f"{pg_server.base_url}/api/v1/files/stream/",
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == b"422"
    problem = json.loads((tmp_path / "body.json").read_text())
    assert problem["status"] == 422
    assert leftovers(pg_server.media_root) == []
    assert httpx.get(f"{pg_server.base_url}/api/v1/files").json()["items"] == []


def test_embedded_defaults_run_on_sqlite(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """`make run` on a fresh machine: no settings at all, SQLite and files under ./data."""
    workdir = tmp_path / "fresh"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASVC_")}
    subprocess.run(
        [sys.executable, "-m", "mediasvc", "migrate"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    server = start_server({"MEDIASVC_MEDIA_ROOT": str(workdir / "data" / "media")}, cwd=workdir)
    sample = SAMPLE_MP4
    meta = json.loads(curl("-T", str(sample), f"{server.base_url}/api/v1/files/stream/").stdout)
    assert meta["format"] == "video/mp4"
    assert (workdir / "data" / "mediasvc.db").is_file()
    assert (workdir / "data" / "media" / meta["uid"][:2] / meta["uid"]).is_file()
    ranged = curl("-r", "100-199", meta["download_url"])
    assert ranged.stdout == sample.read_bytes()[100:200]


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASVC_")}
    env["MEDIASVC_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/empty.db"
    result = subprocess.run(
        [sys.executable, "-m", "mediasvc", "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert b"mediasvc migrate" in result.stderr


def test_serve_under_granian_keeps_the_contract(
    start_server: Callable[..., RunningServer], pg_url: str, tmp_path: Path
) -> None:
    """`mediasvc serve --server granian` (the measured alternative, README: Performance)."""
    asyncio.run(truncate(pg_url))
    server = start_server({"MEDIASVC_DATABASE_URL": pg_url}, args=["--server", "granian"])
    source = tmp_path / "clip.bin"
    expected = make_file(source, 8 * MiB + 1)
    uploaded = curl("-T", str(source), f"{server.base_url}/api/v1/files/stream/")
    meta = json.loads(uploaded.stdout)
    assert meta["sha256"] == expected

    target = tmp_path / "back.bin"
    curl("-o", str(target), meta["download_url"])
    assert sha256_of(target) == expected
    tail = httpx.get(meta["download_url"], headers={"Range": "bytes=-1000"}, timeout=30)
    assert tail.status_code == 206
    assert tail.headers["content-range"] == f"bytes {8 * MiB + 1 - 1000}-{8 * MiB}/{8 * MiB + 1}"
    assert tail.content == source.read_bytes()[-1000:]

    # X-Forwarded-Proto from a trusted proxy (127.0.0.1 by default) shapes the links, alone as
    # under uvicorn (uvicorn's own middleware reads it under both servers).
    listed = httpx.get(
        f"{server.base_url}/api/v1/files/{meta['uid']}/metadata",
        headers={"X-Forwarded-Proto": "https"},
        timeout=30,
    )
    assert listed.status_code == 200
    assert listed.json()["download_url"].startswith("https://")
