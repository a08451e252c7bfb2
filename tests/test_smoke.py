from __future__ import annotations

import hashlib

import httpx


async def test_raw_upload_round_trip(client: httpx.AsyncClient) -> None:
    body = bytes(range(256)) * 1000
    response = await client.post(
        "/api/v1/files/stream", content=body, headers={"X-Filename": "a.bin"}
    )
    assert response.status_code == 201, response.text
    meta = response.json()
    assert meta["sha256"] == hashlib.sha256(body).hexdigest()
    download = await client.get(f"/api/v1/files/{meta['uid']}")
    assert download.content == body
