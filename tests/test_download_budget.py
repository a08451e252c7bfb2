"""Download limits as a byte budget: k × size + min(size // 2, 64 MiB), reserved per GET.

Concurrency and disconnects run through a real uvicorn (``start_server``); the rest through the
ASGI app on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import text

from mediasvc.config import Settings
from mediasvc.db.session import make_engine
from tests.conftest import RunningServer, truncate
from tests.helpers import (
    assert_clean,
    assert_clean_at,
    assert_gone,
    random_bytes,
    upload_data,
)

MiB = 1024 * 1024
SIZE = 1000  # small files: budget = k × 1000 + 500


async def bytes_served(database_url: str, uid: str) -> int:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                text("SELECT bytes_served FROM files WHERE uid = :uid"), {"uid": uid}
            )
            return int(result.scalar_one())
    finally:
        await engine.dispose()


async def downloads(client: httpx.AsyncClient, uid: str) -> int:
    response = await client.get(f"/api/v1/files/{uid}/metadata")
    assert response.status_code == 200, response.text
    return int(response.json()["downloads"])


# --- concurrency through a real uvicorn, on PostgreSQL and SQLite --------------------------------


@pytest.fixture
def served(serve: Callable[..., tuple[RunningServer, str]]) -> tuple[RunningServer, str]:
    """A real `mediasvc serve` on an empty, migrated database, once on each: (server, its URL)."""
    return serve()


@pytest.mark.e2e
async def test_concurrent_full_downloads_give_exactly_k_successes(
    served: tuple[RunningServer, str],
) -> None:
    server, database_url = served
    clients, k = 60, 7
    data = random_bytes(256 * 1024, seed=3)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=120) as http:
        meta = await upload_data(http, data, max_downloads=k)
        url = f"/api/v1/files/{meta['uid']}"
        responses = await asyncio.gather(*(http.get(url) for _ in range(clients)))

        statuses = Counter(response.status_code for response in responses)
        assert statuses == {200: k, 410: clients - k}
        for response in responses:
            if response.status_code == 200:
                assert response.content == data
            else:
                assert_gone(response)
        assert await bytes_served(database_url, meta["uid"]) == k * len(data)
        # The refusals made the row a tombstone.
        assert_gone(await http.get(f"{url}/metadata"))
        assert_gone(await http.head(url))
    await assert_clean_at(
        server.media_root, database_url, {meta["uid"]: "exhausted"}, on_disk={meta["uid"]}
    )


@pytest.mark.e2e
async def test_disconnect_gives_back_unsent_bytes(
    start_server: Callable[..., RunningServer], pg_url: str
) -> None:
    """Read ~1 MiB of a 48 MiB one-download file and hang up: the rest is refunded."""
    await truncate(pg_url)
    server = start_server({"MEDIASVC_DATABASE_URL": pg_url})
    data = random_bytes(48 * MiB, seed=5)
    size = len(data)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
        meta = await upload_data(http, data, max_downloads=1)
        uid = meta["uid"]
        url = f"/api/v1/files/{uid}"

        received = 0
        async with http.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["x-remaining-downloads"] == "0"
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received >= MiB:
                    break
        # Leaving the block closes the half-read connection. Poll until the refund lands.
        deadline = time.monotonic() + 60
        served_now = await bytes_served(pg_url, uid)
        while served_now >= size:
            assert time.monotonic() < deadline, "the unsent bytes were never given back"
            assert await downloads(http, uid) == 1  # metadata stays readable meanwhile
            served_now = await bytes_served(pg_url, uid)
        # What is left counted is what went out before the server saw the hang-up.
        assert received <= served_now < size // 2
        # `downloads` is ceil(bytes_served / size): a partial download still shows as one.
        assert await downloads(http, uid) == 1

        # The one full download is still there ...
        digest = hashlib.sha256()
        async with http.stream("GET", url) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_bytes():
                digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
        # ... and only one.
        assert_gone(await http.get(url))
    await assert_clean_at(server.media_root, pg_url, {uid: "exhausted"}, on_disk={uid})


# --- seeking, ranges and the budget's edge (ASGI app, PostgreSQL) --------------------------------


async def test_player_can_seek_through_a_one_download_file(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    size = 100_000  # budget: 100,000 + 50,000 seek allowance
    data = random_bytes(size)
    meta = await upload_data(client, data, max_downloads=1)
    url = f"/api/v1/files/{meta['uid']}"

    first = await client.get(url, headers={"Range": "bytes=0-"})  # a player's first request
    assert first.status_code == 206
    assert first.content == data
    assert first.headers["x-remaining-downloads"] == "0"
    seeks = [(40_000, 49_999), (90_000, 99_999), (10_000, 29_999), (0, 9_999)]  # 50,000 bytes
    for start, end in seeks:
        response = await client.get(url, headers={"Range": f"bytes={start}-{end}"})
        assert response.status_code == 206, response.text
        assert response.content == data[start : end + 1]
        assert response.headers["x-remaining-downloads"] == "0"
    assert await bytes_served(settings.database_url, meta["uid"]) == 150_000
    # The allowance is used to the byte: one more byte is a 410, and the file is retired.
    assert_gone(await client.get(url, headers={"Range": "bytes=0-0"}))
    assert_gone(await client.get(f"{url}/metadata"))
    await assert_clean_at(
        settings.media_root,
        settings.database_url,
        {meta["uid"]: "exhausted"},
        on_disk={meta["uid"]},
    )


@pytest.mark.parametrize("k", [1, 2, 3])
async def test_k_plus_one_full_downloads_never_fit(
    client: httpx.AsyncClient, settings: Settings, k: int
) -> None:
    data = random_bytes(SIZE)
    meta = await upload_data(client, data, max_downloads=k)
    url = f"/api/v1/files/{meta['uid']}"
    for done in range(1, k + 1):
        response = await client.get(url)
        assert response.status_code == 200
        assert response.content == data
        assert response.headers["x-remaining-downloads"] == str(k - done)
    assert_gone(await client.get(url))
    assert await bytes_served(settings.database_url, meta["uid"]) == k * SIZE
    await assert_clean_at(
        settings.media_root,
        settings.database_url,
        {meta["uid"]: "exhausted"},
        on_disk={meta["uid"]},
    )


async def test_ranges_fail_at_the_point_they_would_exceed_the_budget(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """k = 1, size 1000: budget 1500. Five 300-byte ranges fit exactly; the sixth does not."""
    data = random_bytes(SIZE)
    meta = await upload_data(client, data, max_downloads=1)
    uid = meta["uid"]
    url = f"/api/v1/files/{uid}"
    ranges = [(0, 299), (300, 599), (600, 899), (700, 999), (100, 399)]
    for index, (start, end) in enumerate(ranges, start=1):
        response = await client.get(url, headers={"Range": f"bytes={start}-{end}"})
        assert response.status_code == 206, (index, response.text)
        assert response.content == data[start : end + 1]
        assert await bytes_served(settings.database_url, uid) == 300 * index
    assert await downloads(client, uid) == 2  # ceil(1500 / 1000)
    refused = await client.get(url, headers={"Range": "bytes=0-299"})
    assert_gone(refused)
    assert await bytes_served(settings.database_url, uid) == 1500  # the refusal cost nothing
    assert_gone(await client.get(url, headers={"Range": "bytes=0-0"}))
    await assert_clean_at(
        settings.media_root, settings.database_url, {uid: "exhausted"}, on_disk={uid}
    )


async def test_a_range_that_would_overshoot_is_refused_whole_not_cut(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Before exhaustion, a range larger than what is left is 410 and the file stays live."""
    data = random_bytes(SIZE)
    meta = await upload_data(client, data, max_downloads=2)  # budget 2500
    uid = meta["uid"]
    url = f"/api/v1/files/{uid}"
    assert (await client.get(url, headers={"Range": "bytes=0-899"})).status_code == 206  # 900
    assert (await client.get(url)).status_code == 200  # 1900
    refused = await client.get(url)  # 2900 > 2500
    assert_gone(refused)
    # Not every full download was used (1900 < 2000): still live, 600 bytes left.
    assert await bytes_served(settings.database_url, uid) == 1900
    last = await client.get(url, headers={"Range": "bytes=400-999"})
    assert last.status_code == 206
    assert last.content == data[400:]
    assert last.headers["x-remaining-downloads"] == "0"
    await assert_clean(settings, {uid: None})


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Range": "bytes=0-0,0-0,0-0,0-0"}, id="overlapping-ranges-get-whole-file"),
        pytest.param({"Range": "bytes=0-999,0-999"}, id="ranges-longer-than-file"),
        pytest.param(
            {"Range": ",".join(f"{i}-{i}" for i in range(0, 1000, 3)).join(["bytes=", ""])},
            id="past-max-ranges",
        ),
        pytest.param({"Range": "bytes=0-9", "If-Range": '"stale"'}, id="if-range-mismatch"),
        pytest.param({"Range": "items=0-9"}, id="unknown-unit"),
    ],
)
async def test_headers_that_get_the_whole_file_pay_for_the_whole_file(
    client: httpx.AsyncClient, settings: Settings, headers: dict[str, str]
) -> None:
    data = random_bytes(SIZE)
    meta = await upload_data(client, data, max_downloads=1)
    uid = meta["uid"]
    url = f"/api/v1/files/{uid}"
    response = await client.get(url, headers=headers)
    assert response.status_code == 200
    assert response.content == data
    assert await bytes_served(settings.database_url, uid) == SIZE
    # A second such request would be a second full download: it does not fit.
    assert_gone(await client.get(url, headers=headers))
    await assert_clean_at(
        settings.media_root, settings.database_url, {uid: "exhausted"}, on_disk={uid}
    )


async def test_multiple_ranges_cost_their_bytes(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    data = random_bytes(SIZE)
    meta = await upload_data(client, data, max_downloads=1)
    uid = meta["uid"]
    response = await client.get(f"/api/v1/files/{uid}", headers={"Range": "bytes=0-99,500-599,-50"})
    assert response.status_code == 206
    assert response.headers["content-type"].startswith("multipart/byteranges")
    assert await bytes_served(settings.database_url, uid) == 250
    assert await downloads(client, uid) == 1
    full = await client.get(f"/api/v1/files/{uid}")
    assert full.status_code == 200  # 1250 ≤ 1500
    await assert_clean(settings, {uid: None})


# --- what costs nothing -------------------------------------------------------------------------


async def test_head_304_412_and_416_cost_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    data = random_bytes(SIZE)
    meta = await upload_data(client, data, max_downloads=1)
    uid = meta["uid"]
    url = f"/api/v1/files/{uid}"
    head = await client.head(url)
    assert head.status_code == 200
    assert head.headers["x-remaining-downloads"] == "1"
    etag = head.headers["etag"]
    for _ in range(3):
        assert (await client.head(url)).status_code == 200
        assert (await client.head(url, headers={"Range": "bytes=0-99"})).status_code == 206
        assert (await client.get(url, headers={"If-None-Match": etag})).status_code == 304
        assert (await client.get(url, headers={"If-None-Match": "*"})).status_code == 304
        assert (await client.get(url, headers={"If-Match": '"other"'})).status_code == 412
        assert (await client.get(url, headers={"Range": "bytes=5000-"})).status_code == 416
    assert await bytes_served(settings.database_url, uid) == 0
    assert await downloads(client, uid) == 0

    full = await client.get(url)
    assert full.status_code == 200
    assert full.content == data
    # Once it is spent, revalidating and HEAD still cost nothing and do not retire the file.
    assert (await client.get(url, headers={"If-None-Match": etag})).status_code == 304
    after = await client.head(url)
    assert after.status_code == 200
    assert after.headers["x-remaining-downloads"] == "0"
    assert await bytes_served(settings.database_url, uid) == SIZE
    await assert_clean(settings, {uid: None})


PREFETCH_HEADERS = {
    "sec-purpose": {"Sec-Purpose": "prefetch"},
    "sec-purpose-prerender": {"Sec-Purpose": "prefetch;prerender"},
    "purpose": {"Purpose": "prefetch"},
    "x-moz": {"X-Moz": "prefetch"},
    "purpose-uppercase": {"Purpose": "Prefetch"},
}


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("header", list(PREFETCH_HEADERS))
async def test_prefetch_of_limited_file_is_403_and_costs_nothing(
    client: httpx.AsyncClient, settings: Settings, header: str, method: str
) -> None:
    data = random_bytes(SIZE)
    meta = await upload_data(client, data, max_downloads=1)
    uid = meta["uid"]
    url = f"/api/v1/files/{uid}"
    for extra in ({}, {"Range": "bytes=0-9"}):
        response = await client.request(method, url, headers={**PREFETCH_HEADERS[header], **extra})
        assert response.status_code == 403, response.text
        if method == "GET":
            assert response.headers["content-type"] == "application/problem+json"
    assert await bytes_served(settings.database_url, uid) == 0
    full = await client.get(url)
    assert full.status_code == 200
    assert full.content == data
    await assert_clean(settings, {uid: None})


@pytest.mark.parametrize("header", list(PREFETCH_HEADERS))
async def test_prefetch_of_unlimited_file_is_served(
    client: httpx.AsyncClient, settings: Settings, header: str
) -> None:
    data = random_bytes(SIZE)
    meta = await upload_data(client, data)
    response = await client.get(f"/api/v1/files/{meta['uid']}", headers=PREFETCH_HEADERS[header])
    assert response.status_code == 200
    assert response.content == data
    assert "x-remaining-downloads" not in response.headers
    await assert_clean(settings, {meta["uid"]: None})


# --- headers, tombstones, the downloads counter ---------------------------------------------------


async def test_x_remaining_downloads_values(client: httpx.AsyncClient, settings: Settings) -> None:
    data = random_bytes(SIZE)
    meta = await upload_data(client, data, max_downloads=3)  # budget 3500
    uid = meta["uid"]
    url = f"/api/v1/files/{uid}"
    steps: list[tuple[dict[str, str], int, str]] = [
        ({}, 200, "2"),  # 1000
        ({"Range": "bytes=0-99"}, 206, "1"),  # 1100: a started download counts
        ({}, 200, "0"),  # 2100
        ({}, 200, "0"),  # 3100: the seek allowance carried a partial read
    ]
    assert (await client.head(url)).headers["x-remaining-downloads"] == "3"
    for headers, status, remaining in steps:
        response = await client.get(url, headers=headers)
        assert response.status_code == status
        assert response.headers["x-remaining-downloads"] == remaining
        assert (await client.head(url)).headers["x-remaining-downloads"] == remaining
    assert_gone(await client.get(url))  # 4100 > 3500
    plain = await upload_data(client, random_bytes(10, seed=9))
    assert (
        "x-remaining-downloads" not in (await client.get(f"/api/v1/files/{plain['uid']}")).headers
    )
    await assert_clean_at(
        settings.media_root,
        settings.database_url,
        {uid: "exhausted", plain["uid"]: None},
        on_disk={uid, plain["uid"]},
    )


async def test_exhausted_file_is_a_tombstone(client: httpx.AsyncClient, settings: Settings) -> None:
    data = random_bytes(SIZE)
    meta = await upload_data(client, data, max_downloads=1)
    uid = meta["uid"]
    url = f"/api/v1/files/{uid}"
    assert (await client.get(url)).status_code == 200
    metadata = await client.get(f"{url}/metadata")
    assert metadata.status_code == 200
    assert metadata.json()["downloads"] == 1
    assert metadata.json()["max_downloads"] == 1

    assert_gone(await client.get(url))
    gone = await client.get(f"{url}/metadata")
    assert_gone(gone)
    assert "exhausted" in gone.json()["detail"]
    assert_gone(await client.head(url))
    assert_gone(await client.get(url, headers={"Range": "bytes=0-0"}))  # no more seeking either
    listed = await client.get("/api/v1/files")
    assert uid not in [item["uid"] for item in listed.json()["items"]]
    await assert_clean_at(
        settings.media_root, settings.database_url, {uid: "exhausted"}, on_disk={uid}
    )


async def test_downloads_is_ceil_of_bytes_served_over_size(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    data = random_bytes(SIZE)
    meta = await upload_data(client, data, max_downloads=3)
    uid = meta["uid"]
    url = f"/api/v1/files/{uid}"
    assert await downloads(client, uid) == 0
    for range_header in ("bytes=0-0", "bytes=1-998", "bytes=999-999", "bytes=-1", "bytes=0-"):
        assert (await client.get(url, headers={"Range": range_header})).status_code == 206
        served = await bytes_served(settings.database_url, uid)
        assert await downloads(client, uid) == -(-served // SIZE)
    assert await bytes_served(settings.database_url, uid) == 2001
    assert await downloads(client, uid) == 3
    await assert_clean(settings, {uid: None})


async def test_empty_file_download_limit_holds(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    meta = await upload_data(client, b"", max_downloads=1)
    uid = meta["uid"]
    url = f"/api/v1/files/{uid}"
    first = await client.get(url)
    assert first.status_code == 200
    assert first.content == b""
    assert first.headers["x-remaining-downloads"] == "0"
    assert await downloads(client, uid) == 1
    assert_gone(await client.get(url))
    await assert_clean_at(
        settings.media_root, settings.database_url, {uid: "exhausted"}, on_disk={uid}
    )
