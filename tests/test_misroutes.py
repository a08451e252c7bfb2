"""Requests that miss a route by a method or a trailing slash (api/misroutes.py): every 405 and
307 says, in problem+json, which method and URL to use; the forms people type are accepted."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import PROBLEM_JSON


async def test_post_with_a_name_in_the_path_is_an_upload(client: httpx.AsyncClient) -> None:
    # `curl -X POST -T clip.mp4 URL/api/v1/files/stream/`: curl appends the name to the URL.
    response = await client.post("/api/v1/files/stream/clip%20one.mp4", content=b"some bytes")
    assert response.status_code == 201, response.text
    meta = response.json()
    assert meta["original_name"] == "clip one.mp4" and meta["extension"] == "mp4"
    download = await client.get(f"/api/v1/files/{meta['uid']}")
    assert download.content == b"some bytes"


async def test_a_wrong_method_on_the_upload_path_says_what_to_send(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/v1/files/stream/clip.mp4")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    # Both routes on the path count, not only the first one Starlette found (it said POST).
    assert problem["allow"] == ["POST", "PUT"]
    assert response.headers["allow"] == "POST, PUT"
    assert "use POST or PUT /api/v1/files/stream/clip.mp4" in problem["detail"]
    assert "curl -T FILE http://testserver/api/v1/files/stream/" in problem["detail"]
    assert problem["type"] == "urn:mediasvc:problem:method-not-allowed"


async def test_a_wrong_method_elsewhere_names_the_allowed_ones(client: httpx.AsyncClient) -> None:
    response = await client.post("/healthz")
    assert response.status_code == 405
    problem = response.json()
    assert problem["detail"] == "POST is not allowed on /healthz: use GET /healthz"
    assert "curl" not in problem["detail"]  # the upload hint only where an upload was meant


@pytest.mark.parametrize(
    ("method", "path", "target"),
    [
        ("POST", "/api/v1/files/", "/api/v1/files"),
        ("PUT", "/api/v1/files/stream/", "/api/v1/files/stream"),
        ("GET", "/healthz/", "/healthz"),
    ],
)
async def test_a_trailing_slash_miss_is_a_307_that_says_where(
    client: httpx.AsyncClient, method: str, path: str, target: str
) -> None:
    response = await client.request(method, f"{path}?max_downloads=2", content=b"x")
    assert response.status_code == 307
    assert response.headers["content-type"] == PROBLEM_JSON
    location = f"http://testserver{target}?max_downloads=2"
    assert response.headers["location"] == location
    problem = response.json()
    assert problem["location"] == location
    assert f"send {method} {location}" in problem["detail"]


@pytest.mark.parametrize("method", ["PUT", "POST"])
@pytest.mark.parametrize("path", ["/api/v1/files/stream/", "/api/v1/files/stream/a.txt/"])
async def test_a_form_sent_to_the_raw_upload_path_is_told_where_forms_go(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    # `curl -X PUT -F file=@f URL/api/v1/files/stream/` was a 307 recommending -L, which sent
    # the whole body again only to get a 415 (a form on the raw endpoint).
    response = await client.request(
        method, f"{path}?max_downloads=2", files={"file": ("a.txt", b"hello")}
    )
    assert response.status_code == 415
    assert response.headers["content-type"] == PROBLEM_JSON
    assert "location" not in response.headers
    problem = response.json()
    assert problem["type"] == "urn:mediasvc:problem:unsupported-media-type"
    detail = problem["detail"]
    assert "POST it to http://testserver/api/v1/files" in detail
    assert "curl -F file=@FILE http://testserver/api/v1/files" in detail
    assert "-L" not in detail
    # The same form posted where it is told to go is an upload.
    form = await client.post("/api/v1/files", files={"file": ("a.txt", b"hello")})
    assert form.status_code == 201, form.text


async def test_a_raw_body_on_the_slash_miss_is_still_redirected(
    client: httpx.AsyncClient,
) -> None:
    response = await client.put(
        "/api/v1/files/stream/",
        content=b"--x\r\n",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 307
    assert response.headers["location"] == "http://testserver/api/v1/files/stream"


async def test_a_real_miss_stays_a_404(client: httpx.AsyncClient) -> None:
    for path in ("/api/v1/nothing-here", "/api/v1/nothing-here/", "/static/nope.js"):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == PROBLEM_JSON
