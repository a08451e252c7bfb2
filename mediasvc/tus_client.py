"""A small tus 1.0.0 client on httpx, for the command line: create, HEAD, PATCH, concatenate.

One upload is a byte range of a local file: the whole file, or one of ``--parallel N`` partial
uploads (``Upload-Concat: partial``) that a final ``POST`` joins. Each PATCH carries at most
``chunk_size`` bytes, streamed from the file in 1 MiB reads (constant memory), with an
``Upload-Checksum: sha256`` of its bytes: the chunk is read once to hash it and once more to send
it (the second read comes from the page cache), so no chunk is ever held whole in memory.

A network error, a 5xx, a 423 (the upload is locked by an older request the server is ending)
or a 460 (a checksum that did not match: the server kept nothing of the PATCH) is retried after
an exponential, jittered back-off, from the offset a HEAD reports: nothing the server has is sent
again. A 409 (the offset moved) re-reads the offset at once. The attempts start over whenever
the offset advanced, so a long upload over a flaky network is not given up for old failures.
"""

from __future__ import annotations

import base64
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx

TUS_VERSION = "1.0.0"
READ_BYTES = 1024 * 1024
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
UPLOADS_PATH = "/api/v1/uploads"
# Retried: the server could not take this request now, but the upload is intact.
RETRY_STATUSES = frozenset({423, 429, 460, 500, 502, 503, 504})
GONE_STATUSES = frozenset({403, 404, 410})  # the upload is not (or no longer) there for us


class TusError(Exception):
    """A refusal to show the user (the server's problem+json detail, or what went wrong)."""


class UploadGone(TusError):
    """The upload URL answers 404/410/403: expired, terminated, or another key's: start over."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits of ``first_s * 2**n`` with ±25 % jitter, capped; ``attempts`` in a row at most."""

    attempts: int = 8
    first_s: float = 0.5
    max_s: float = 30.0

    def wait_s(self, attempt: int) -> float:
        base = min(self.max_s, self.first_s * 2**attempt)
        return float(base * random.uniform(0.75, 1.25))


def encode_metadata(metadata: dict[str, str]) -> str:
    """``Upload-Metadata``: ``key base64(value)`` pairs, comma-separated (tus 1.0.0, creation)."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in metadata.items()
    )


class SequentialSha256:
    """The whole file's sha256, fed in file order by whichever read reaches the next bytes.

    A chunk that is sent again after a cut was hashed the first time: bytes before ``position``
    are skipped, so every byte is hashed exactly once however often it crosses the network.
    """

    def __init__(self) -> None:
        self.position = 0
        self._hash = hashlib.sha256()
        self._lock = threading.Lock()

    def feed(self, offset: int, data: bytes) -> None:
        with self._lock:
            end = offset + len(data)
            if offset <= self.position < end:
                self._hash.update(memoryview(data)[self.position - offset :])
                self.position = end

    def catch_up(self, path: Path, to: int) -> None:
        """Read and hash the file up to ``to`` (a resume in a new process: the prefix the
        server already has)."""
        with path.open("rb") as source:
            source.seek(self.position)
            while self.position < to:
                data = source.read(min(READ_BYTES, to - self.position))
                if not data:
                    raise TusError(f"{path} is shorter than {to} bytes: it changed")
                self.feed(self.position, data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@dataclass(slots=True)
class Span:
    """One tus upload: the bytes ``start``..``start + length`` of ``path`` at ``url``."""

    url: str
    path: Path
    start: int
    length: int


class TusClient:
    """The requests, each with ``Tus-Resumable`` and the API key; retries per ``backoff``."""

    def __init__(
        self,
        http: httpx.Client,
        base_url: str,
        *,
        backoff: Backoff = Backoff(),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.backoff = backoff
        self._sleep = sleep
        self.retries = 0  # requests retried, for the user's summary
        self.reached = False  # whether the server has answered once in this run

    def _headers(self, **extra: str) -> dict[str, str]:
        return {"Tus-Resumable": TUS_VERSION, **extra}

    def create(
        self, length: int, metadata: dict[str, str], *, partial: bool = False
    ) -> httpx.Response:
        """POST (creation): the response, whose ``location`` is the new upload's URL."""
        headers = self._headers(**{"Upload-Length": str(length)})
        if metadata:
            headers["Upload-Metadata"] = encode_metadata(metadata)
        if partial:
            headers["Upload-Concat"] = "partial"
        response = self._retrying(
            lambda: self.http.post(self.base_url + UPLOADS_PATH, headers=headers)
        )
        expect(response, 201)
        return response

    def concatenate(self, parts: list[str], metadata: dict[str, str]) -> httpx.Response:
        """POST ``Upload-Concat: final;<urls>``: the parts, in order, become one upload."""
        headers = self._headers(**{"Upload-Concat": "final;" + " ".join(parts)})
        if metadata:
            headers["Upload-Metadata"] = encode_metadata(metadata)
        response = self._retrying(
            lambda: self.http.post(self.base_url + UPLOADS_PATH, headers=headers)
        )
        expect(response, 201)
        return response

    def offset(self, url: str) -> int:
        """HEAD: how many bytes of the upload the server has."""
        response = self._retrying(lambda: self.http.head(url, headers=self._headers()))
        if response.status_code in GONE_STATUSES:
            raise UploadGone(f"{url}: {response.status_code}")
        expect(response, 200, 204)
        return int(response.headers["Upload-Offset"])

    def terminate(self, url: str) -> None:
        """DELETE (termination); an upload already gone is fine."""
        response = self.http.delete(url, headers=self._headers())
        if response.status_code not in GONE_STATUSES:
            expect(response, 204)

    def send(
        self,
        span: Span,
        chunk_bytes: int,
        hasher: SequentialSha256 | None,
        on_offset: Callable[[int], None],
        on_sent: Callable[[int], None] = lambda _n: None,
    ) -> httpx.Response | None:
        """PATCH the span's bytes from the server's offset on; the response that completed it
        (None if the server had them all already).

        ``on_offset`` hears every offset the server confirms (or reports after a cut);
        ``hasher`` is fed every byte read, in file order where the span allows; ``on_sent``
        hears the bytes of the PATCH under way handed to the connection so far.
        """
        offset = self.offset(span.url)
        on_offset(offset)
        failures = 0
        last: httpx.Response | None = None
        while offset < span.length:
            size = min(chunk_bytes, span.length - offset)
            checksum = _chunk_sha256(span.path, span.start + offset, size, hasher)
            headers = self._headers(
                **{
                    "Content-Type": "application/offset+octet-stream",
                    "Content-Length": str(size),
                    "Upload-Offset": str(offset),
                    "Upload-Checksum": "sha256 " + base64.b64encode(checksum).decode(),
                }
            )
            try:
                body = _read(span.path, span.start + offset, size, on_sent)
                response = self.http.patch(span.url, content=body, headers=headers)
            except httpx.TransportError as exc:
                failures = self._fail(failures, exc)
                offset = self._reoffset(span.url, on_offset)
                continue
            self.reached = True
            if response.status_code in GONE_STATUSES:
                raise UploadGone(f"{span.url}: {problem_text(response)}")
            if response.status_code == 409:  # the offset is not where we thought: ask
                failures = self._fail(failures, TusError(problem_text(response)), wait=False)
                offset = self._reoffset(span.url, on_offset)
                continue
            if response.status_code in RETRY_STATUSES:
                failures = self._fail(failures, TusError(problem_text(response)))
                offset = self._reoffset(span.url, on_offset)
                continue
            expect(response, 204, 200)
            offset, failures, last = int(response.headers["Upload-Offset"]), 0, response
            on_offset(offset)
        return last

    def _reoffset(self, url: str, on_offset: Callable[[int], None]) -> int:
        offset = self.offset(url)
        on_offset(offset)
        return offset

    def _fail(self, failures: int, error: Exception, *, wait: bool = True) -> int:
        """Count a failed attempt; give up after ``backoff.attempts`` in a row, else wait.

        A server that refused the very first connection of the run is down or the URL is
        wrong: said at once (the caller words it), not after minutes of retries.
        """
        if isinstance(error, httpx.ConnectError) and not self.reached:
            raise error
        if failures >= self.backoff.attempts:
            raise TusError(f"gave up after {failures + 1} attempts in a row: {error}") from error
        self.retries += 1
        if wait:
            self._sleep(self.backoff.wait_s(failures))
        return failures + 1

    def _retrying(self, request: Callable[[], httpx.Response]) -> httpx.Response:
        """A request without a body (POST, HEAD) retried on network errors and RETRY_STATUSES."""
        failures = 0
        while True:
            try:
                response = request()
            except httpx.TransportError as exc:
                failures = self._fail(failures, exc)
                continue
            self.reached = True
            if response.status_code not in RETRY_STATUSES:
                return response
            failures = self._fail(failures, TusError(problem_text(response)))

    def location(self, response: httpx.Response) -> str:
        """The absolute URL a creation's ``Location`` names."""
        location: str | None = response.headers.get("Location")
        if not location:
            raise TusError(f"{response.status_code} without a Location header")
        return urljoin(str(response.request.url), location)


def _chunk_sha256(path: Path, start: int, size: int, hasher: SequentialSha256 | None) -> bytes:
    digest = hashlib.sha256()
    position = start
    for data in _read(path, start, size):
        digest.update(data)
        if hasher is not None:
            hasher.feed(position, data)
        position += len(data)
    return digest.digest()


def _read(
    path: Path, start: int, size: int, on_read: Callable[[int], None] = lambda _n: None
) -> Iterator[bytes]:
    """The file's bytes ``start``..``start + size`` in READ_BYTES pieces; ``on_read`` hears the
    running count."""
    with path.open("rb") as source:
        source.seek(start)
        left = size
        while left:
            data = source.read(min(READ_BYTES, left))
            if not data:
                raise TusError(f"{path} is shorter than {start + size} bytes: it changed")
            left -= len(data)
            on_read(size - left)
            yield data


def problem_text(response: httpx.Response) -> str:
    """``status title: detail`` from a problem+json body, else the status and the body's start."""
    response.read()
    try:
        problem = response.json()
        return f"{response.status_code} {problem['title']}: {problem['detail']!s}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} {response.text[:200]}".rstrip()


def expect(response: httpx.Response, *statuses: int) -> None:
    if response.status_code not in statuses:
        raise TusError(problem_text(response))
