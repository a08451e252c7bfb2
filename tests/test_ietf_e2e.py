"""The IETF resumable upload draft end to end: a real `mediasvc serve` (uvicorn, our protocol),
our own HTTP/1.1 client (h11, mediasvc/ietf_client.py, which sees the 104), curl, and two API
nodes sharing PostgreSQL. What a cut does, that a resumed upload is the file that went in
(openssl's sha256), and that a request reaching the wrong node is served by the right one."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from mediasvc import ietf_client
from mediasvc.ietf_client import Reply
from mediasvc.resumable import node_signature
from mediasvc.storage.local import VOLUME_ID_FILE
from tests.conftest import free_port, stop_process
from tests.helpers import curl, poll_until, random_bytes
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
UPLOADS = "/api/v1/uploads"
START_WITHIN_S = 90  # a loaded machine takes its time to start a server
INTERNAL_SECRET = "test-internal-secret-0123456789abcdef"  # the nodes' shared HMAC key
FINE = {
    "MEDIASVC_IO_CHUNK_SIZE_BYTES": str(64 * 1024),
    "MEDIASVC_UPLOAD_CHECKPOINT_EVERY_BYTES": str(256 * 1024),
    "MEDIASVC_UPLOAD_LEASE_CHECK_S": "0.2",
}


def openssl_sha256(path: Path) -> str:
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-r", str(path)], check=True, capture_output=True
    )
    return out.stdout.split()[0].decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pieces(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def cut_after(data: bytes, n_bytes: int) -> Iterator[bytes]:
    yield from pieces(data[:n_bytes])
    raise ConnectionResetError("cut on purpose")


def head(url: str, version: int = ietf_client.INTEROP_VERSION) -> Reply:
    reply = ietf_client.request("HEAD", url, {"Upload-Draft-Interop-Version": str(version)})
    assert reply.status == 204, reply
    return reply


def append(
    url: str, at: int, data: bytes, *, complete: bool, version: int = ietf_client.INTEROP_VERSION
) -> Reply:
    return ietf_client.request(
        "PATCH",
        url,
        {
            "Upload-Offset": str(at),
            "Upload-Complete": "?1" if complete else "?0",
            "Content-Type": "application/partial-upload",
            "Content-Length": str(len(data)),
        },
        pieces(data),
        version=version,
    )


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, bytes]:
    data = random_bytes(6 * MiB, seed=151)
    path = tmp_path / "clip.bin"
    path.write_bytes(data)
    return path, data


# --- servers ---------------------------------------------------------------------------------


class Node:
    """`mediasvc serve` on a port of its own and a media root of its own."""

    def __init__(self, name: str, tmp_path: Path, pg_url: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.media_root = tmp_path / name
        self.log = tmp_path / f"{name}.log"
        self.env = {
            **os.environ,
            **FINE,
            "MEDIASVC_DATABASE_URL": pg_url,
            "MEDIASVC_MEDIA_ROOT": str(self.media_root),
            "MEDIASVC_CLOUD_ROOT": str(tmp_path / "bucket"),
            "MEDIASVC_INTERNAL_URL": self.url,
            "MEDIASVC_INTERNAL_SECRET": INTERNAL_SECRET,
            "MEDIASVC_UPLOAD_FORWARD_CONNECT_TIMEOUT_S": "1",
            **env,
        }
        self.env.pop("GLIBC_TUNABLES", None)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mediasvc", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_WITHIN_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"node did not start within {START_WITHIN_S} s")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process)


@pytest.fixture
def launch(tmp_path: Path, pg_url: str) -> Iterator[Callable[..., Node]]:
    """Start a node (`mediasvc serve` with MEDIASVC_INTERNAL_URL) on the run's PostgreSQL."""
    started: list[Node] = []

    def start(name: str = "a", **env: str) -> Node:
        node = Node(name, tmp_path, pg_url, env)
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.stop()


# --- our client: the 104, a cut, HEAD, resume -------------------------------------------------


def row_offset(pg_url: str, upload_url: str) -> int:
    async def read() -> int:
        connection = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
        try:
            uid = upload_url.rsplit("/", 1)[1]
            offset = await connection.fetchval('SELECT "offset" FROM uploads WHERE uid = $1', uid)
            return int(offset)
        finally:
            await connection.close()

    return asyncio.run(read())


@pytest.mark.parametrize("version", [8, 9])
def test_creation_cut_after_the_104_is_resumed(
    launch: Callable[..., Node], source: tuple[Path, bytes], pg_url: str, version: int
) -> None:
    server = launch()
    path, data = source
    interim: list[tuple[int, dict[str, str]]] = []
    with pytest.raises(OSError):
        ietf_client.request(
            "POST",
            f"{server.url}{UPLOADS}",
            {
                "Upload-Complete": "?1",
                "Content-Length": str(len(data)),
                "Want-Repr-Digest": "sha-256=10",
            },
            cut_after(data, 2 * MiB + 12345),
            on_interim=lambda status, headers: interim.append((status, headers)),
            version=version,
        )
    # The 104 came before the body was sent: the upload's URL, its limits, our version.
    assert len(interim) == 1
    status, fields = interim[0]
    assert status == 104
    assert fields["upload-draft-interop-version"] == str(version)
    assert "max-age=" in fields["upload-limit"]
    url = fields["location"]
    assert url.startswith(f"{server.url}{UPLOADS}/")
    # The server keeps what arrived before the cut (its row says so once it saw the cut; a HEAD
    # sooner would end the request there, as the draft recommends, with what it had read).
    poll_until(lambda: row_offset(pg_url, url) > 0, "the cut request's bytes in the row")
    # HEAD: what reached the disk, never more than was sent; the length told by Content-Length.
    reply = head(url, version)
    offset = int(reply.headers["upload-offset"])
    assert 0 < offset <= 2 * MiB + 12345
    assert reply.headers["upload-complete"] == "?0"
    assert reply.headers["upload-length"] == str(len(data))
    # A wrong offset: 409, the expected one in the problem.
    conflict = append(url, offset + 1, data[offset + 1 :], complete=True, version=version)
    assert conflict.status == 409
    assert conflict.headers["upload-complete"] == "?0"
    assert b'"expected-offset":%d' % offset in conflict.body
    # Resume with a Content-Digest of the request's own bytes.
    rest = data[offset:]
    digest = b64(hashlib.sha256(rest).digest())
    done = ietf_client.request(
        "PATCH",
        url,
        {
            "Upload-Offset": str(offset),
            "Upload-Complete": "?1",
            "Content-Type": "application/partial-upload",
            "Content-Length": str(len(rest)),
            "Content-Digest": f"sha-256=:{digest}:",
        },
        pieces(rest),
        version=version,
    )
    assert done.status == 201, done.body
    assert done.headers["upload-complete"] == "?1"
    whole = hashlib.sha256(data).digest()
    assert done.headers["repr-digest"] == f"sha-256=:{b64(whole)}:"
    uid = url.rsplit("/", 1)[1]
    got = httpx.get(f"{server.url}/api/v1/files/{uid}", timeout=30)
    assert got.content == data
    assert hashlib.sha256(got.content).hexdigest() == openssl_sha256(path)


def test_the_client_resumes_by_itself(
    launch: Callable[..., Node], source: tuple[Path, bytes]
) -> None:
    server = launch()
    path, _ = source
    result = ietf_client.upload(path, url=server.url, stop_after=3 * MiB)
    assert result.interim_seen == 1 and result.resumes == 1
    assert result.file["sha256"] == openssl_sha256(path)
    # The command line on the same client.
    out = subprocess.run(
        [sys.executable, "-m", "mediasvc", "upload", "--protocol", "ietf", "--url", server.url,
         str(path)],
        capture_output=True, timeout=120, check=True,
    ).stdout.decode()  # fmt: skip
    assert f"sha256:       {openssl_sha256(path)} (verified)" in out
    assert "resumed:      0 time(s)" in out
    assert "interop:      9" in out
    # Told interop 8 (a server that does not know 9 yet).
    out = subprocess.run(
        [sys.executable, "-m", "mediasvc", "upload", "--protocol", "ietf", "--interop-version",
         "8", "--url", server.url, str(path)],
        capture_output=True, timeout=120, check=True,
    ).stdout.decode()  # fmt: skip
    assert f"sha256:       {openssl_sha256(path)} (verified)" in out
    assert "interop:      8" in out


def test_limits_cancellation_and_interop_6(
    launch: Callable[..., Node], source: tuple[Path, bytes]
) -> None:
    server = launch(MEDIASVC_MAX_UPLOAD_SIZE_BYTES=str(8 * MiB))
    _, data = source
    options = ietf_client.request("OPTIONS", f"{server.url}{UPLOADS}", {})
    assert options.headers["upload-limit"] == f"max-size={8 * MiB}, max-age=86400"
    # Interop 6 names itself in its 104 and speaks -05's limit key.
    interim: list[tuple[int, dict[str, str]]] = []
    created = ietf_client.request(
        "POST",
        f"{server.url}{UPLOADS}",
        {"Upload-Draft-Interop-Version": "6", "Upload-Complete": "?0", "Content-Length": "1000"},
        pieces(data[:1000]),
        on_interim=lambda status, headers: interim.append((status, headers)),
    )
    assert created.status == 201
    assert interim[0][1]["upload-draft-interop-version"] == "6"
    assert "expires=" in interim[0][1]["upload-limit"]
    url = created.headers["location"]
    assert head(url, 6).headers["upload-offset"] == "1000"
    gone = ietf_client.request("DELETE", url, {"Upload-Draft-Interop-Version": "6"})
    assert gone.status == 204
    assert ietf_client.request("HEAD", url, {}).status == 404
    # Over the size limit: 413 with the limit, before a byte of the body is taken.
    big = ietf_client.request(
        "POST",
        f"{server.url}{UPLOADS}",
        {"Upload-Complete": "?1", "Upload-Length": str(9 * MiB), "Content-Length": str(9 * MiB)},
    )
    assert big.status == 413
    assert f"max-size={8 * MiB}" in big.headers["upload-limit"]


def test_no_104_for_a_version_we_do_not_speak(
    launch: Callable[..., Node], source: tuple[Path, bytes]
) -> None:
    server = launch()
    _, data = source
    for version in ("10", "5", None):
        interim: list[tuple[int, dict[str, str]]] = []
        fields = {"Upload-Complete": "?1", "Content-Length": str(len(data))}
        if version is not None:
            fields["Upload-Draft-Interop-Version"] = version
        exchange = ietf_client.Exchange(server.url, 30)
        exchange.on_interim = lambda status, headers, seen=interim: seen.append((status, headers))
        try:
            exchange.send_head("POST", "/api/v1/files/stream/plain.bin", fields)
            exchange.send_body(pieces(data))
            reply = exchange.finish()
        finally:
            exchange.close()
        assert reply.status == 201
        assert "upload-complete" not in reply.headers  # a plain upload, as it was
        assert interim == []


# --- curl: -i shows the 104, a cut resumed by hand ------------------------------------------


def test_curl_shows_the_104_and_a_cut_upload_is_resumed_by_hand(
    launch: Callable[..., Node], source: tuple[Path, bytes], tmp_path: Path, pg_url: str
) -> None:
    server = launch()
    path, data = source
    interop = ("-H", "Upload-Draft-Interop-Version: 8")
    whole = curl(
        "-sS", "-i", "-T", str(path), *interop, "-H", "Upload-Complete: ?1",
        f"{server.url}/api/v1/files/stream/clip.bin",
    )  # fmt: skip
    heads = [line for line in whole.stdout.split(b"\r\n") if line.startswith(b"HTTP/1.1")]
    assert heads[0] == b"HTTP/1.1 104 Upload Resumption Supported"
    assert heads[-1] == b"HTTP/1.1 201 Created"
    interim = whole.stdout.split(b"\r\n\r\n", 1)[0].decode()
    assert f"location: {server.url}{UPLOADS}/" in interim
    # Cut: at 1 MiB/s for 2 s, about 2 of the 6 MiB arrive.
    cut = subprocess.run(
        ["curl", "-sS", "-i", "-T", str(path), *interop, "-H", "Upload-Complete: ?1",
         "--limit-rate", "1M", "--max-time", "2",
         f"{server.url}/api/v1/files/stream/clip.bin"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert cut.returncode == 28  # curl's "operation timed out"
    text = cut.stdout.decode()
    assert "HTTP/1.1 201" not in text
    location = next(
        line.split(": ", 1)[1].strip() for line in text.splitlines() if line.startswith("location:")
    )
    poll_until(lambda: row_offset(pg_url, location) > 0, "the cut request's bytes in the row")
    head_out = curl("-sS", "-I", *interop, location).stdout.decode()
    offset = int(
        next(line for line in head_out.splitlines() if line.startswith("upload-offset:")).split()[1]
    )
    assert 0 < offset < len(data)
    rest = tmp_path / "rest.bin"
    rest.write_bytes(data[offset:])
    done = curl(
        "-sS", "-i", "-X", "PATCH", "--data-binary", f"@{rest}", *interop,
        "-H", "Upload-Complete: ?1", "-H", f"Upload-Offset: {offset}",
        "-H", "Content-Type: application/partial-upload", location,
    )  # fmt: skip
    assert b"HTTP/1.1 201 Created" in done.stdout
    body = done.stdout.split(b"\r\n\r\n")[-1]
    assert f'"sha256":"{openssl_sha256(path)}"'.encode() in body


# --- two nodes sharing PostgreSQL -------------------------------------------------------------


def upload_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.upload"))


def test_any_node_serves_any_upload(
    launch: Callable[..., Node], source: tuple[Path, bytes]
) -> None:
    a, b = launch("a"), launch("b")
    path, data = source
    created = ietf_client.request(
        "POST",
        f"{a.url}{UPLOADS}",
        {"Upload-Complete": "?0", "Upload-Length": str(len(data)), "Content-Length": str(MiB)},
        pieces(data[:MiB]),
    )
    assert created.status == 201
    on_b = created.headers["location"].replace(a.url, b.url)
    # PATCH and HEAD on B: forwarded to A, which alone writes.
    assert append(on_b, MiB, data[MiB : 3 * MiB], complete=False).status == 204
    assert head(on_b).headers["upload-offset"] == str(3 * MiB)
    assert len(upload_files(a.media_root)) == 1
    assert upload_files(b.media_root) == []
    # A killed: B says 503 with Retry-After, never an offset.
    a.kill()
    down = ietf_client.request("HEAD", on_b, {"Upload-Draft-Interop-Version": "8"})
    assert down.status == 503
    assert down.headers["retry-after"] == "5"
    assert "upload-offset" not in down.headers
    refused = append(on_b, 3 * MiB, data[3 * MiB :], complete=True)
    assert refused.status == 503
    # A back: the upload resumes through B and is finished there.
    a.start()
    offset = int(head(on_b).headers["upload-offset"])
    assert offset == 3 * MiB
    done = append(on_b, offset, data[offset:], complete=True)
    assert done.status == 201, done.body
    assert b'"sha256":"%s"' % openssl_sha256(path).encode() in done.body
    uid = on_b.rsplit("/", 1)[1]
    got = httpx.get(f"{a.url}/api/v1/files/{uid}", timeout=30)
    assert got.content == data
    assert upload_files(a.media_root) == [] and upload_files(b.media_root) == []
    assert not any(p.is_file() for p in b.media_root.rglob("*") if p.name != VOLUME_ID_FILE)


def create_on(node: Node, **headers: str) -> str:
    created = ietf_client.request(
        "POST", f"{node.url}{UPLOADS}", {"Upload-Complete": "?0", **headers}
    )
    assert created.status == 201, created
    return created.headers["location"]


def test_a_forged_forwarding_is_refused(launch: Callable[..., Node]) -> None:
    """What marks a forwarded request is signed with the nodes' secret: a client (through any
    proxy) that sends it without a valid signature is refused, on the owner and elsewhere; the
    same fields signed with the secret are believed."""
    a, b = launch("a"), launch("b")
    url = create_on(a)
    path = url.removeprefix(a.url)
    forged = {
        "Upload-Draft-Interop-Version": "9",
        "X-Mediasvc-Forwarded-By": b.url,
        "X-Mediasvc-Forwarded-For": "203.0.113.7",
    }
    now = time.time()
    wrong_key = dict(
        node_signature.sign(
            b"not-the-nodes-secret-0123456789abcdef",
            method="HEAD", target=path, by=b.url, to=a.url, client="203.0.113.7", now=now,
        )
    )  # fmt: skip
    stale = dict(
        node_signature.sign(
            INTERNAL_SECRET.encode(),
            method="HEAD", target=path, by=b.url, to=a.url, client="203.0.113.7",
            now=now - 3600,
        )
    )  # fmt: skip
    # Malformed fields (headers come as latin-1): 403 as well, never a 500.
    at, signature = node_signature.FORWARDED_AT.encode(), node_signature.SIGNATURE.encode()
    stale_bytes = {name.encode(): value.encode() for name, value in stale.items()}
    malformed = [
        {**stale_bytes, at: value}
        for value in (b"\xb2", b"", b"-5", b"9" * 300)  # "\xb2" is "²": isdigit() but not int
    ] + [{**stale_bytes, signature: value} for value in (b"\xe9" * 64, b"\xe9", b"")]
    forged_bytes = {name.encode(): value.encode() for name, value in forged.items()}
    for node in (a, b):
        for headers in (forged, {**forged, **wrong_key}, {**forged, **stale}):
            refused = httpx.head(f"{node.url}{path}", headers={**forged, **headers}, timeout=30)
            assert refused.status_code == 403, (node.url, headers)
        for fields in malformed:
            headers_bytes = {**forged_bytes, **fields}
            refused = httpx.head(f"{node.url}{path}", headers=headers_bytes, timeout=30)
            assert refused.status_code == 403, (node.url, fields)
        # A body shows the problem (HEAD has none).
        got = httpx.get(f"{node.url}{path}", headers=forged, timeout=30)
        assert got.status_code == 403
        assert got.json()["type"] == "urn:mediasvc:problem:forwarding-refused"
    # Signed with the nodes' secret: the owner serves it as a forwarded request.
    signed = dict(
        node_signature.sign(
            INTERNAL_SECRET.encode(),
            method="HEAD", target=path, by=b.url, to=a.url, client="203.0.113.7",
            now=time.time(),
        )
    )  # fmt: skip
    ok = httpx.head(f"{a.url}{path}", headers={**signed, "Upload-Draft-Interop-Version": "9"})
    assert ok.status_code == 204
    assert ok.headers["upload-offset"] == "0"
    # The same signed request replayed to another node: signed for A only.
    replayed = httpx.head(f"{b.url}{path}", headers={**signed, "Upload-Draft-Interop-Version": "9"})
    assert replayed.status_code == 403


def test_a_forwarded_request_for_another_nodes_upload_is_misdirected(
    launch: Callable[..., Node],
) -> None:
    """A request signed for B about an upload A holds (a node's URL reused, a bug): B neither
    serves it (its writer would end A's PATCH) nor forwards it again (a loop): 421."""
    a, b = launch("a"), launch("b")
    url = create_on(a)
    path = url.removeprefix(a.url)
    for method in ("HEAD", "PATCH", "DELETE"):
        signed = node_signature.sign(
            INTERNAL_SECRET.encode(),
            method=method, target=path, by=a.url, to=b.url, client=None, now=time.time(),
        )  # fmt: skip
        headers = {**dict(signed), "Upload-Draft-Interop-Version": "9"}
        if method == "PATCH":
            headers |= {
                "Upload-Offset": "0",
                "Upload-Complete": "?0",
                "Content-Type": "application/partial-upload",
            }
        got = httpx.request(method, f"{b.url}{path}", headers=headers, content=b"x", timeout=30)
        assert got.status_code == 421, (method, got.text)
        if method != "HEAD":  # which has no body
            assert got.json()["type"] == "urn:mediasvc:problem:misdirected-request"
    # Untouched on its owner.
    assert head(url).headers["upload-offset"] == "0"
    assert len(upload_files(a.media_root)) == 1 and upload_files(b.media_root) == []


def test_a_target_with_escapes_and_a_query_is_forwarded(launch: Callable[..., Node]) -> None:
    """What the forwarding node signs is what the owner verifies, percent-escapes, a query and
    characters httpx escapes itself included."""
    a, b = launch("a"), launch("b")
    url = create_on(a)
    uid = url.rsplit("/", 1)[1]
    escaped = f'{b.url}{UPLOADS}/%{ord(uid[0]):02X}{uid[1:]}?x=1&y=a%20b&z=%zz&q="<>"'
    got = ietf_client.request("HEAD", escaped, {"Upload-Draft-Interop-Version": "9"})
    assert got.status == 204, got
    assert got.headers["upload-offset"] == "0"
    assert upload_files(b.media_root) == []


class SlowPatch:
    """A PATCH from its own address (127.0.0.0/8 is all loopback) whose body is held back."""

    def __init__(self, url: str, source: str, data: bytes, send_first: int) -> None:
        parts = httpx.URL(url)
        assert parts.port is not None
        self.sock = socket.create_connection((parts.host, parts.port), source_address=(source, 0))
        head = (
            f"PATCH {parts.raw_path.decode()} HTTP/1.1\r\nHost: {parts.netloc.decode()}\r\n"
            "Upload-Draft-Interop-Version: 9\r\nUpload-Offset: 0\r\nUpload-Complete: ?0\r\n"
            f"Content-Type: application/partial-upload\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + data[:send_first])
        self.rest = data[send_first:]

    def finish(self) -> bytes:
        self.sock.sendall(self.rest)
        self.sock.settimeout(60)
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = self.sock.recv(65536)
            assert piece, answer
            answer += piece
        self.sock.close()
        return answer.split(b"\r\n", 1)[0]


def patch_from(source: str, url: str, data: bytes) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=60) as client:
        return client.patch(
            url,
            content=data,
            headers={
                "Upload-Draft-Interop-Version": "9",
                "Upload-Offset": "0",
                "Upload-Complete": "?0",
                "Content-Type": "application/partial-upload",
            },
        )


def test_the_owner_counts_the_real_client_of_a_forwarded_request(
    launch: Callable[..., Node], pg_url: str
) -> None:
    """One upload under way per client address: a client whose upload goes through B to the
    owner A is that client on A, not B (before, every forwarded upload counted as B's)."""
    cap = {"MEDIASVC_MAX_UPLOADS_PER_CLIENT": "1", "MEDIASVC_UPLOAD_CHECKPOINT_EVERY_BYTES": "4096"}
    a, b = launch("a", **cap), launch("b", **cap)
    first, second = create_on(a), create_on(a)
    data = random_bytes(256 * 1024, seed=4)
    # Client 127.0.0.2's upload through B, held open on A (its first bytes checkpointed there).
    held = SlowPatch(first.replace(a.url, b.url), "127.0.0.2", data, send_first=64 * 1024)
    poll_until(lambda: row_offset(pg_url, first) > 0, "the held upload's first bytes on A")
    # The same client straight to A: its one upload is under way (through B): 429.
    direct = patch_from("127.0.0.2", second, data)
    assert direct.status_code == 429, direct.text
    assert direct.json()["type"] == "urn:mediasvc:problem:too-many-uploads-from-client"
    # Another client through B: its own count, not B's: accepted.
    other = patch_from("127.0.0.3", second.replace(a.url, b.url), data)
    assert other.status_code == 204, other.text
    assert held.finish() == b"HTTP/1.1 204 No Content"
    assert head(first).headers["upload-offset"] == str(len(data))


# --- tus-js-client in its IETF modes, through a proxy that cuts -------------------------------

NODE_DIR = Path(__file__).parent / "tus-node"


@pytest.mark.parametrize("protocol", ["ietf-draft-05"])
def test_tus_js_client_ietf_mode_resumes_through_a_cut(
    launch: Callable[..., Node], source: tuple[Path, bytes], protocol: str
) -> None:
    if not (NODE_DIR / "node_modules" / "tus-js-client").is_dir():
        pytest.fail("tus-js-client is not installed: run make test (npm ci in tests/tus-node)")
    server = launch()
    path, data = source
    chunk = 2 * MiB
    proxy = TcpProxy(server.port).start()
    proxy.cut_at = 3 * MiB
    try:
        args = {
            "endpoint": f"{proxy.url}{UPLOADS}",
            "path": str(path),
            "protocol": protocol,
            "chunkSize": chunk,
        }
        out = subprocess.run(
            ["node", "ietf-upload.mjs", json.dumps(args)],
            cwd=NODE_DIR,
            capture_output=True,
            timeout=120,
            check=True,
        )
    finally:
        proxy.close()
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert result["ok"], (result, out.stderr.decode())
    assert proxy.cuts == 1 and result["retries"] >= 1
    # Resumed, not started over: what crossed the proxy is the file and at most one chunk more
    # (the chunk the cut broke), plus the requests' heads.
    assert proxy.sent < len(data) + chunk + 64 * 1024
    uid = result["url"].rsplit("/", 1)[1]
    assert result["contentLocation"] == f"/api/v1/files/{uid}"
    got = httpx.get(f"{server.url}/api/v1/files/{uid}", timeout=30)
    assert hashlib.sha256(got.content).hexdigest() == openssl_sha256(path)
