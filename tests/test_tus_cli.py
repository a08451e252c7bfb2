"""`mediasvc upload` over tus, run as a process against a real `mediasvc serve`.

- Killed (SIGKILL) mid-upload and run again with the same file: it continues from the server's
  offset (the second run sends fewer bytes, counted at a loopback proxy) and verifies.
- A network cut (the proxy aborts the connection mid-body) is retried, nothing sent twice beyond
  what was in flight.
- --parallel 4: four partial uploads joined; the same sha256 as the file.
- The state in the cache directory: keyed by path, size, mtime, server and options; gone once
  the upload is verified.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from mediasvc.cli import DEFAULT_CHUNK_BYTES, _size
from mediasvc.ids import hash_token
from mediasvc.tus_client import DEFAULT_CHUNK_BYTES as CLIENT_CHUNK_BYTES
from mediasvc.tus_client import Span, TusClient
from mediasvc.upload_state import SavedUpload, UploadKey, UploadState, cache_dir
from tests.conftest import RunningServer, truncate
from tests.tcp_proxy import proxy_to
from tests.tus_helpers import MiB, port_of, random_file, stored_file

MEDIASVC = Path(sys.executable).parent / "mediasvc"


@pytest.fixture
def server(start_server: Callable[..., RunningServer], pg_url: str) -> RunningServer:
    asyncio.run(truncate(pg_url))
    return start_server({"MEDIASVC_DATABASE_URL": pg_url})


def upload_command(path: Path, url: str, *args: str) -> list[str]:
    return [str(MEDIASVC), "upload", str(path), "--url", url, *args]


def client_env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASVC_")}
    return {**clean, "XDG_CACHE_HOME": str(tmp_path / "cache")}


def run_upload(
    path: Path, url: str, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        upload_command(path, url, *args),
        env=client_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=90,
    )


def uid_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert re.search(r"^sha256:\s+[0-9a-f]{64} \(verified\)$", result.stdout, re.M)
    # The token came with the completing response (X-Delete-Token).
    assert re.search(r"^delete_token:\s+[\w-]{20,}$", result.stdout, re.M), result.stdout
    found = re.search(r"^uid:\s+(\S+)$", result.stdout, re.M)
    assert found is not None, result.stdout
    return found.group(1)


def saved_states(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "mediasvc" / "uploads").glob("*.json"))


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_killed_mid_upload_then_run_again_resumes_and_verifies(
    server: RunningServer, tmp_path: Path
) -> None:
    size, chunk, held = 24 * MiB, 2 * MiB, 13 * MiB
    source = tmp_path / "killed.bin"
    expected = random_file(source, size)
    with proxy_to(port_of(server.base_url)) as proxy:  # one URL: the saved upload's server
        proxy.hold_at = held  # the upload stalls there; then the client is killed
        process = subprocess.Popen(
            upload_command(source, proxy.url, "--chunk-size", "2M"),
            env=client_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not proxy.holds and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.holds == 1 and process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)
        proxy.drop_all()  # the server sees the client go
        assert len(saved_states(tmp_path)) == 1

        proxy.sent = 0
        result = run_upload(source, proxy.url, tmp_path, "--chunk-size", "2M")
        uid = uid_of(result)
        # The chunk cut at the kill went again (a PATCH with a checksum is kept whole or not
        # at all), the chunks before it did not.
        assert 0 < proxy.sent < size - held + chunk, proxy.sent
    meta = stored_file(server.base_url, f"/api/v1/files/{uid}")
    assert meta["sha256"] == expected and meta["original_name"] == "killed.bin"
    assert saved_states(tmp_path) == []  # verified: forgotten


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_network_cut_is_retried_from_the_servers_offset(
    server: RunningServer, tmp_path: Path
) -> None:
    size, chunk = 20 * MiB, 4 * MiB
    source = tmp_path / "cut.bin"
    expected = random_file(source, size)
    with proxy_to(port_of(server.base_url)) as proxy:
        proxy.cut_at = 9 * MiB
        result = run_upload(source, proxy.url, tmp_path, "--chunk-size", "4M")
        uid = uid_of(result)
        assert proxy.cuts == 1 and proxy.connections >= 2
        assert proxy.sent < size + chunk, proxy.sent
    assert stored_file(server.base_url, f"/api/v1/files/{uid}")["sha256"] == expected


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_parallel_parts_are_joined_with_the_same_sha256(
    server: RunningServer, tmp_path: Path
) -> None:
    size = 10 * MiB + 4099
    source = tmp_path / "parallel.bin"
    expected = random_file(source, size)
    result = run_upload(
        source, server.base_url, tmp_path, "--parallel", "4", "--chunk-size", "1M",
        "--max-downloads", "3", "--expires-in", "3600",
    )  # fmt: skip
    meta = stored_file(server.base_url, f"/api/v1/files/{uid_of(result)}")
    assert meta["sha256"] == expected and meta["size"] == size
    # The options went as metadata of the final upload.
    assert meta["original_name"] == "parallel.bin"
    assert meta["max_downloads"] == 3 and meta["expires_at"] is not None
    listed = httpx.get(f"{server.base_url}/api/v1/files", timeout=5).json()["items"]
    assert [item["uid"] for item in listed] == [meta["uid"]]  # the parts are not files


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_gone_upload_in_the_cache_starts_again(server: RunningServer, tmp_path: Path) -> None:
    """The saved URL answers 404 (expired, terminated): the file is sent again from the start."""
    source = tmp_path / "again.bin"
    expected = random_file(source, 3 * MiB)
    key = UploadKey.of(server.base_url, source, {"filename": source.name}, 1)
    gone = f"{server.base_url}/api/v1/uploads/nosuchupload0000000000"
    UploadState(key, tmp_path / "cache" / "mediasvc" / "uploads").save(SavedUpload([gone]))
    result = run_upload(source, server.base_url, tmp_path)
    assert "the earlier upload is gone; starting again" in result.stderr
    assert stored_file(server.base_url, f"/api/v1/files/{uid_of(result)}")["sha256"] == expected


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_parts_joined_by_a_killed_run_are_not_sent_again(
    server: RunningServer, tmp_path: Path
) -> None:
    """A run killed after the final POST (the parts are gone then) and before it verified: the
    saved final upload is the file; the rerun only checks it."""
    source = tmp_path / "joined.bin"
    expected = random_file(source, 4 * MiB)
    metadata = {"filename": source.name}
    with httpx.Client(timeout=30) as http:
        tus = TusClient(http, server.base_url)
        halves = [(0, 2 * MiB), (2 * MiB, 2 * MiB)]
        parts = [tus.location(tus.create(length, {}, partial=True)) for _, length in halves]
        for url, (start, length) in zip(parts, halves, strict=True):
            tus.send(Span(url, source, start, length), MiB, None, lambda _offset: None)
        final = tus.location(tus.concatenate(parts, metadata))
    with proxy_to(port_of(server.base_url)) as proxy:
        key = UploadKey.of(proxy.url, source, metadata, 2)  # the URL the rerun is given
        saved = UploadState(key, tmp_path / "cache" / "mediasvc" / "uploads")
        saved.save(SavedUpload(parts, final))
        result = run_upload(source, proxy.url, tmp_path, "--parallel", "2")
        assert re.search(r"^delete_token:\s+\(given to the run that finished it\)$",
                         result.stdout, re.M), result.stdout  # fmt: skip
        assert proxy.sent < 4096  # a HEAD and a GET of the metadata
    uid = re.search(r"^uid:\s+(\S+)$", result.stdout, re.M)
    assert uid is not None and final.endswith(uid.group(1))
    assert stored_file(server.base_url, f"/api/v1/files/{uid.group(1)}")["sha256"] == expected
    assert saved_states(tmp_path) == []


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_an_empty_file(server: RunningServer, tmp_path: Path) -> None:
    """Complete as created: the creation's response names the file and carries its token."""
    source = tmp_path / "empty.txt"
    source.write_bytes(b"")
    result = run_upload(source, server.base_url, tmp_path)
    meta = stored_file(server.base_url, f"/api/v1/files/{uid_of(result)}")
    assert meta["size"] == 0


OWNER_KEY = "tus-cli-owner-key"


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_the_api_key_goes_with_every_request(
    start_server: Callable[..., RunningServer], pg_url: str, tmp_path: Path
) -> None:
    asyncio.run(truncate(pg_url))
    keys = json.dumps([{"name": "owner", "sha256": hash_token(OWNER_KEY)}])
    server = start_server({"MEDIASVC_DATABASE_URL": pg_url, "MEDIASVC_API_KEYS": keys})
    source = tmp_path / "owned.bin"
    expected = random_file(source, 3 * MiB)
    refused = run_upload(source, server.base_url, tmp_path)
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("mediasvc: upload failed: 401 ")
    assert saved_states(tmp_path) == []  # nothing was created
    result = run_upload(
        source, server.base_url, tmp_path, "--api-key", OWNER_KEY, "--parallel", "2"
    )
    meta = stored_file(server.base_url, f"/api/v1/files/{uid_of(result)}")
    assert meta["sha256"] == expected
    owned = httpx.get(f"{server.base_url}/api/v1/files",
                      headers={"Authorization": f"Bearer {OWNER_KEY}"}, timeout=5)  # fmt: skip
    assert [item["uid"] for item in owned.json()["items"]] == [meta["uid"]]


# --- without a server -----------------------------------------------------------------------


def test_the_state_key_follows_the_file_the_server_and_the_options(tmp_path: Path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"x" * 10)
    key = UploadKey.of("http://h:1/", source, {"filename": "a.bin"}, 1)
    assert key == UploadKey.of("http://h:1", source, {"filename": "a.bin"}, 1)
    others = [
        UploadKey.of("http://h:2", source, {"filename": "a.bin"}, 1),
        UploadKey.of("http://h:1", source, {"filename": "a.bin", "max_downloads": "1"}, 1),
        UploadKey.of("http://h:1", source, {"filename": "a.bin"}, 4),
    ]
    source.write_bytes(b"y" * 11)  # another size (and mtime): another upload
    others.append(UploadKey.of("http://h:1", source, {"filename": "a.bin"}, 1))
    assert len({key.digest(), *(other.digest() for other in others)}) == 5

    state = UploadState(key, tmp_path / "cache")
    assert state.load() is None
    state.save(SavedUpload(["http://h:1/api/v1/uploads/u1"]))
    assert state.load() == SavedUpload(["http://h:1/api/v1/uploads/u1"])
    assert UploadState(others[0], tmp_path / "cache").load() is None
    state.path.write_text("{not json")  # a torn or foreign file: ignored, not an error
    assert state.load() is None
    state.forget()
    assert not state.path.exists()


def test_the_cache_directory_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "mediasvc" / "uploads"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "mediasvc" / "uploads"


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", MiB), ("512K", 512 * 1024), ("8M", 8 * MiB), ("8MiB", 8 * MiB), ("1g", 2**30)],
)
def test_chunk_sizes(text: str, size: int) -> None:
    assert _size(text) == size


@pytest.mark.parametrize("text", ["0", "-1M", "1.5M", "M", "8T", ""])
def test_bad_chunk_sizes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _size(text)


def test_the_command_lines_default_chunk_is_the_clients() -> None:
    assert DEFAULT_CHUNK_BYTES == CLIENT_CHUNK_BYTES
