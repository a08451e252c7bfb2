"""A small client of the IETF resumable upload draft (interop 9, or 8 on request), for
``mediasvc upload --protocol ietf`` and the tests: no Python package speaks interop 8 or newer,
and none shows the 104. What it does is the same in both versions (interop 9 changed what
servers send, not this client's requests: mediasvc/api/ietf.py).

It is HTTP/1.1 on a plain socket through ``h11``, which hands over interim responses: the 104
(Upload Resumption Supported) with the upload's ``Location`` arrives while the body is still
being sent. So the upload is optimistic (the draft's "optimistic upload creation"): one ``POST
/api/v1/uploads`` with ``Upload-Complete: ?1`` and the whole file; if the connection breaks,
``HEAD`` the upload for its offset and ``PATCH`` the rest (``application/partial-upload``), as
often as it takes (up to ``retries`` times without progress). A break before any 104 (a server
that sends none: granian) starts over.

Constant memory: the file is read and sent in ``chunk_bytes`` pieces; the whole file's sha256 is
computed on the way and checked against the server's (``Repr-Digest`` and the JSON's sha256).
"""

from __future__ import annotations

import base64
import hashlib
import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import h11

INTEROP_VERSION = 9  # the newest whose text we read (mediasvc/api/ietf.py)
PARTIAL_UPLOAD = "application/partial-upload"
CHUNK_BYTES = 1024 * 1024
INTERIM_WAIT_S = 1.0  # how long to wait for a 104 before sending the body (the draft allows it)


class IetfUploadError(Exception):
    """The server refused the upload (a 4xx other than a conflict), or it did not make it."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    interim: list[tuple[int, dict[str, str]]] = field(default_factory=list)


def _headers(items: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in items}


class Exchange:
    """One request and its responses (interim ones included) on a connection of its own."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise IetfUploadError(f"{url}: only http:// URLs are spoken here")
        self.host = parts.netloc
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout_s)
        self.conn = h11.Connection(h11.CLIENT)
        self.reply: Reply | None = None
        self._interim: list[tuple[int, dict[str, str]]] = []
        self._body = bytearray()
        self.on_interim: Callable[[int, dict[str, str]], None] | None = None

    def close(self) -> None:
        self.sock.close()

    def send_head(self, method: str, target: str, headers: dict[str, str]) -> None:
        fields = [("Host", self.host), *headers.items()]
        self.sock.sendall(self.conn.send(h11.Request(method=method, target=target, headers=fields)))

    def send_body(self, chunks: Iterator[bytes]) -> None:
        """Send the body; stop early if the final response came (the server refused it and
        reads no more: a blocking send would wait on it, and lose the response to its reset)."""
        for chunk in chunks:
            if not self._send(self.conn.send(h11.Data(data=chunk)) or b""):
                return
        self._send(self.conn.send(h11.EndOfMessage()) or b"")

    def _send(self, data: bytes) -> bool:
        """Send ``data`` while taking what the server says; False once its response came."""
        view, timeout = memoryview(data), self.sock.gettimeout()
        deadline = time.monotonic() + (timeout or 3600.0)
        while view and self.reply is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the server took nothing of the body in time")
            readable, writable, _ = select.select([self.sock], [self.sock], [], left)
            if readable:
                received = self.sock.recv(65536)
                if not received:
                    raise ConnectionResetError("the server closed the connection mid-body")
                self._feed(received)
            elif writable:
                self.sock.setblocking(False)
                try:
                    view = view[self.sock.send(view[:65536]) :]
                except BlockingIOError:
                    pass
                finally:
                    self.sock.settimeout(timeout)
        return self.reply is None

    def poll(self, wait_s: float) -> None:
        """Take what the server sent within ``wait_s`` (0: what is there now)."""
        readable, _, _ = select.select([self.sock], [], [], wait_s)
        if readable:
            self._feed(self.sock.recv(65536))

    def wait_interim(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while not self._interim and self.reply is None and time.monotonic() < deadline:
            self.poll(deadline - time.monotonic())

    def finish(self) -> Reply:
        while self.reply is None or self.conn.their_state is not h11.DONE:
            data = self.sock.recv(65536)
            self._feed(data)
            if not data and self.conn.their_state is not h11.DONE:
                raise ConnectionError("the server closed the connection before its response ended")
        return self.reply

    def _feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.InformationalResponse):
                interim = (event.status_code, _headers(list(event.headers)))
                self._interim.append(interim)
                if self.on_interim is not None:
                    self.on_interim(*interim)
            elif isinstance(event, h11.Response):
                self.reply = Reply(event.status_code, _headers(list(event.headers)))
                self.reply.interim = self._interim
            elif isinstance(event, h11.Data):
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert self.reply is not None
                self.reply.body = bytes(self._body)
                return
            elif isinstance(event, h11.ConnectionClosed):
                return


def request(
    method: str,
    url: str,
    headers: dict[str, str],
    body: Iterator[bytes] | None = None,
    *,
    timeout_s: float = 60.0,
    on_interim: Callable[[int, dict[str, str]], None] | None = None,
    version: int = INTEROP_VERSION,
) -> Reply:
    """One request with its own connection; interim responses go to ``on_interim`` as they
    arrive, before the body is sent (waiting up to ``INTERIM_WAIT_S`` for one)."""
    exchange = Exchange(url, timeout_s)
    exchange.on_interim = on_interim
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        fields = {"Upload-Draft-Interop-Version": str(version), **headers}
        exchange.send_head(method, target, fields)
        if body is not None:
            exchange.wait_interim(INTERIM_WAIT_S)
            exchange.send_body(body)
        return exchange.finish()
    finally:
        exchange.close()


@dataclass
class IetfUpload:
    """The result: the file's metadata (the server's 201 JSON) and how the upload went."""

    file: dict[str, object]
    upload_url: str
    resumes: int
    interim_seen: int


@dataclass
class _State:
    upload_url: str | None = None
    interim_seen: int = 0


def upload(
    path: Path,
    *,
    url: str,
    api_key: str | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    retries: int = 5,
    stop_after: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    version: int = INTEROP_VERSION,
) -> IetfUpload:
    """Upload ``path`` to ``url``'s /api/v1/uploads, resuming after breaks; ``stop_after``
    (tests) breaks the first request's connection after that many body bytes."""
    size = path.stat().st_size
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    state = _State()
    endpoint = f"{url.rstrip('/')}/api/v1/uploads"
    name = quote(path.name, safe="")

    def got_interim(status: int, headers: dict[str, str]) -> None:
        if status == 104 and headers.get("upload-draft-interop-version") == str(version):
            state.interim_seen += 1
            if "location" in headers:
                state.upload_url = urljoin(endpoint, headers["location"])

    resumes, failures, reply = 0, 0, None
    while reply is None:
        try:
            if state.upload_url is None:
                create = {
                    **auth,
                    "Upload-Complete": "?1",
                    "Upload-Length": str(size),
                    "Content-Length": str(size),
                    "Content-Disposition": f"inline; filename*=UTF-8''{name}",
                }
                body = _read(path, 0, chunk_bytes, stop_after, on_progress)
                reply = request(
                    "POST", endpoint, create, body, on_interim=got_interim, version=version
                )
            else:
                offset = _offset(state.upload_url, auth, version)
                resumes += 1
                if on_progress is not None:
                    on_progress(offset)
                append = {
                    **auth,
                    "Upload-Complete": "?1",
                    "Upload-Offset": str(offset),
                    "Content-Type": PARTIAL_UPLOAD,
                    "Content-Length": str(size - offset),
                }
                body = _read(path, offset, chunk_bytes, None, on_progress)
                reply = request("PATCH", state.upload_url, append, body, version=version)
        except (ConnectionError, OSError, h11.ProtocolError) as exc:
            failures += 1
            if failures > retries:
                raise IetfUploadError(f"gave up after {retries} retries: {exc}") from exc
            stop_after = None
            time.sleep(min(0.2 * 2**failures, 5.0))
            continue
        if reply.status == 409 or reply.status >= 500:
            if state.upload_url is None or failures >= retries:
                raise IetfUploadError(f"{reply.status}: {reply.body[:300]!r}")
            failures += 1
            reply = None
    if reply.status != 201 or reply.headers.get("upload-complete") != "?1":
        raise IetfUploadError(f"{reply.status}: {reply.body[:300]!r}")
    file: dict[str, object] = json.loads(reply.body)
    return IetfUpload(file, state.upload_url or endpoint, resumes, state.interim_seen)


def _offset(upload_url: str, auth: dict[str, str], version: int) -> int:
    reply = request("HEAD", upload_url, auth, version=version)
    if reply.status not in (200, 204) or "upload-offset" not in reply.headers:
        raise IetfUploadError(f"the upload at {upload_url} answered {reply.status}")
    return int(reply.headers["upload-offset"])


def _read(
    path: Path,
    start: int,
    chunk_bytes: int,
    stop_after: int | None,
    on_progress: Callable[[int], None] | None,
) -> Iterator[bytes]:
    """The file from ``start`` in pieces; past ``stop_after`` bytes, a broken connection."""
    sent = 0
    with path.open("rb") as source:
        source.seek(start)
        while piece := source.read(chunk_bytes):
            if stop_after is not None and sent + len(piece) > stop_after:
                yield piece[: stop_after - sent]
                raise ConnectionResetError("stopped on purpose (stop_after)")
            sent += len(piece)
            yield piece
            if on_progress is not None:
                on_progress(start + sent)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while piece := source.read(CHUNK_BYTES):
            digest.update(piece)
    return digest.hexdigest()


def repr_digest_sha256(header: str | None) -> str | None:
    """The sha-256 of a ``Repr-Digest`` value, hex (None: not there)."""
    for member in (header or "").split(","):
        key, _, value = member.strip().partition("=")
        if key == "sha-256" and value.startswith(":") and value.endswith(":"):
            return base64.b64decode(value[1:-1]).hex()
    return None
