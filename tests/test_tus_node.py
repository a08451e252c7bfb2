"""tus-js-client 4.3.1 under Node against a real `mediasvc serve` (tests/tus-node/upload.mjs).

- A stream upload (a Readable, the client keeps only its current chunk) through a loopback
  proxy that cuts every connection mid-body: the client retries from the server's offset, and
  what crossed the proxy stays below the file's size plus one chunk (nothing sent twice beyond
  what was in flight).
- parallelUploads: partial uploads joined by concatenation.
- A deferred length (uploadLengthDeferred, from a Buffer).
- Termination: abort(true) mid-upload; the upload is gone and its bytes with it.

Each checks the stored file's sha256 against the source's (downloaded and hashed here).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PROJECT_ROOT, RunningServer, leftovers, truncate
from tests.tcp_proxy import proxy_to
from tests.tus_helpers import UPLOADS, MiB, port_of, random_file, stored_file

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

NODE_DIR = PROJECT_ROOT / "tests" / "tus-node"


@pytest.fixture
def server(start_server: Callable[..., RunningServer], pg_url: str) -> RunningServer:
    if not (NODE_DIR / "node_modules" / "tus-js-client").is_dir():
        pytest.fail("tests/tus-node is not installed: npm ci --prefix tests/tus-node (make test)")
    asyncio.run(truncate(pg_url))
    return start_server({"MEDIASVC_DATABASE_URL": pg_url})


def node_binary() -> str:
    node = shutil.which("node")
    assert node, "node is missing (make test installs nodejs)"
    return node


def run_node(**args: Any) -> dict[str, Any]:
    result = subprocess.run(
        [node_binary(), str(NODE_DIR / "upload.mjs"), json.dumps(args)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=90,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines, result.stderr
    outcome: dict[str, Any] = json.loads(lines[-1])
    return outcome


# The first retry at once after the cut, or 300 ms after it: at once, its HEAD arrives while
# the cut PATCH is still being wound down, which the HEAD ends first (its bytes counted).
@pytest.mark.parametrize("first_retry_ms", [0, 300])
def test_a_stream_upload_cut_mid_body_resumes_without_sending_it_again(
    server: RunningServer, tmp_path: Path, first_retry_ms: int
) -> None:
    size, chunk = 24 * MiB, 4 * MiB
    source = tmp_path / "stream.bin"
    expected = random_file(source, size)
    with proxy_to(port_of(server.base_url)) as proxy:
        proxy.cut_at = 10 * MiB  # in the third PATCH's body
        outcome = run_node(
            mode="stream",
            endpoint=proxy.url + UPLOADS,
            path=str(source),
            chunkSize=chunk,
            retryDelays=[first_retry_ms, 1000, 2000],
        )
        assert outcome["ok"], outcome
        assert proxy.cuts == 1 and outcome["retries"] >= 1
        # Headers included: only what was in flight at the cut went twice.
        assert proxy.sent < size + chunk, proxy.sent
    meta = stored_file(server.base_url, outcome["contentLocation"])
    assert meta["sha256"] == expected and meta["size"] == size
    assert meta["original_name"] == "node upload.bin"


def test_parallel_uploads_are_joined_by_concatenation(
    server: RunningServer, tmp_path: Path
) -> None:
    size = 10 * MiB + 12345  # parts of unequal length
    source = tmp_path / "parallel.bin"
    expected = random_file(source, size)
    outcome = run_node(
        mode="parallel",
        endpoint=server.base_url + UPLOADS,
        path=str(source),
        chunkSize=MiB,
        parallel=4,
    )
    assert outcome["ok"], outcome
    meta = stored_file(server.base_url, outcome["contentLocation"])
    assert meta["sha256"] == expected and meta["size"] == size
    # Only the final upload is a file: the four parts are not listed.
    listed = httpx.get(f"{server.base_url}/api/v1/files", timeout=5).json()["items"]
    assert [item["uid"] for item in listed] == [meta["uid"]]


def test_a_deferred_length_from_a_buffer(server: RunningServer, tmp_path: Path) -> None:
    size = 5 * MiB + 7
    source = tmp_path / "deferred.bin"
    expected = random_file(source, size)
    outcome = run_node(
        mode="deferred", endpoint=server.base_url + UPLOADS, path=str(source), chunkSize=2 * MiB
    )
    assert outcome["ok"], outcome
    meta = stored_file(server.base_url, outcome["contentLocation"])
    assert meta["sha256"] == expected and meta["size"] == size


def test_termination_mid_upload_leaves_nothing(server: RunningServer, tmp_path: Path) -> None:
    size = 16 * MiB
    source = tmp_path / "terminated.bin"
    random_file(source, size)
    args = {"mode": "terminate", "path": str(source), "chunkSize": size}
    with proxy_to(port_of(server.base_url)) as proxy:
        proxy.hold_at = 2 * MiB  # the PATCH stalls there: the upload is surely unfinished
        args["endpoint"] = proxy.url + UPLOADS
        node = subprocess.Popen(
            [node_binary(), str(NODE_DIR / "upload.mjs"), json.dumps(args)],
            cwd=NODE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not proxy.holds and node.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.holds == 1, node.poll()
        out, err = node.communicate("abort\n", timeout=60)  # abort(true): DELETE
    outcome = json.loads(out.splitlines()[-1]) if out.strip() else {"stderr": err}
    assert outcome.get("terminated"), outcome
    head = httpx.head(outcome["url"].replace(proxy.url, server.base_url),
                      headers={"Tus-Resumable": "1.0.0"}, timeout=5)  # fmt: skip
    assert head.status_code in (404, 410), head
    deadline = time.monotonic() + 10
    while leftovers(server.media_root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(server.media_root) == []
    assert httpx.get(f"{server.base_url}/api/v1/files", timeout=5).json()["items"] == []
