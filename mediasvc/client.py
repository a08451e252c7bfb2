"""The command line's HTTP client: streamed upload and resumable download, with progress bars.

Both stream in 1 MiB chunks (constant memory, any file size) and check the SHA-256 end to end:
the upload against what the server computed, the download against the ETag (the sha256). A
resumed download that does not match is downloaded again from the start, once: the partial file
it continued may hold bytes that were never the file's. A file that fails the check is removed,
so nothing left on disk looks complete without being the file.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from mediasvc.progress import Progress
from mediasvc.tus_client import (
    DEFAULT_CHUNK_BYTES,
    Backoff,
    SequentialSha256,
    Span,
    TusClient,
    TusError,
    UploadGone,
)
from mediasvc.upload_state import SavedUpload, UploadKey, UploadState

CHUNK_BYTES = 1024 * 1024
DEFAULT_BACKOFF = Backoff()
DEFAULT_URL = "http://127.0.0.1:8000"
# Connecting should be quick; a multi-GB body legitimately takes long between reads and writes.
TIMEOUT = httpx.Timeout(30.0, read=600.0, write=600.0)


class ClientError(Exception):
    """Something the user should read: a refused request, a checksum that does not match."""


@dataclass(frozen=True, slots=True)
class Uploaded:
    uid: str
    download_url: str
    sha256: str
    delete_token: str | None  # None: the upload completed in an earlier, killed run


@contextmanager
def _reaching(url: str) -> Iterator[None]:
    """httpx's transport errors as one line that says what to check."""
    try:
        yield
    except httpx.ConnectError as exc:
        raise ClientError(
            f"cannot connect to {url} ({_reason(exc)}): is the service running "
            "(`mediasvc serve`), and is --url (or MEDIASVC_URL) right?"
        ) from exc
    except httpx.TimeoutException as exc:
        raise ClientError(f"{url} did not answer in time ({type(exc).__name__})") from exc
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise ClientError(f"{url} is not a usable URL: {exc}") from exc
    except httpx.TransportError as exc:
        raise ClientError(f"the connection to {url} failed: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.removeprefix("[Errno 111] ").splitlines()[0]


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _raise_for_problem(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()  # a streamed response's body is not read yet (it was ResponseNotRead)
    try:
        problem = response.json()
        detail = f"{problem.get('title')}: {problem.get('detail')}"
    except ValueError:
        detail = response.text[:200]
    raise ClientError(f"{response.status_code} {detail}")


def upload(
    path: Path,
    *,
    url: str = DEFAULT_URL,
    api_key: str | None = None,
    max_downloads: int | None = None,
    expires_in_s: int | None = None,
    progress: bool = True,
    parallel: int = 1,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    backoff: Backoff = DEFAULT_BACKOFF,
    state_dir: Path | None = None,
) -> Uploaded:
    """Upload with tus, resuming an earlier run's upload of the same file; verify the sha256.

    ``parallel`` > 1 sends that many partial uploads at once and joins them (concatenation).
    The unfinished upload's URLs are kept in the cache directory (mediasvc.upload_state) until
    the server's sha256 matched ours, so a run killed at any point continues where it stopped.
    """
    size = path.stat().st_size
    metadata = {"filename": path.name}
    if max_downloads is not None:
        metadata["max_downloads"] = str(max_downloads)
    if expires_in_s is not None:
        metadata["expires_in"] = str(expires_in_s)
    parallel = max(1, min(parallel, size))  # every part has at least one byte
    state = UploadState(UploadKey.of(url, path, metadata, parallel), state_dir)
    bar = Progress(path.name, size)
    bar.enabled = bar.enabled and progress
    with _reaching(url), bar, httpx.Client(timeout=TIMEOUT, headers=_headers(api_key)) as http:
        tus = TusClient(http, url, backoff=backoff)
        sender = _Sender(tus, path, size, chunk_bytes, bar)
        try:
            done = sender.run(state, metadata, parallel)
        except UploadGone:
            # The saved upload expired or was removed meanwhile: the file goes again, once.
            state.forget()
            print(f"{path}: the earlier upload is gone; starting again", file=sys.stderr)
            done = sender.run(state, metadata, parallel)
        except TusError as exc:
            raise ClientError(str(exc)) from exc
        uploaded = _verified(http, done, sender.hasher.hexdigest())
    state.forget()
    return uploaded


class _Sender:
    """One file's tus upload: its spans (one, or the parallel parts), progress and sha256."""

    def __init__(
        self, tus: TusClient, path: Path, size: int, chunk_bytes: int, bar: Progress
    ) -> None:
        self.tus, self.path, self.size, self.chunk_bytes, self.bar = (
            tus, path, size, chunk_bytes, bar
        )  # fmt: skip
        self.hasher = SequentialSha256()
        self._confirmed: dict[int, int] = {}  # span start → bytes the server has
        self._sending: dict[int, int] = {}  # span start → bytes of the PATCH under way

    def run(self, state: UploadState, metadata: dict[str, str], parallel: int) -> Completed:
        """The stored file's URL and delete token, from the response that completed it."""
        self.hasher = SequentialSha256()
        bounds = _split(self.size, parallel)
        saved = state.load()
        if saved is not None and saved.final is not None:
            # Joined in a run killed before it verified: the final upload is the file.
            self.tus.offset(saved.final)  # still there (UploadGone otherwise: start again)
            self.hasher.catch_up(self.path, self.size)
            return Completed(self._file_url(saved.final), None)
        if saved is not None and len(saved.urls) == len(bounds):
            urls = saved.urls
        elif parallel == 1:
            created = self.tus.create(self.size, metadata)
            if self.size == 0:  # complete as created: the response names the file
                return Completed.of(created)
            urls = [self.tus.location(created)]
        else:
            parts = [self.tus.create(length, {}, partial=True) for _, length in bounds]
            urls = [self.tus.location(part) for part in parts]
        state.save(SavedUpload(urls))
        spans = [
            Span(u, self.path, start, length)
            for u, (start, length) in zip(urls, bounds, strict=True)
        ]
        if parallel == 1:
            last = self._send(spans[0], self.hasher)
            if last is not None:
                return Completed.of(last)
            # Everything had arrived in a run killed before it verified: the upload's UID is
            # the file's; its delete token went to that run.
            self.hasher.catch_up(self.path, self.size)
            return Completed(self._file_url(urls[0]), None)
        with ThreadPoolExecutor(parallel + 1) as pool:
            # The parts' bytes come in any order; one reader hashes the file in order meanwhile
            # (mostly from the page cache, as the parts have just read it).
            hashing = pool.submit(self.hasher.catch_up, self.path, self.size)
            list(pool.map(lambda span: self._send(span, None), spans))
            hashing.result()
        joined = self.tus.concatenate(urls, metadata)
        state.save(SavedUpload(urls, self.tus.location(joined)))
        return Completed.of(joined)

    def _file_url(self, upload_url: str) -> str:
        """The file a finished upload became: its UID is the upload's."""
        uid = upload_url.rstrip("/").rsplit("/", 1)[-1]
        return f"{self.tus.base_url}/api/v1/files/{uid}"

    def _send(self, span: Span, hasher: SequentialSha256 | None) -> httpx.Response | None:
        def on_offset(offset: int) -> None:
            if hasher is not None and hasher.position < offset:
                hasher.catch_up(self.path, span.start + offset)  # a new run: the prefix
            self._confirmed[span.start], self._sending[span.start] = offset, 0
            self._show()

        def on_sent(n_bytes: int) -> None:
            self._sending[span.start] = n_bytes
            self._show()

        return self.tus.send(span, self.chunk_bytes, hasher, on_offset, on_sent)

    def _show(self) -> None:
        self.bar.show(sum(self._confirmed.values()) + sum(self._sending.values()))


def _split(size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` byte ranges (start, length) covering ``size``, as equal as can be."""
    step, extra = divmod(size, parts)
    bounds, start = [], 0
    for index in range(parts):
        length = step + (1 if index < extra else 0)
        bounds.append((start, length))
        start += length
    return bounds


@dataclass(frozen=True, slots=True)
class Completed:
    file_url: str
    delete_token: str | None

    @classmethod
    def of(cls, response: httpx.Response) -> Completed:
        """From the response that completed the upload: ``Content-Location`` names the file."""
        location = response.headers.get("Content-Location")
        if not location:
            raise ClientError(f"{response.status_code} completed the upload without a file URL")
        return cls(urljoin(str(response.request.url), location), _delete_token(response))


def _verified(http: httpx.Client, done: Completed, digest: str) -> Uploaded:
    """The stored file's facts; its sha256 must be the one we computed while sending."""
    response = http.get(done.file_url + "/metadata")
    _raise_for_problem(response)
    meta = response.json()
    if meta["sha256"] != digest:
        raise ClientError(f"the server stored sha256 {meta['sha256']}, the file is {digest}")
    return Uploaded(meta["uid"], meta["download_url"], meta["sha256"], done.delete_token)


def download(
    uid: str,
    output: Path | None = None,
    *,
    url: str = DEFAULT_URL,
    api_key: str | None = None,
    progress: bool = True,
    restart: bool = False,
) -> Path:
    """GET the file; resume a partial ``output`` with Range + If-Range; verify the sha256.

    ``restart`` ignores a partial ``output``. A resumed download whose sha256 does not match
    is removed and fetched again whole, once; a whole download that does not match is removed
    and an error.
    """
    file_url = f"{url.rstrip('/')}/api/v1/files/{uid}"
    with _reaching(url), httpx.Client(timeout=TIMEOUT, headers=_headers(api_key)) as http:
        meta_response = http.get(f"{file_url}/metadata")
        _raise_for_problem(meta_response)
        meta = meta_response.json()
        output = output or Path(_safe_name(meta.get("original_name")) or uid)
        resumed, digest = _fetch(http, file_url, output, meta, restart=restart, progress=progress)
        if resumed and digest != meta["sha256"]:
            # Removed first: if the new download fails too (the download budget is used up,
            # the service went away), no full-size file of wrong bytes is left behind.
            output.unlink()
            try:
                _, digest = _fetch(http, file_url, output, meta, restart=True, progress=progress)
            except ClientError as exc:
                raise ClientError(
                    f"{output}: the partial file from an earlier run did not match and was "
                    f"removed; downloading it again from the start failed: {exc}"
                ) from exc
            if digest == meta["sha256"]:
                print(
                    f"{output}: the partial file from an earlier run did not match; "
                    "downloaded it again from the start",
                    file=sys.stderr,
                )
    if digest != meta["sha256"]:
        output.unlink()  # never leave a complete-looking file that is not the file
        raise ClientError(
            f"{output} had sha256 {digest}, expected {meta['sha256']}; removed it, "
            "download it again"
        )
    return output


def _fetch(
    http: httpx.Client,
    file_url: str,
    output: Path,
    meta: dict[str, Any],
    *,
    restart: bool,
    progress: bool,
) -> tuple[bool, str]:
    """Bring ``output`` to the file's size; whether a partial file was kept, and the sha256."""
    etag = f'"{meta["sha256"]}"'
    size: int = meta["size"]
    have = output.stat().st_size if output.exists() and not restart else 0
    if have > size:
        have = 0  # longer than the file: not a partial download of it
    digest = hashlib.sha256()
    if have:
        with output.open("rb") as existing:
            while chunk := existing.read(CHUNK_BYTES):
                digest.update(chunk)
    if have == size and have:
        return True, digest.hexdigest()
    # If-Range: if the file behind the UID were different, the server sends it whole.
    headers = {"Range": f"bytes={have}-", "If-Range": etag} if have else {}
    with http.stream("GET", file_url, headers=headers) as response:
        _raise_for_problem(response)
        if response.status_code == 200 and have:
            have, digest = 0, hashlib.sha256()  # the server sent it all: start over
        bar = Progress(output.name, size, done_bytes=have)
        bar.enabled = bar.enabled and progress
        with output.open("ab" if have else "wb") as sink, bar:
            for chunk in response.iter_bytes(CHUNK_BYTES):
                sink.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return bool(have), digest.hexdigest()


def _safe_name(name: str | None) -> str | None:
    """The original name as a local file name: its last path segment, never a path."""
    if not name:
        return None
    base = os.path.basename(name.replace("\\", "/"))
    return base if base not in ("", ".", "..") else None


# The header of the completing tus response that carries the new file's delete token (the
# plain upload's JSON has it as `delete_token`).
DELETE_TOKEN_HEADER = "X-Delete-Token"


def _delete_token(response: httpx.Response) -> str | None:
    token: str | None = response.headers.get(DELETE_TOKEN_HEADER)
    return token
