"""tus requests for the tests: headers, metadata, create/append/head through any httpx client."""

from __future__ import annotations

import base64
import hashlib
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}
UPLOADS = "/api/v1/uploads"


def metadata(**pairs: str | bytes) -> str:
    """An Upload-Metadata header."""
    encoded = []
    for key, value in pairs.items():
        raw = value.encode() if isinstance(value, str) else value
        encoded.append(f"{key} {base64.b64encode(raw).decode()}")
    return ",".join(encoded)


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


async def create(
    client: httpx.AsyncClient, length: int | None, headers: dict[str, str] | None = None, **kw: Any
) -> str:
    """A new upload's path."""
    sized = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    response = await client.post(UPLOADS, headers={**TUS, **sized, **(headers or {})}, **kw)
    assert response.status_code == 201, response.text
    assert parsedate_to_datetime(response.headers["upload-expires"]).tzinfo is not None
    return httpx.URL(response.headers["location"]).path


async def patch(
    client: httpx.AsyncClient, path: str, offset: int, data: bytes, **headers: str
) -> httpx.Response:
    return await client.patch(
        path, content=data, headers={**OCTETS, "Upload-Offset": str(offset), **headers}
    )


async def offset_of(client: httpx.AsyncClient, path: str, **headers: str) -> int:
    response = await client.head(path, headers={**TUS, **headers})
    assert response.status_code == 200, response.status_code
    return int(response.headers["upload-offset"])


async def send_in_pieces(
    client: httpx.AsyncClient, path: str, data: bytes, pieces: int, **headers: str
) -> httpx.Response:
    """``data`` in ``pieces`` PATCHes, each resumed from a HEAD; the last response."""
    step = -(-len(data) // pieces)
    response = None
    for start in range(0, len(data), step):
        assert await offset_of(client, path, **headers) == start
        response = await patch(client, path, start, data[start : start + step], **headers)
        assert response.status_code == 204, response.text
    assert response is not None
    return response
