"""The caller's metadata: given with X-Metadata (raw) or a metadata form field (multipart), kept
on the row, returned in the file's metadata; anything but a small JSON object is 422 with
nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from mediasvc.config import Settings
from mediasvc.errors import InvalidMetadata
from mediasvc.events.metadata import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_METADATA_KEYS,
    parse_metadata,
)
from tests.helpers import (
    assert_nothing_left,
    assert_problem,
    form_part,
    multipart_body,
    multipart_headers,
)

GIVEN = {"order": "A-17", "customer": {"id": 42, "vip": True}, "tags": ["é", "ü"]}


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


BAD: dict[str, bytes] = {
    "not JSON": b"{order: 1}",
    "not an object": b"[1, 2]",
    "a string": b'"hello"',
    "too large": json.dumps({"x": "y" * MAX_METADATA_BYTES}).encode(),
    "too deep": json.dumps(nested(MAX_METADATA_DEPTH + 1)).encode(),
    "too many keys": json.dumps({f"k{i}": i for i in range(MAX_METADATA_KEYS + 1)}).encode(),
    "deep enough to break the parser": b"[" * 3000 + b"]" * 3000,
    "not UTF-8": b'{"a": "\xff"}',
}


def test_bounds_hold_at_the_edge() -> None:
    assert parse_metadata(json.dumps(nested(MAX_METADATA_DEPTH))) == nested(MAX_METADATA_DEPTH)
    at_most = {f"k{i}": i for i in range(MAX_METADATA_KEYS)}
    assert parse_metadata(json.dumps(at_most)) == at_most
    assert parse_metadata(None) is None
    assert parse_metadata(b"  ") is None
    for raw in BAD.values():
        with pytest.raises(InvalidMetadata):
            parse_metadata(raw)


async def test_raw_upload_keeps_x_metadata(client: httpx.AsyncClient) -> None:
    header = json.dumps(GIVEN, ensure_ascii=False).encode("utf-8")  # raw UTF-8 in the header
    created = await client.post(
        "/api/v1/files/stream", content=b"data", headers={"X-Metadata": header}
    )
    assert created.status_code == 201, created.text
    assert created.json()["metadata"] == GIVEN
    meta = await client.get(f"/api/v1/files/{created.json()['uid']}/metadata")
    assert meta.json()["metadata"] == GIVEN
    plain = await client.post("/api/v1/files/stream", content=b"data")
    assert plain.json()["metadata"] is None


@pytest.mark.parametrize("where", ["before", "after"])
async def test_multipart_metadata_field_before_or_after_the_file(
    client: httpx.AsyncClient, where: str
) -> None:
    field = form_part("metadata", json.dumps(GIVEN).encode())
    file = form_part("file", b"file bytes", filename="a.bin")
    parts = (field, file) if where == "before" else (file, field)
    created = await client.post(
        "/api/v1/files", content=multipart_body(*parts), headers=multipart_headers()
    )
    assert created.status_code == 201, created.text
    assert created.json()["metadata"] == GIVEN


@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_metadata_is_422_and_nothing_is_left(
    client: httpx.AsyncClient, settings: Settings, case: str
) -> None:
    raw = BAD[case]
    if len(raw) < 1000:  # a header block has its own bound (431): send large ones in forms only
        response = await client.post(
            "/api/v1/files/stream",
            content=b"data",
            headers={"X-Metadata": raw},
        )
        assert assert_problem(response, 422)["type"].endswith("invalid-metadata")
    form = multipart_body(
        form_part("file", b"x" * 5000, filename="a.bin"), form_part("metadata", raw)
    )
    response = await client.post("/api/v1/files", content=form, headers=multipart_headers())
    assert assert_problem(response, 422)["type"].endswith("invalid-metadata")
    await assert_nothing_left(client, Path(settings.media_root))


async def test_metadata_given_twice_is_422(client: httpx.AsyncClient, settings: Settings) -> None:
    form = multipart_body(form_part("metadata", b"{}"), form_part("file", b"x", filename="a"))
    headers = {**multipart_headers(), "X-Metadata": "{}"}
    response = await client.post("/api/v1/files", content=form, headers=headers)
    assert_problem(response, 422)
    twice = multipart_body(
        form_part("metadata", b"{}"), form_part("metadata", b"{}"), form_part("file", b"x")
    )
    response = await client.post("/api/v1/files", content=twice, headers=multipart_headers())
    assert_problem(response, 400)
    await assert_nothing_left(client, Path(settings.media_root))
