"""Listing, metadata, deletion, health, and the framework's own errors as problem+json."""

from __future__ import annotations

import errno
import logging
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from mediasvc.app import create_app
from mediasvc.config import Settings
from mediasvc.jobs.cleanup import cleanup
from tests.conftest import REDIS_URL, leftovers
from tests.helpers import DEAD_REDIS_URL


async def upload(client: httpx.AsyncClient, body: bytes, name: str = "f.bin") -> dict[str, object]:
    response = await client.post("/api/v1/files/stream", content=body, headers={"X-Filename": name})
    assert response.status_code == 201, response.text
    meta: dict[str, object] = response.json()
    return meta


async def test_list_is_newest_first_and_pages_with_a_cursor(client: httpx.AsyncClient) -> None:
    uids = [(await upload(client, f"file {i}".encode()))["uid"] for i in range(7)]
    seen: list[object] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/files", params=params)).json()
        pages += 1
        seen += [item["uid"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(uids))
    assert pages == 3


async def test_list_default_limit_and_bounds(client: httpx.AsyncClient) -> None:
    await upload(client, b"x")
    page = (await client.get("/api/v1/files")).json()
    assert len(page["items"]) == 1 and page["next_cursor"] is None
    for bad in ("0", "1001", "ten"):
        response = await client.get("/api/v1/files", params={"limit": bad})
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"


async def test_list_rejects_a_forged_cursor(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/files", params={"cursor": "not-a-cursor"})
    assert response.status_code == 422
    assert response.json()["type"] == "urn:mediasvc:problem:invalid-input"


async def test_list_hides_deleted_files(client: httpx.AsyncClient) -> None:
    kept = await upload(client, b"kept")
    gone = await upload(client, b"gone")
    deleted = await client.delete(
        f"/api/v1/files/{gone['uid']}", headers={"X-Delete-Token": str(gone["delete_token"])}
    )
    assert deleted.status_code == 204
    items = (await client.get("/api/v1/files")).json()["items"]
    assert [item["uid"] for item in items] == [kept["uid"]]
    assert "delete_token" not in items[0]


async def test_metadata_matches_the_upload_response(client: httpx.AsyncClient) -> None:
    meta = await upload(client, b"hello", "Hello.TXT")
    response = await client.get(f"/api/v1/files/{meta['uid']}/metadata")
    assert response.status_code == 200
    body = response.json()
    # The background jobs (cloud push, probe) may have moved these on since the 201.
    moving = {"delete_token", "cloud_status", "cloud_path", "probe_status", "probe_error", "media"}
    assert {k: v for k, v in body.items() if k not in moving} == {
        k: v for k, v in meta.items() if k not in moving
    }
    assert body["extension"] == "txt" and body["format"] == "text/plain"


async def test_delete_needs_the_right_token_and_removes_the_bytes(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    meta = await upload(client, b"secret")
    url = f"/api/v1/files/{meta['uid']}"
    assert (await client.delete(url)).status_code == 403
    assert (await client.delete(url, headers={"X-Delete-Token": "wrong"})).status_code == 403
    assert (await client.get(url)).status_code == 200
    token = {"X-Delete-Token": str(meta["delete_token"])}
    assert (await client.delete(url, headers=token)).status_code == 204
    assert leftovers(settings.media_root) == []
    for response in (
        await client.get(url),
        await client.head(url),
        await client.get(f"{url}/metadata"),
        await client.delete(url, headers=token),
    ):
        assert response.status_code == 410


async def test_unknown_route_and_method_are_problem_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["status"] == 404
    wrong_method = await client.patch("/api/v1/files")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["content-type"] == "application/problem+json"
    assert "allow" in wrong_method.headers


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "storage": "ok", "disk": "ok", "ffmpeg": "ok"},
    }


async def test_readiness_reports_missing_ffmpeg_without_failing(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    # Uploads and downloads work without ffmpeg: the node stays in rotation (200), but says so.
    settings = make_settings(ffprobe_path="/nonexistent/ffprobe", ffmpeg_path="/nonexistent/ffmpeg")
    app = create_app(settings)
    with caplog.at_level(logging.WARNING, logger="mediasvc.app"):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                ready = await client.get("/readyz")
    # Warned once at start, in plain words.
    started = [r.getMessage() for r in caplog.records if r.name == "mediasvc.app"]
    assert len(started) == 1 and "/nonexistent/ffprobe, /nonexistent/ffmpeg not found" in started[0]
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "degraded"
    assert body["checks"] == {"database": "ok", "storage": "ok", "disk": "ok", "ffmpeg": "missing"}
    assert "probe_status 'skipped'" in body["warnings"][0]


async def test_readiness_reports_a_dead_database(
    make_settings: Callable[..., Settings], app: FastAPI
) -> None:
    # Point the running app's engine at a port where nothing listens: a real connection failure.
    from mediasvc.db.session import Database

    services = app.state.services
    await services.db.dispose()
    services.db = Database("postgresql+asyncpg://postgres@127.0.0.1:9/none")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "unavailable"
        listing = await client.get("/api/v1/files")
        assert listing.status_code == 503
        assert listing.headers["content-type"] == "application/problem+json"
    await services.db.dispose()


async def _readiness(settings: Settings) -> httpx.Response:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/healthz")).status_code == 200  # alive all the same
            return await client.get("/readyz")


def _assert_not_ready(response: httpx.Response, failed: str, value: str) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == 503
    assert body["failed"] == [failed]
    assert body["checks"][failed] == value
    assert f"{failed} {value}" in body["detail"]
    assert all(v == "ok" for k, v in body["checks"].items() if k != failed), body
    return body


async def test_readiness_checks_redis_when_jobs_go_through_it(
    make_settings: Callable[..., Settings],
) -> None:
    ready = await _readiness(make_settings(redis_url=REDIS_URL))
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "database": "ok",
        "redis": "ok",
        "storage": "ok",
        "disk": "ok",
        "ffmpeg": "ok",
    }


async def test_readiness_reports_an_unreachable_redis(
    make_settings: Callable[..., Settings],
) -> None:
    # Nothing listens on port 9 (discard): the connection is refused.
    _assert_not_ready(
        await _readiness(make_settings(redis_url=DEAD_REDIS_URL)), "redis", "unavailable"
    )


async def test_readiness_reports_a_redis_that_never_answers(
    make_settings: Callable[..., Settings],
) -> None:
    # A socket that is listened on but never accepted: the TCP connect succeeds, PING hangs.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        response = await _readiness(make_settings(redis_url=f"redis://127.0.0.1:{port}/0"))
    _assert_not_ready(response, "redis", "unavailable")


async def test_readiness_reports_a_full_disk(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # More headroom asked for than the media disk has: every upload would be 507.
    free_bytes = shutil.disk_usage(tmp_path).free
    settings = make_settings(min_free_disk_bytes=free_bytes + 2**40)
    body = _assert_not_ready(await _readiness(settings), "disk", "full")
    assert "bytes free" in body["detail"]
    # With no headroom asked for, the same disk is ready.
    roomy = make_settings(min_free_disk_bytes=0)
    assert (await _readiness(roomy)).json()["checks"]["disk"] == "ok"


async def test_openapi_describes_raw_bodies_as_octet_stream(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    raw = schema["paths"]["/api/v1/files/stream"]["post"]
    assert "application/octet-stream" in raw["requestBody"]["content"]
    headers = {p["name"] for p in raw["parameters"] if p["in"] == "header"}
    assert {"X-Filename", "X-Checksum-Sha256", "Repr-Digest"} <= headers
    multipart = schema["paths"]["/api/v1/files"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in multipart


async def test_a_delete_whose_purge_fails_is_still_204_and_cleanup_finishes_it(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tombstone is committed before the bytes go: a disk error while removing them must not
    # turn a done DELETE into a 500 (a retry would then get 410 for a delete it was told failed).
    # The disk error is made at our own store's interface: no filesystem here refuses an unlink.
    meta = await upload(client, b"bytes that stay until the cleanup")
    url = f"/api/v1/files/{meta['uid']}"
    store = app.state.services.jobs.store

    def failing_remove(uid: str) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(store, "remove", failing_remove)
        deleted = await client.delete(url, headers={"X-Delete-Token": str(meta["delete_token"])})
    assert deleted.status_code == 204, deleted.text
    assert (await client.get(url)).status_code == 410
    assert leftovers(settings.media_root) != []  # the bytes are still there, for now
    await cleanup(app.state.services.jobs)
    assert leftovers(settings.media_root) == []
