"""Import from a URL: byte-identical through the ingest engine, a cut transfer resumed with
Range (or failed cleanly without it), and the address guard refusing every way to reach an
address it must not, before any connection.

No packet may leave 127.0.0.0/8 here, even if the guard were broken: the imports' resolver is
replaced by one that knows only the test names below (never the system's DNS), and their network
backend by one that fails the test instead of connecting anywhere outside loopback. A listening
socket on 127.0.0.1 stands for every refused target and must see no connection. The allowed
source listens on 127.0.0.2 (loopback too), the only network the tests' settings allow.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from mediasvc.auth import ApiKey
from mediasvc.config import Settings
from mediasvc.ids import hash_token
from mediasvc.imports import job
from tests.conftest import leftovers
from tests.helpers import POLL_TIMEOUT_S, assert_problem, bearer, client_for, random_bytes

SOURCE_HOST = "127.0.0.2"
ALLOWED = [ipaddress.ip_network(f"{SOURCE_HOST}/32")]
BODY = random_bytes(3 * 1024 * 1024 + 17, seed=17)
SHA256 = hashlib.sha256(BODY).hexdigest()
NAMES = {"source.test": [SOURCE_HOST], "loopback.test": ["127.0.0.1"]}


class Source:
    """A file server on 127.0.0.2: ``cut_first`` GETs of the whole file stop half-way (the
    connection closed mid-body); ``ranges`` says whether it serves Range (and says so)."""

    def __init__(self, *, ranges: bool = True, cut_first: int = 0) -> None:
        self.ranges = ranges
        self.cut_first = cut_first
        self.requests: list[dict[str, str]] = []
        self.redirects: dict[str, str] = {}  # path → Location
        self._server = ThreadingHTTPServer((SOURCE_HOST, 0), self._handler())
        self._server.daemon_threads = True

    def url(self, path: str = "/media/clip.bin", host: str = SOURCE_HOST) -> str:
        return f"http://{host}:{self._server.server_address[1]}{path}"

    def __enter__(self) -> Source:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        source = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                source.requests.append({k.lower(): v for k, v in self.headers.items()})
                if self.path in source.redirects:
                    self.send_response(302)
                    self.send_header("Location", source.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                wanted = self.headers.get("Range")
                if wanted and source.ranges:
                    start = int(wanted.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
                    self._body(BODY[start:], cut=False)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                cut = source.cut_first > 0
                source.cut_first -= 1
                self._body(BODY, cut=cut)

            def _body(self, data: bytes, *, cut: bool) -> None:
                if source.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{SHA256[:16]}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if cut:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class Connects:
    """What the imports tried to connect to; anything outside loopback fails the test at once,
    before a socket is made."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def backend(self) -> type[httpcore.AsyncNetworkBackend]:
        connects = self

        class LoopbackOnly(httpcore.AnyIOBackend):
            async def connect_tcp(
                self, host: str, port: int, *args: Any, **kwargs: Any
            ) -> httpcore.AsyncNetworkStream:
                connects.seen.append((host, port))
                if not ipaddress.ip_address(host.strip("[]")).is_loopback:
                    pytest.fail(f"an import tried to connect to {host}:{port}")
                return await super().connect_tcp(host, port, *args, **kwargs)

        return LoopbackOnly


async def names_only(host: str, port: int) -> list[str]:
    """The imports' resolver in these tests: the names above, nothing from the system's DNS."""
    if host in NAMES:
        return NAMES[host]
    raise OSError(f"{host} is not a test name")


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Connects:
    seen = Connects()
    monkeypatch.setattr(job, "resolver", names_only)
    monkeypatch.setattr(job, "network_backend", seen.backend())
    return seen


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket listening on 127.0.0.1 where every refused URL points: it must accept nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def assert_never_connected(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        sock.accept()


@pytest.fixture
async def importer(
    make_settings: Callable[..., Settings], connects: Connects
) -> AsyncIterator[httpx.AsyncClient]:
    from tests.conftest import truncate

    settings = make_settings(import_allowed_networks=ALLOWED)
    await truncate(settings.database_url)
    async with client_for(settings) as http:
        yield http


async def finished(
    http: httpx.AsyncClient, uid: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        state: dict[str, Any] = (await http.get(f"/api/v1/imports/{uid}", headers=headers)).json()
        if state["status"] != "importing":
            return state
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.05)


async def start(http: httpx.AsyncClient, url: str, **options: Any) -> dict[str, Any]:
    response = await http.post("/api/v1/files/import", json={"url": url, **options})
    assert response.status_code == 202, response.text
    started: dict[str, Any] = response.json()
    assert started["status"] == "importing"
    assert response.headers["location"] == f"/api/v1/imports/{started['uid']}"
    return started


async def assert_imported(http: httpx.AsyncClient, uid: str) -> dict[str, Any]:
    state = await finished(http, uid)
    assert state["status"] == "done", state
    download = await http.get(f"/api/v1/files/{uid}")
    assert download.status_code == 200
    assert download.content == BODY
    meta: dict[str, Any] = (await http.get(f"/api/v1/files/{uid}/metadata")).json()
    assert meta["sha256"] == SHA256
    return meta


async def test_import_is_byte_identical_with_its_options(
    importer: httpx.AsyncClient, connects: Connects
) -> None:
    with Source() as source:
        started = await start(
            importer,
            source.url(host="source.test"),  # resolved by the test resolver to 127.0.0.2
            expected_sha256=SHA256,
            max_downloads=3,
            metadata={"job": 7},
        )
        meta = await assert_imported(importer, started["uid"])
    assert meta["original_name"] == "clip.bin"  # the URL's last segment
    assert meta["max_downloads"] == 3
    assert meta["metadata"] == {"job": 7}
    # Connected to the address the guard checked, never to the name.
    assert {host for host, _ in connects.seen} == {SOURCE_HOST}
    assert source.requests[0]["host"] == f"source.test:{source.url().split(':')[2].split('/')[0]}"
    # The delete token given at 202 deletes the file.
    deleted = await importer.delete(
        f"/api/v1/files/{started['uid']}", headers={"X-Delete-Token": started["delete_token"]}
    )
    assert deleted.status_code == 204


async def test_a_cut_transfer_resumes_with_range(importer: httpx.AsyncClient) -> None:
    with Source(cut_first=2) as source:
        started = await start(importer, source.url(), filename="named.bin")
        meta = await assert_imported(importer, started["uid"])
    assert meta["original_name"] == "named.bin"
    ranges = [r.get("range") for r in source.requests]
    assert ranges[0] is None
    assert ranges[1] == f"bytes={len(BODY) // 2}-"  # resumed where the cut left off
    assert all(r.get("if-range") == f'"{SHA256[:16]}"' for r in source.requests[1:])
    assert len(source.requests) == 2  # the 206 of the resume is not cut


async def test_a_cut_without_range_fails_and_leaves_nothing(
    importer: httpx.AsyncClient, settings: Settings
) -> None:
    with Source(ranges=False, cut_first=1) as source:
        started = await start(importer, source.url())
        state = await finished(importer, started["uid"])
    assert state["status"] == "failed"
    assert "does not support Range" in state["error"]
    assert (await importer.get(f"/api/v1/files/{started['uid']}")).status_code == 404
    assert leftovers(Path(settings.media_root)) == []


async def test_a_wrong_sha256_fails_and_leaves_nothing(
    importer: httpx.AsyncClient, settings: Settings
) -> None:
    with Source() as source:
        started = await start(importer, source.url(), expected_sha256="0" * 64)
        state = await finished(importer, started["uid"])
    assert state["status"] == "failed"
    assert "SHA-256" in state["error"]
    assert leftovers(Path(settings.media_root)) == []


def refused_urls(port: int) -> Iterable[str]:
    return (
        f"http://127.0.0.1:{port}/x",
        f"http://[::1]:{port}/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x",
        f"http://[::ffff:127.0.0.1]:{port}/x",
        f"http://loopback.test:{port}/x",  # a name that resolves to loopback
        "http://unknown.test/x",  # does not resolve (the test resolver knows no such name)
        "file:///etc/passwd",
        f"gopher://127.0.0.1:{port}/x",
        f"ftp://{SOURCE_HOST}/x",
        f"http://user:pass@{SOURCE_HOST}/x",
    )


async def test_the_guard_refuses_every_forbidden_target_without_connecting(
    importer: httpx.AsyncClient, connects: Connects, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    for url in refused_urls(port):
        response = await importer.post("/api/v1/files/import", json={"url": url})
        problem = assert_problem(response, 422)
        assert problem["type"].endswith("import-refused"), (url, problem)
    assert connects.seen == []
    assert_never_connected(listener)


async def test_a_redirect_to_loopback_is_refused_without_connecting(
    importer: httpx.AsyncClient, connects: Connects, listener: socket.socket, settings: Settings
) -> None:
    port = listener.getsockname()[1]
    with Source() as source:
        source.redirects["/go"] = f"http://127.0.0.1:{port}/x"
        source.redirects["/ok"] = "/media/clip.bin"  # a redirect the guard admits
        refused = await start(importer, source.url("/go"))
        state = await finished(importer, refused["uid"])
        followed = await start(importer, source.url("/ok"))
        await assert_imported(importer, followed["uid"])
    assert state["status"] == "failed"
    assert "127.0.0.1" in state["error"]
    assert {host for host, _ in connects.seen} == {SOURCE_HOST}
    assert_never_connected(listener)


async def test_import_request_validation(importer: httpx.AsyncClient) -> None:
    bad: list[dict[str, Any]] = [
        {},
        {"url": "http://source.test/x", "expected_sha256": "zz"},
        {"url": "http://source.test/x", "metadata": [1]},
        {"url": "http://source.test/x", "metadata": json.loads('{"a":{"b":{"c":{"d":{}}}}}')},
        {"url": "http://source.test/x", "max_downloads": 0},
        {"url": "http://source.test/x", "filename": "a\u202eb"},
    ]
    for body in bad:
        assert_problem(await importer.post("/api/v1/files/import", json=body), 422)
    assert (await importer.get("/api/v1/imports/aaaaaaaaaaaaaaaaaaaaaaaaaa")).status_code == 404


async def test_a_source_larger_than_the_limit_fails_before_its_body(
    make_settings: Callable[..., Settings], connects: Connects
) -> None:
    settings = make_settings(import_allowed_networks=ALLOWED, max_upload_size_bytes=1024 * 1024)
    with Source() as source:
        async with client_for(settings) as http:
            started = await start(http, source.url())
            state = await finished(http, started["uid"])
    assert state["status"] == "failed"
    assert "at most 1048576 bytes" in state["error"]
    assert leftovers(Path(settings.media_root)) == []


async def test_with_keys_an_import_is_seen_by_its_key_only(
    make_settings: Callable[..., Settings], connects: Connects
) -> None:
    keys = [
        ApiKey(name="alice", sha256=hash_token("alice-key")),
        ApiKey(name="bob", sha256=hash_token("bob-key")),
    ]
    settings = make_settings(import_allowed_networks=ALLOWED, api_keys=keys)
    with Source() as source:
        async with client_for(settings) as http:
            body = {"url": source.url()}
            assert_problem(await http.post("/api/v1/files/import", json=body), 401)
            response = await http.post(
                "/api/v1/files/import", json=body, headers=bearer("alice-key")
            )
            assert response.status_code == 202
            state = f"/api/v1/imports/{response.json()['uid']}"
            assert_problem(await http.get(state, headers=bearer("bob-key")), 403)
            assert (await http.get(state, headers=bearer("alice-key"))).status_code == 200
            await finished(http, response.json()["uid"], headers=bearer("alice-key"))
