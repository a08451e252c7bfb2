"""Metrics, request ids, JSON logs, the CLI round trip, graceful shutdown."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mediasvc.observability import JsonFormatter, request_id_var
from tests.conftest import RunningServer, leftovers, truncate
from tests.helpers import samples

MiB = 1024 * 1024


async def test_metrics_move_after_an_upload_and_a_download(client: httpx.AsyncClient) -> None:
    before = samples((await client.get("/metrics")).text)
    body = os.urandom(300_000)
    uid = (await client.post("/api/v1/files/stream", content=body)).json()["uid"]
    assert (await client.get(f"/api/v1/files/{uid}")).content == body
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = samples(response.text)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("mediasvc_bytes_received_total") == len(body)
    assert delta("mediasvc_bytes_sent_total") == len(body)
    assert delta("mediasvc_uploads_total", status="201") == 1
    assert delta("mediasvc_downloads_total", status="200") == 1
    assert delta("mediasvc_upload_duration_seconds_count", status="201") == 1
    assert after[("mediasvc_uploads_in_flight", ())] == 0
    assert after[("mediasvc_local_disk_bytes", (("kind", "total"),))] > 0
    assert ("mediasvc_push_queue_depth", ()) in after
    assert ("mediasvc_push_failed_files", ()) in after


async def test_every_response_carries_a_request_id(client: httpx.AsyncClient) -> None:
    first = await client.get("/healthz")
    second = await client.get("/api/v1/files/not-a-uid")
    assert len(first.headers["x-request-id"]) == 32
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert second.status_code == 404 and "x-request-id" in second.headers
    echoed = await client.get("/healthz", headers={"X-Request-ID": "trace-abc.123"})
    assert echoed.headers["x-request-id"] == "trace-abc.123"
    hostile = await client.get("/healthz", headers={"X-Request-ID": "a b\tc" + "x" * 100})
    assert hostile.headers["x-request-id"] != "a b\tc" + "x" * 100


def test_json_log_lines_carry_the_request_id() -> None:
    record = logging.makeLogRecord(
        {"name": "mediasvc.access", "levelname": "INFO", "msg": "GET %s", "args": ("/x",)}
    )
    record.status = 200
    token = request_id_var.set("req-1")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["message"] == "GET /x"
    assert line["request_id"] == "req-1"
    assert line["status"] == 200
    assert line["level"] == "info" and line["ts"].endswith("Z")


@pytest.fixture
def pg_server(start_server: Callable[..., RunningServer], pg_url: str) -> RunningServer:
    import asyncio

    asyncio.run(truncate(pg_url))
    return start_server({"MEDIASVC_DATABASE_URL": pg_url})


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mediasvc", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.e2e
def test_cli_upload_then_resumed_download(pg_server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "clip.bin"
    data = os.urandom(5 * MiB + 17)
    source.write_bytes(data)
    out = cli("upload", str(source), "--url", pg_server.base_url, "--max-downloads", "5").stdout
    uid = out.split("uid:", 1)[1].split()[0]
    assert hashlib.sha256(data).hexdigest() in out and "verified" in out

    metrics_url = f"{pg_server.base_url}/metrics"
    sent_before = samples(httpx.get(metrics_url).text)[("mediasvc_bytes_sent_total", ())]
    partial = tmp_path / "back.bin"
    partial.write_bytes(data[: 2 * MiB])  # a download cut short
    cli("download", uid, "-o", str(partial), "--url", pg_server.base_url)
    assert partial.read_bytes() == data
    sent = samples(httpx.get(metrics_url).text)[("mediasvc_bytes_sent_total", ())] - sent_before
    assert sent == len(data) - 2 * MiB, "the resumed download fetched only the missing bytes"

    named = tmp_path / "named"
    named.mkdir()
    subprocess.run(
        [sys.executable, "-m", "mediasvc", "download", uid, "--url", pg_server.base_url],
        cwd=named,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (named / "clip.bin").read_bytes() == data


@pytest.mark.e2e
def test_cli_reports_a_refused_upload(pg_server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(b"x")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mediasvc",
            "upload",
            str(source),
            "--url",
            pg_server.base_url,
            "--max-downloads",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The upload goes by tus: a bad Upload-Metadata value is refused at creation with a 400.
    assert result.returncode != 0 and "400" in result.stderr, result.stderr
    assert "max_downloads" in result.stderr


@pytest.mark.e2e
def test_sigterm_lets_an_in_flight_upload_finish(pg_server: RunningServer, tmp_path: Path) -> None:
    release = threading.Event()
    chunks = [os.urandom(256 * 1024) for _ in range(8)]
    result: dict[str, httpx.Response] = {}

    def body() -> Iterator[bytes]:
        yield from chunks[:4]
        assert release.wait(30)
        yield from chunks[4:]

    def send() -> None:
        result["response"] = httpx.put(
            f"{pg_server.base_url}/api/v1/files/stream/slow.bin",
            content=body(),
            headers={"Content-Length": str(sum(map(len, chunks)))},
            timeout=60,
        )

    thread = threading.Thread(target=send)
    thread.start()
    deadline = time.monotonic() + 30
    while (
        samples(httpx.get(f"{pg_server.base_url}/metrics").text).get(
            ("mediasvc_uploads_in_flight", ()), 0
        )
        < 1
    ):
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.02)
    os.kill(pg_server.pid, signal.SIGTERM)
    release.set()
    thread.join(60)
    response = result["response"]
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
    # uvicorn re-raises the signal once its graceful shutdown is done: killed by SIGTERM, late.
    assert pg_server.process.wait(30) in (0, -signal.SIGTERM)
    uid = response.json()["uid"]
    assert (pg_server.media_root / uid[:2] / uid).stat().st_size == sum(map(len, chunks))
    assert [p for p in leftovers(pg_server.media_root) if p.suffix == ".part"] == []
