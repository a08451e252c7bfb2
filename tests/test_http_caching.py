"""What a cache may do (issue 13): conditionals on previews and the web page, Cache-Control on JSON.

- The preview and the page (``/`` and ``/static/…``) go through the download's response path,
  so ``If-None-Match`` and ``If-Modified-Since`` get a 304 (they used to get the full body), and
  a preview has the same validators whether this node's disk or the cloud serves it.
- Every JSON response says what a cache may do: ``no-store`` (a file's changing state, health,
  credentials, errors); the OpenAPI schema ``no-cache`` (api/caching.py).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from mediasvc.config import Settings
from tests.helpers import probed, started, stopped, upload_file
from tests.mediafiles import MediaFiles

pytestmark = pytest.mark.timeout(120)


async def assert_revalidates(
    client: httpx.AsyncClient, url: str, *, head: bool = True
) -> httpx.Response:
    """200 with validators; 304 (empty, same validators) for either conditional."""
    full = await client.get(url)
    assert full.status_code == 200 and full.content
    etag, last_modified = full.headers["etag"], full.headers["last-modified"]
    for conditional in ({"If-None-Match": etag}, {"If-Modified-Since": last_modified}):
        again = await client.get(url, headers=conditional)
        assert again.status_code == 304, (url, conditional)
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == full.headers["cache-control"]
    changed = await client.get(url, headers={"If-None-Match": '"something-else"'})
    assert changed.status_code == 200 and changed.content == full.content
    if head:
        assert (await client.head(url, headers={"If-None-Match": etag})).status_code == 304
    return full


async def test_the_page_and_its_assets_answer_conditionals(client: httpx.AsyncClient) -> None:
    for url in ("/", "/static/app.js", "/static/style.css", "/static/favicon.svg"):
        full = await assert_revalidates(client, url)
        assert full.headers["cache-control"] == "no-cache"
        assert full.headers["x-content-type-options"] == "nosniff"


async def test_the_page_answers_ranges_like_a_download(client: httpx.AsyncClient) -> None:
    whole = (await client.get("/")).content
    part = await client.get("/", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole[:10]


async def test_the_preview_answers_conditionals_from_disk_and_from_the_cloud(
    make_settings: Callable[..., Settings], media_files: MediaFiles
) -> None:
    settings = make_settings()
    app, client = await started(settings)
    try:
        uid = (await upload_file(client, media_files.photo_jpg))["uid"]
        assert (await probed(client, uid))["preview_url"]
        url = f"/api/v1/files/{uid}/preview"
        local = await assert_revalidates(client, url, head=False)
        assert local.headers["content-type"] == "image/jpeg"
        assert local.headers["cache-control"] == "private, max-age=86400"
        part = await client.get(url, headers={"Range": "bytes=0-1"})
        assert part.status_code == 206 and part.content == local.content[:2]

        app.state.services.store.preview_path_for(uid).unlink()  # now only the cloud has it
        remote = await assert_revalidates(client, url, head=False)
        assert remote.content == local.content
        assert remote.headers["etag"] == local.headers["etag"]
        assert remote.headers["last-modified"] == local.headers["last-modified"]
    finally:
        await stopped(app, client)


async def test_json_responses_say_no_store(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(signing_secret="http-caching-test-secret-of-32-bytes")
    app, client = await started(settings)
    try:
        created = await client.post("/api/v1/files/stream", content=b"hello")
        assert created.status_code == 201
        uid = created.json()["uid"]
        responses = {
            "upload": created,
            "metadata": await client.get(f"/api/v1/files/{uid}/metadata"),
            "listing": await client.get("/api/v1/files"),
            "link": await client.get(f"/api/v1/files/{uid}/link"),
            "healthz": await client.get("/healthz"),
            "readyz": await client.get("/readyz"),
            "404": await client.get("/api/v1/files/" + "0" * 26),
            "422": await client.get("/api/v1/files", params={"limit": 0}),
            "431": await client.get("/healthz", headers={"X-Big": "x" * 70_000}),
            "no route": await client.get("/api/v1/nothing-here"),
        }
        for name, response in responses.items():
            assert response.headers["content-type"].endswith("json"), name
            assert response.headers.get("cache-control") == "no-store", name
        schema = await client.get("/openapi.json")
        assert schema.headers["cache-control"] == "no-cache"
        # Responses with a rule of their own keep it.
        download = await client.get(f"/api/v1/files/{uid}")
        assert download.headers["cache-control"] == "private, max-age=86400"
    finally:
        await stopped(app, client)


async def test_a_file_without_a_preview_is_404_whatever_the_conditionals(
    client: httpx.AsyncClient,
) -> None:
    uid = (await client.post("/api/v1/files/stream", content=b"not a picture")).json()["uid"]
    await probed(client, uid)
    headers = {"If-None-Match": "*", "If-Modified-Since": "Sun, 06 Nov 2094 08:49:37 GMT"}
    response = await client.get(f"/api/v1/files/{uid}/preview", headers=headers)
    assert response.status_code == 404
