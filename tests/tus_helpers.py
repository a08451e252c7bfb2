"""What the resumable-upload client tests share: a random source file, and the stored file's
sha256 checked three ways (the metadata, the ETag, and the downloaded bytes hashed here)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

MiB = 1024 * 1024
UPLOADS = "/api/v1/uploads"


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes in 1 MiB pieces; their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as sink:
        left = size
        while left:
            data = os.urandom(min(MiB, left))
            digest.update(data)
            sink.write(data)
            left -= len(data)
    return digest.hexdigest()


def stored_file(base_url: str, file_url: str) -> dict[str, Any]:
    """The metadata of the file at ``file_url`` (absolute or a path), after checking that its
    bytes, downloaded and hashed here, have the sha256 the metadata and the ETag claim."""
    url = urljoin(base_url + "/", file_url)
    meta: dict[str, Any] = httpx.get(f"{url}/metadata", timeout=10).raise_for_status().json()
    digest = hashlib.sha256()
    with httpx.stream("GET", url, timeout=60) as response:
        response.raise_for_status()
        assert response.headers["etag"] == f'"{meta["sha256"]}"'
        for data in response.iter_bytes(MiB):
            digest.update(data)
    assert digest.hexdigest() == meta["sha256"]
    return meta


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])
