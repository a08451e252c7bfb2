"""The nginx edge of deploy/nginx, run by Debian's nginx on loopback.

What the edge itself does: it streams request bodies to the API as they arrive and caps none,
passes the client's address, scheme and host, and lets no client claim the API's fallback
header (against a tiny ASGI app that reports what it got); and with a real `mediasvc serve`
behind it: offloaded downloads are sent by nginx (the API's byte counter does not move), the
rest by the API, and a file nginx cannot find is served by the API after all. The Range and
conditional cases run both ways in test_delivery_ranges.py and test_delivery_conditional.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.conftest import free_port
from tests.edge import EdgeStack, offloading_edge, start_edge
from tests.helpers import parse_byteranges, random_bytes, samples

pytestmark = pytest.mark.e2e

BOUND_S = 30.0
MiB = 1024 * 1024


class Recorder:
    """An ASGI app that answers with what it saw: some headers, the body's size; and tells the
    test when the first MiB of a body has arrived."""

    def __init__(self) -> None:
        self.first_mib = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if size >= MiB:
                self.first_mib.set()
            if not message.get("more_body"):
                break
        seen = {k.decode(): v.decode() for k, v in scope["headers"]}
        names = ("host", "x-forwarded-for", "x-forwarded-proto", "x-mediasvc-direct")
        payload = json.dumps([size, *(seen.get(name) for name in names)]).encode()
        headers = [(b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@contextlib.contextmanager
def edge_before_recorder(tmp_path: Path) -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(recorder, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        edge = start_edge(tmp_path / "nginx", upstream=f"127.0.0.1:{port}", media_root=tmp_path)
        try:
            yield edge.base_url, recorder
        finally:
            edge.stop()
    finally:
        server.should_exit = True
        thread.join(BOUND_S)


def test_the_edge_passes_address_scheme_and_host_and_no_forged_fallback(tmp_path: Path) -> None:
    with edge_before_recorder(tmp_path) as (url, _):
        # From another loopback address than nginx's own, so the forwarded one is telling.
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport, timeout=BOUND_S) as http:
            response = http.get(f"{url}/x", headers={"X-Mediasvc-Direct": "1"})
    assert response.status_code == 200
    host = url.removeprefix("http://")
    assert response.json() == [0, host, "127.0.0.2", "http", None]


def test_the_edge_streams_a_body_as_it_arrives_and_caps_no_size(tmp_path: Path) -> None:
    body_left = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"x" * MiB
        # The app must have the first MiB while the rest is not even sent: no buffering.
        body_left.set()
        assert recorder.first_mib.wait(BOUND_S), "the edge held the body back"
        for _ in range(8):  # 9 MiB in all: past nginx's default 1 MiB cap
            yield b"y" * MiB

    with edge_before_recorder(tmp_path) as (url, recorder):
        response = httpx.post(f"{url}/upload", content=body(), timeout=BOUND_S)
    assert body_left.is_set()
    assert response.status_code == 200
    assert response.json()[0] == 9 * MiB


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStack]:
    with offloading_edge(tmp_path_factory.mktemp("edge-stack")) as running:
        yield running


def api_bytes_sent(stack: EdgeStack) -> float:
    metrics = httpx.get(f"{stack.api_url}/metrics", timeout=BOUND_S).text
    return samples(metrics)[("mediasvc_bytes_sent_total", ())]


def upload(base_url: str, data: bytes, **params: int) -> dict[str, Any]:
    response = httpx.post(
        f"{base_url}/api/v1/files/stream", content=data, params=params, timeout=BOUND_S
    )
    assert response.status_code == 201, response.text
    meta: dict[str, Any] = response.json()
    return meta


def test_offloaded_downloads_are_sent_by_nginx_and_the_rest_by_the_api(stack: EdgeStack) -> None:
    data = random_bytes(3 * MiB, seed=1801)
    meta = upload(stack.base_url, data)
    assert meta["download_url"].startswith(f"{stack.base_url}/")  # the edge's host, as asked
    url = f"{stack.base_url}/api/v1/files/{meta['uid']}"
    before = api_bytes_sent(stack)
    full = httpx.get(url, timeout=BOUND_S)
    assert full.content == data
    assert "x-accel-redirect" not in full.headers  # nginx keeps it to itself
    assert full.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    ranged = httpx.get(url, headers={"Range": "bytes=1000-1999"}, timeout=BOUND_S)
    assert (ranged.status_code, ranged.content) == (206, data[1000:2000])
    assert api_bytes_sent(stack) == before  # not a byte through the API

    several = httpx.get(url, headers={"Range": "bytes=0-9,100-109"}, timeout=BOUND_S)
    assert [part.payload for part in parse_byteranges(several)] == [data[:10], data[100:110]]
    limited = upload(stack.base_url, data, max_downloads=2)
    got = httpx.get(f"{stack.base_url}/api/v1/files/{limited['uid']}", timeout=BOUND_S)
    assert got.headers["x-remaining-downloads"] == "1"
    assert got.content == data
    assert api_bytes_sent(stack) - before >= 20 + len(data)  # these two went through the API


def test_a_file_nginx_cannot_find_is_sent_by_the_api(stack: EdgeStack, tmp_path: Path) -> None:
    """An edge whose view of the media volume is empty: every offload finds nothing (as when a
    delete or an eviction races a download), and the API is asked again, sending it itself."""
    data = random_bytes(MiB, seed=1802)
    uid = upload(stack.api_url, data)["uid"]
    empty = tmp_path / "empty"
    empty.mkdir()
    blind = start_edge(
        tmp_path / "nginx", upstream=stack.api_url.removeprefix("http://"), media_root=empty
    )
    try:
        url = f"{blind.base_url}/api/v1/files/{uid}"
        assert httpx.get(url, timeout=BOUND_S).content == data
        ranged = httpx.get(url, headers={"Range": "bytes=-100"}, timeout=BOUND_S)
        assert (ranged.status_code, ranged.content) == (206, data[-100:])
        missing = httpx.get(f"{blind.base_url}/api/v1/files/{'a' * 26}", timeout=BOUND_S)
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
    finally:
        blind.stop()
