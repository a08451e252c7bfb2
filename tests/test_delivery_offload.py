"""Which downloads the app hands to the nginx edge (X-Accel-Redirect), and what it says then.

Through the ASGI app with ``accel_redirect_prefix`` set: no nginx here (tests/test_edge.py runs
the real one); these pin the decision and the headers nginx builds its answer from.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
import pytest
from starlette.datastructures import Headers

from mediasvc.app import create_app
from mediasvc.config import Settings
from mediasvc.delivery.offload import accel_redirect
from mediasvc.delivery.response import SendConfig, SourceResponse
from mediasvc.delivery.sources import CloudObject
from tests.conftest import truncate
from tests.helpers import parse_byteranges

PREFIX = "/_mediasvc_files/"
DATA = os.urandom(5000)


@pytest.fixture
async def http(
    make_settings: Callable[..., Settings], settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    await truncate(settings.database_url)
    application = create_app(make_settings(accel_redirect_prefix=PREFIX))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def upload(http: httpx.AsyncClient, **params: int) -> str:
    response = await http.post(
        "/api/v1/files/stream",
        content=DATA,
        params=params,
        headers={"X-Filename": "clip.mp4", "Content-Type": "video/mp4"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["uid"])


def assert_handed_over(response: httpx.Response, uid: str) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["x-accel-redirect"] == f"{PREFIX}{uid[:2]}/{uid}"
    assert response.content == b""
    assert response.headers["content-length"] == "0"
    assert "content-range" not in response.headers
    # What nginx builds its answer from: ours, not its own.
    assert response.headers["etag"] == f'"{hashlib.sha256(DATA).hexdigest()}"'
    assert response.headers["content-type"] == "video/mp4"
    for name in ("last-modified", "repr-digest", "content-disposition", "cache-control"):
        assert response.headers[name]
    assert response.headers["content-security-policy"] == "sandbox"
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_whole_unlimited_local_file_is_handed_over(
    http: httpx.AsyncClient, method: str
) -> None:
    uid = await upload(http)
    response = await http.request(method, f"/api/v1/files/{uid}")
    assert_handed_over(response, uid)
    assert "accept-ranges" not in response.headers  # nginx adds its own to a whole file


@pytest.mark.parametrize("header", ["bytes=0-99", "bytes=-10", "bytes=4000-"])
async def test_one_range_is_handed_over_with_accept_ranges(
    http: httpx.AsyncClient, header: str
) -> None:
    uid = await upload(http)
    response = await http.get(f"/api/v1/files/{uid}", headers={"Range": header})
    assert_handed_over(response, uid)
    assert response.headers["accept-ranges"] == "bytes"  # nginx adds none to a 206


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=0-9,20-29"},  # several: nginx doesn't merge or cap them as we do
        {"Range": "bytes=0-9,5-20"},  # overlapping, merged into one by us
        {"Range": "bytes=0-99999999999999999999"},  # nginx: 416, we: clamped
        {"Range": "bytes=9000-9100", "If-Range": '"not-it"'},  # a Range we ignore
        {"If-Match": "*"},  # nginx judges it by its own validators
        {"If-Unmodified-Since": "Tue, 01 Dec 2099 00:00:00 GMT"},
        {"X-Mediasvc-Direct": "1"},  # the edge asks again: the file was gone there
    ],
    ids=repr,
)
async def test_what_nginx_would_answer_differently_is_sent_here(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    uid = await upload(http)
    response = await http.get(f"/api/v1/files/{uid}", headers=headers)
    assert "x-accel-redirect" not in response.headers
    assert response.status_code in (200, 206)
    if response.headers["content-type"].startswith("multipart/"):
        assert parse_byteranges(response)[0].payload == DATA[:10]
    elif response.status_code == 200:
        assert response.content == DATA


async def test_a_limited_file_stays_on_the_app_to_count_its_budget(
    http: httpx.AsyncClient,
) -> None:
    uid = await upload(http, max_downloads=3)
    response = await http.get(f"/api/v1/files/{uid}")
    assert "x-accel-redirect" not in response.headers
    assert response.content == DATA
    assert response.headers["x-remaining-downloads"] == "2"


async def test_a_304_is_still_ours(http: httpx.AsyncClient) -> None:
    uid = await upload(http)
    etag = f'"{hashlib.sha256(DATA).hexdigest()}"'
    response = await http.get(f"/api/v1/files/{uid}", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert "x-accel-redirect" not in response.headers


def test_a_cloud_copy_is_never_handed_over() -> None:
    # A real CloudObject whose store is never called: the decision only asks for a descriptor.
    source = CloudObject(None, "key", size=10, mtime=datetime.now(UTC))  # type: ignore[arg-type]
    config = SendConfig(chunk_size_bytes=4096, part_bytes=4096, max_ranges=100, send_timeout_s=1)
    response = SourceResponse(source, ranges=[], media_type="video/mp4", headers={}, config=config)
    assert accel_redirect(Headers(), response, prefix=PREFIX, relative_path="ab/abc") is None
