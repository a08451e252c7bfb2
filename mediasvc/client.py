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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from mediasvc.progress import Progress

CHUNK_BYTES = 1024 * 1024
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
    delete_token: str


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
) -> Uploaded:
    """PUT the file as a raw body, streamed, and verify the server's sha256 against ours."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    params: dict[str, int] = {}
    if max_downloads is not None:
        params["max_downloads"] = max_downloads
    if expires_in_s is not None:
        params["expires_in"] = expires_in_s

    def body(bar: Progress) -> Iterator[bytes]:
        with path.open("rb") as source:
            while chunk := source.read(CHUNK_BYTES):
                digest.update(chunk)
                bar.update(len(chunk))
                yield chunk

    target = f"{url.rstrip('/')}/api/v1/files/stream/{quote(path.name, safe='')}"
    headers = {**_headers(api_key), "Content-Length": str(size)}
    bar = Progress(path.name, size)
    bar.enabled = bar.enabled and progress
    with _reaching(url), bar, httpx.Client(timeout=TIMEOUT) as http:
        response = http.put(target, content=body(bar), params=params, headers=headers)
    _raise_for_problem(response)
    meta = response.json()
    if meta["sha256"] != digest.hexdigest():
        raise ClientError(
            f"the server stored sha256 {meta['sha256']}, the file is {digest.hexdigest()}"
        )
    return Uploaded(meta["uid"], meta["download_url"], meta["sha256"], meta["delete_token"])


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
