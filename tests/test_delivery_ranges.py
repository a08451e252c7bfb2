"""GET/HEAD /api/v1/files/{uid} with Range (RFC 9110 §14, §15.3.7, §15.5.17) and If-Range (§13.1.5).

Every case checks the exact bytes and the exact Content-Range/Content-Length that go with them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from mediasvc.app import create_app
from mediasvc.config import Settings
from tests.edge import direct_or_edge
from tests.helpers import MULTIPART_CT, assert_problem, parse_byteranges

SIZE = 1000
DATA = random.Random(20260101).randbytes(SIZE)
CHUNK = 64 * 1024  # download_chunk_size_bytes in the test settings: the read size
BIG = random.Random(7).randbytes(3 * CHUNK + 123)


@pytest.fixture(params=["direct", "edge"])
async def client(request: pytest.FixtureRequest, app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Every case on the app itself and through the nginx edge: the same answers both ways."""
    async with direct_or_edge(request, app) as http:
        yield http


# --- helpers ------------------------------------------------------------------------------------


async def upload(
    client: httpx.AsyncClient,
    data: bytes = DATA,
    *,
    name: str = "data.bin",
    content_type: str | None = None,
) -> dict[str, Any]:
    headers = {"X-Filename": name}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post("/api/v1/files/stream", content=data, headers=headers)
    assert response.status_code == 201, response.text
    meta: dict[str, Any] = response.json()
    assert meta["size"] == len(data)
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    return meta


async def fetch(
    client: httpx.AsyncClient, uid: str, range_: str | None = None, *, method: str = "GET", **h: str
) -> httpx.Response:
    headers = {name.replace("_", "-"): value for name, value in h.items()}
    if range_ is not None:
        headers["Range"] = range_
    return await client.request(method, f"/api/v1/files/{uid}", headers=headers)


def assert_partial(response: httpx.Response, data: bytes, first: int, last: int) -> None:
    """A single-part 206 carrying data[first..last] (inclusive), with matching framing."""
    assert response.status_code == 206, response.text
    assert response.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
    assert response.headers["content-length"] == str(last - first + 1)
    assert response.content == data[first : last + 1]
    assert response.headers["accept-ranges"] == "bytes"
    assert not response.headers["content-type"].startswith("multipart/")


def assert_full(response: httpx.Response, data: bytes) -> None:
    assert response.status_code == 200, response.text
    assert "content-range" not in response.headers
    assert response.headers["content-length"] == str(len(data))
    assert response.content == data


def assert_parts(response: httpx.Response, data: bytes, expected: list[tuple[int, int]]) -> None:
    """A multipart/byteranges 206 whose parts are exactly `expected` (inclusive bounds)."""
    assert response.status_code == 206, response.text
    assert "content-range" not in response.headers  # RFC 9110 §14.4: not on the whole message
    parts = parse_byteranges(response)
    assert [(p.first, p.last) for p in parts] == expected
    for part in parts:
        assert part.total == len(data)
        assert part.payload == data[part.first : part.last + 1]


@asynccontextmanager
async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


# --- single ranges ------------------------------------------------------------------------------


async def test_range_first_bytes(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    response = await fetch(client, meta["uid"], "bytes=0-99")
    assert_partial(response, DATA, 0, 99)
    assert response.headers["etag"] == f'"{meta["sha256"]}"'


async def test_range_last_bytes(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    assert_partial(await fetch(client, meta["uid"], "bytes=-100"), DATA, 900, 999)


async def test_range_suffix_longer_than_file(client: httpx.AsyncClient) -> None:
    # RFC 9110 §14.1.3: a suffix longer than the representation selects all of it (still 206).
    meta = await upload(client)
    assert_partial(await fetch(client, meta["uid"], "bytes=-5000"), DATA, 0, SIZE - 1)


async def test_range_suffix_equal_to_file_size(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    assert_partial(await fetch(client, meta["uid"], f"bytes=-{SIZE}"), DATA, 0, SIZE - 1)


async def test_range_open_ended(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    assert_partial(await fetch(client, meta["uid"], "bytes=500-"), DATA, 500, SIZE - 1)


async def test_range_open_ended_from_zero_is_whole_file_as_206(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    assert_partial(await fetch(client, meta["uid"], "bytes=0-"), DATA, 0, SIZE - 1)


async def test_range_end_past_eof_is_clamped(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    assert_partial(await fetch(client, meta["uid"], "bytes=990-5000"), DATA, 990, SIZE - 1)
    assert_partial(await fetch(client, meta["uid"], "bytes=0-99999999999999999999"), DATA, 0, 999)


async def test_range_ending_exactly_at_last_byte(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    assert_partial(await fetch(client, meta["uid"], "bytes=100-999"), DATA, 100, 999)


@pytest.mark.parametrize(
    ("header", "first"),
    [("bytes=0-0", 0), ("bytes=999-999", 999), ("bytes=-1", 999), ("bytes=999-", 999)],
)
async def test_range_single_byte(client: httpx.AsyncClient, header: str, first: int) -> None:
    meta = await upload(client)
    response = await fetch(client, meta["uid"], header)
    assert_partial(response, DATA, first, first)
    assert len(response.content) == 1


async def test_range_unit_is_case_insensitive(client: httpx.AsyncClient) -> None:
    # RFC 9110 §14.1: range units are compared case-insensitively.
    meta = await upload(client)
    assert_partial(await fetch(client, meta["uid"], "Bytes=10-19"), DATA, 10, 19)


async def test_range_spanning_read_chunks_is_byte_exact(client: httpx.AsyncClient) -> None:
    meta = await upload(client, BIG)
    first, last = CHUNK - 7, 2 * CHUNK + 9  # starts in one read chunk, ends two chunks later
    assert_partial(await fetch(client, meta["uid"], f"bytes={first}-{last}"), BIG, first, last)
    whole_chunks = f"bytes={CHUNK}-{2 * CHUNK - 1}"
    assert_partial(await fetch(client, meta["uid"], whole_chunks), BIG, CHUNK, 2 * CHUNK - 1)
    assert_partial(
        await fetch(client, meta["uid"], "bytes=-123"), BIG, len(BIG) - 123, len(BIG) - 1
    )


# --- several ranges -----------------------------------------------------------------------------


async def test_range_several_ranges_give_multipart_byteranges(client: httpx.AsyncClient) -> None:
    meta = await upload(client, content_type="video/mp4")
    response = await fetch(client, meta["uid"], "bytes=0-9, 100-199, -10")
    assert_parts(response, DATA, [(0, 9), (100, 199), (990, 999)])
    for part in parse_byteranges(response):
        assert part.content_type == "video/mp4"  # each part names the representation's type
    assert response.headers["etag"] == f'"{meta["sha256"]}"'


async def test_range_several_ranges_across_read_chunks(client: httpx.AsyncClient) -> None:
    meta = await upload(client, BIG)
    spec = f"bytes=5-{CHUNK + 5},{2 * CHUNK - 3}-{2 * CHUNK + 3},{3 * CHUNK}-"
    response = await fetch(client, meta["uid"], spec)
    expected = [(5, CHUNK + 5), (2 * CHUNK - 3, 2 * CHUNK + 3), (3 * CHUNK, len(BIG) - 1)]
    assert_parts(response, BIG, expected)


async def test_range_several_ranges_out_of_order(client: httpx.AsyncClient) -> None:
    # The server may reorder (RFC 9110 §15.3.7.2); each part must still carry its own bytes.
    meta = await upload(client)
    response = await fetch(client, meta["uid"], "bytes=800-809,0-4,400-449")
    parts = parse_byteranges(response)
    assert sorted((p.first, p.last) for p in parts) == [(0, 4), (400, 449), (800, 809)]
    for part in parts:
        assert part.payload == DATA[part.first : part.last + 1]


async def test_range_overlapping_ranges_merged(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    assert_partial(await fetch(client, meta["uid"], "bytes=0-99,50-149"), DATA, 0, 149)
    assert_partial(await fetch(client, meta["uid"], "bytes=200-299,210-220"), DATA, 200, 299)


async def test_range_adjacent_ranges_merged(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    assert_partial(await fetch(client, meta["uid"], "bytes=0-9,10-19"), DATA, 0, 19)


async def test_range_duplicate_ranges_merged(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    assert_partial(await fetch(client, meta["uid"], "bytes=5-9,5-9,5-9"), DATA, 5, 9)


async def test_range_overlaps_merged_inside_multipart(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    response = await fetch(client, meta["uid"], "bytes=0-9,5-19,-10,500-509,990-")
    assert_parts(response, DATA, [(0, 19), (500, 509), (990, 999)])


async def test_range_exactly_max_ranges_is_honoured(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    spec = ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(100))  # settings.max_ranges = 100
    response = await fetch(client, meta["uid"], f"bytes={spec}")
    assert_parts(response, DATA, [(i * 10, i * 10 + 1) for i in range(100)])


async def test_range_more_than_max_ranges_gives_full_200(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    spec = ",".join(f"{i * 9}-{i * 9 + 1}" for i in range(101))
    assert_full(await fetch(client, meta["uid"], f"bytes={spec}"), DATA)


async def test_range_more_than_configured_max_ranges_gives_full_200(
    make_settings: Callable[..., Settings],
) -> None:
    async with client_for(make_settings(max_ranges=2)) as client:
        meta = await upload(client)
        assert_parts(await fetch(client, meta["uid"], "bytes=0-1,10-11"), DATA, [(0, 1), (10, 11)])
        assert_full(await fetch(client, meta["uid"], "bytes=0-1,10-11,20-21"), DATA)


# --- unsatisfiable, malformed, ignored -----------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["bytes=1000-1100", "bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=1000-1000,2000-"],
)
async def test_range_unsatisfiable_gives_416(client: httpx.AsyncClient, header: str) -> None:
    meta = await upload(client)
    response = await fetch(client, meta["uid"], header)
    assert_problem(response, 416)
    assert response.headers["content-range"] == f"bytes */{SIZE}"


async def test_range_unsatisfiable_on_head_gives_416(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    response = await fetch(client, meta["uid"], "bytes=2000-", method="HEAD")
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{SIZE}"


async def test_range_satisfiable_mixed_with_unsatisfiable(client: httpx.AsyncClient) -> None:
    # RFC 9110 §15.5.17: 416 only when *none* of the ranges is satisfiable.
    meta = await upload(client)
    assert_partial(await fetch(client, meta["uid"], "bytes=2000-3000, 10-19"), DATA, 10, 19)
    assert_partial(await fetch(client, meta["uid"], "bytes=10-19,1000-"), DATA, 10, 19)
    response = await fetch(client, meta["uid"], "bytes=0-1,5000-,998-")
    assert_parts(response, DATA, [(0, 1), (998, 999)])


@pytest.mark.parametrize(
    "header", ["bytes=abc", "bytes=5-2", "bytes=", "bytes=-", "bytes=a-b", "bytes=0-5,9-2"]
)
async def test_range_malformed_gives_400(client: httpx.AsyncClient, header: str) -> None:
    meta = await upload(client)
    body = assert_problem(await fetch(client, meta["uid"], header), 400)
    assert body["type"] == "urn:mediasvc:problem:malformed-range"


@pytest.mark.parametrize("header", ["items=0-5", "pages=1-2", "none"])
async def test_range_unknown_unit_is_ignored(client: httpx.AsyncClient, header: str) -> None:
    # RFC 9110 §14.2: a server MUST ignore a Range header with a unit it does not understand.
    meta = await upload(client)
    assert_full(await fetch(client, meta["uid"], header), DATA)


@pytest.mark.parametrize(
    "header", ["bytes=0-0", "bytes=0-99", "bytes=-5", "bytes=10-", "bytes=0-1,3-4"]
)
async def test_range_on_zero_byte_file_gives_200_empty(
    client: httpx.AsyncClient, header: str
) -> None:
    meta = await upload(client, b"", name="empty.bin")
    response = await fetch(client, meta["uid"], header)
    assert_full(response, b"")
    assert response.headers["etag"] == f'"{hashlib.sha256(b"").hexdigest()}"'


# --- HEAD ---------------------------------------------------------------------------------------


async def test_head_with_range_gives_206_headers_without_body(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    response = await fetch(client, meta["uid"], "bytes=0-99", method="HEAD")
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 0-99/{SIZE}"
    assert response.headers["content-length"] == "100"
    assert response.headers["etag"] == f'"{meta["sha256"]}"'
    assert response.content == b""


async def test_head_with_several_ranges_gives_multipart_headers_without_body(
    client: httpx.AsyncClient,
) -> None:
    meta = await upload(client)
    get = await fetch(client, meta["uid"], "bytes=0-9,100-109")
    head = await fetch(client, meta["uid"], "bytes=0-9,100-109", method="HEAD")
    assert head.status_code == 206
    assert MULTIPART_CT.fullmatch(head.headers["content-type"])
    # The boundary is random per response, but its length is fixed: the lengths agree.
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.content == b""


async def test_head_without_range_gives_full_headers_without_body(
    client: httpx.AsyncClient,
) -> None:
    meta = await upload(client)
    response = await fetch(client, meta["uid"], method="HEAD")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(SIZE)
    assert response.content == b""


# --- If-Range -----------------------------------------------------------------------------------


async def test_if_range_matching_etag_gives_206(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    response = await fetch(client, meta["uid"], "bytes=0-99", if_range=f'"{meta["sha256"]}"')
    assert_partial(response, DATA, 0, 99)


async def test_if_range_different_etag_gives_full_200(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    other = hashlib.sha256(b"another version").hexdigest()
    assert_full(await fetch(client, meta["uid"], "bytes=0-99", if_range=f'"{other}"'), DATA)


async def test_if_range_weak_etag_gives_full_200(client: httpx.AsyncClient) -> None:
    # RFC 9110 §13.1.5: If-Range uses the strong comparison; a weak tag never matches.
    meta = await upload(client)
    response = await fetch(client, meta["uid"], "bytes=0-99", if_range=f'W/"{meta["sha256"]}"')
    assert_full(response, DATA)


async def test_if_range_last_modified_date_gives_206(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    last_modified = (await fetch(client, meta["uid"], method="HEAD")).headers["last-modified"]
    response = await fetch(client, meta["uid"], "bytes=-10", if_range=last_modified)
    assert_partial(response, DATA, SIZE - 10, SIZE - 1)


async def test_if_range_other_date_gives_full_200(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    response = await fetch(
        client, meta["uid"], "bytes=-10", if_range="Sun, 06 Nov 1994 08:49:37 GMT"
    )
    assert_full(response, DATA)


async def test_if_range_mismatch_sends_full_file_even_for_unsatisfiable_range(
    client: httpx.AsyncClient,
) -> None:
    # If-Range false: the Range header is ignored altogether, so no 416 either.
    meta = await upload(client)
    assert_full(await fetch(client, meta["uid"], "bytes=5000-", if_range='"stale"'), DATA)


async def test_if_range_matching_etag_with_several_ranges(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    response = await fetch(client, meta["uid"], "bytes=0-0,-1", if_range=f'"{meta["sha256"]}"')
    assert_parts(response, DATA, [(0, 0), (999, 999)])


async def test_if_range_without_range_is_ignored(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    assert_full(await fetch(client, meta["uid"], if_range=f'"{meta["sha256"]}"'), DATA)
