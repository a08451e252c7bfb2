"""Schemathesis against the service's own OpenAPI schema, sent to a real uvicorn process.

Every operation gets generated requests (25 each); every response must be no 5xx and match what
the schema declares: status code, content type, headers, body schema. The schema is a fresh
app's, and the test checks that it is the one the server serves at ``/openapi.json``.

(schemathesis 4.32's ``pytest.from_fixture`` breaks on pytest 9: it sets ``Node._nodeid``, which
pytest 9 no longer has. So the schema is built at import from ``create_app().openapi()``, which
starts nothing, and each case is sent to the server with ``base_url``.)
"""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import text

from mediasvc.app import create_app
from mediasvc.config import Settings
from mediasvc.db.session import make_engine
from tests.conftest import RunningServer, free_port, stop_process, truncate

pytestmark = pytest.mark.e2e

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
OPENAPI = create_app(Settings(_env_file=None)).openapi()  # type: ignore[call-arg]
schema = schemathesis.openapi.from_dict(copy.deepcopy(OPENAPI))  # it edits what it is given
# tus bodies (api/tus.py) and the IETF draft's appends (api/ietf_openapi.py) are raw bytes under
# their own media type.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
schemathesis.serializer.alias("application/partial-upload", "application/octet-stream")


class Outcomes:
    """What the server answered during the module's run: the uploads it kept."""

    def __init__(self) -> None:
        self.created: set[str] = set()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, pg_url: str
) -> Iterator[tuple[RunningServer, Outcomes]]:
    """One `mediasvc serve` (real uvicorn) for the whole module: a start per operation would
    cost more than the fuzzing itself (conftest's `start_server` is per test)."""
    asyncio.run(truncate(pg_url))
    root = tmp_path_factory.mktemp("schema-fuzz")
    port = free_port()
    env = {
        **os.environ,
        "MEDIASVC_DATABASE_URL": pg_url,
        "MEDIASVC_MEDIA_ROOT": str(root / "media"),
        "MEDIASVC_CLOUD_ROOT": str(root / "bucket"),
    }
    env.pop("GLIBC_TUNABLES", None)
    with (root / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mediasvc", "serve", "--port", str(port)],
            env=env,
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = RunningServer(process, f"http://127.0.0.1:{port}", root / "media")
    try:
        deadline = time.monotonic() + 60
        while not _healthy(running):
            assert process.poll() is None, (root / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            time.sleep(0.05)  # a poll interval
        served = httpx.get(f"{running.base_url}/openapi.json").json()
        assert served == OPENAPI  # the schema under test is the one the service publishes
        outcomes = Outcomes()
        yield running, outcomes
    finally:
        stop_process(process)
    # Nothing left behind: no .part file, and a row for each 201 and no other.
    assert sorted(running.media_root.rglob("*.part")) == []
    assert asyncio.run(_uids(pg_url)) == outcomes.created


def _healthy(running: RunningServer) -> bool:
    try:
        return httpx.get(f"{running.base_url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


async def _uids(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            return {row[0] for row in await connection.execute(text("SELECT uid FROM files"))}
    finally:
        await engine.dispose()


# The import's generated URLs would be resolved by the system's DNS, sending queries off this
# machine (tests talk to 127.0.0.0/8 only): tests/test_imports.py covers that operation with
# its own resolver.
@schema.exclude(path="/api/v1/files/import", method="POST").parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_schema(
    case: schemathesis.Case, server: tuple[RunningServer, Outcomes]
) -> None:
    running, outcomes = server
    response = case.call_and_validate(base_url=running.base_url, checks=CHECKS, timeout=30)
    if response.status_code != 201:
        return
    if case.path != "/api/v1/uploads":
        outcomes.created.add(response.json()["uid"])
    elif "content-location" in response.headers:
        # A tus upload complete at once (no bytes, or all of them): a file, and no JSON.
        outcomes.created.add(response.headers["content-location"].rsplit("/", 1)[1])


# --- the raw-body endpoints are described as they are ------------------------------------------


RAW_OPERATIONS = [
    ("post", "/api/v1/files/stream"),
    ("put", "/api/v1/files/stream"),
    ("put", "/api/v1/files/stream/{filename}"),
]


@pytest.mark.parametrize(("method", "path"), RAW_OPERATIONS)
def test_raw_upload_operations_are_described_truthfully(method: str, path: str) -> None:
    operation: dict[str, Any] = OPENAPI["paths"][path][method]
    body = operation["requestBody"]
    assert body["required"] is True
    assert list(body["content"]) == ["application/octet-stream"]
    assert body["content"]["application/octet-stream"]["schema"] == {
        "type": "string",
        "format": "binary",
    }
    params = {(p["in"], p["name"].lower()) for p in operation["parameters"]}
    # Every header and query parameter ingest reads (names.py, checksum.py, uploads.py).
    assert {
        ("header", "x-filename"),
        ("header", "content-disposition"),
        ("header", "x-checksum-sha256"),
        ("header", "repr-digest"),
        ("query", "filename"),
        ("query", "max_downloads"),
        ("query", "expires_in"),
    } <= params
    if "{filename}" in path:
        assert ("path", "filename") in params


# --- real resources: the responses random UIDs never reach ----------------------------------------


def test_responses_about_real_files_conform_too(server: tuple[RunningServer, Outcomes]) -> None:
    running, outcomes = server
    base = running.base_url

    def check(path: str, method: str, status: int, **parts: Any) -> Any:
        case = schema[path][method].Case(**parts)
        response = case.call_and_validate(base_url=base, checks=CHECKS, timeout=30)
        assert response.status_code == status, (method, path, parts, response.text)
        return response

    uploads = [
        ("/api/v1/files/stream", "POST", {"headers": {"X-Filename": "notes.txt"}}, b"plain text"),
        ("/api/v1/files/stream", "PUT", {"query": {"max_downloads": 5}}, b"<svg></svg>"),
        (
            "/api/v1/files/stream/{filename}",
            "PUT",
            {"path_parameters": {"filename": "clip.bin"}, "query": {"expires_in": 3600}},
            bytes(range(256)) * 40,
        ),
    ]
    created = []
    for path, method, parts, body in uploads:
        response = check(
            path, method, 201, body=body, media_type="application/octet-stream", **parts
        )
        created.append(response.json())
        outcomes.created.add(created[-1]["uid"])
    form = check(
        "/api/v1/files",
        "POST",
        201,
        body={"file": b"\x89PNG\r\n\x1a\n" + b"\0" * 64},
        media_type="multipart/form-data",
    )
    outcomes.created.add(form.json()["uid"])

    check("/api/v1/files", "GET", 200, query={"limit": 2})
    download = "/api/v1/files/{uid}"
    for meta in created:
        uid = {"uid": meta["uid"]}
        check(f"{download}/metadata", "GET", 200, path_parameters=uid)
        full = check(download, "GET", 200, path_parameters=uid)
        check(download, "HEAD", 200, path_parameters=uid)
        check(download, "GET", 206, path_parameters=uid, headers={"Range": "bytes=0-3"})
        check(download, "GET", 206, path_parameters=uid, headers={"Range": "bytes=0-0,5-6"})
        check(download, "GET", 416, path_parameters=uid, headers={"Range": "bytes=99999-"})
        check(download, "GET", 400, path_parameters=uid, headers={"Range": "bytes=x"})
        etag = full.headers["etag"][0]  # schemathesis: lower-case names, lists of values
        check(download, "GET", 304, path_parameters=uid, headers={"If-None-Match": etag})
        check(download, "GET", 412, path_parameters=uid, headers={"If-Match": '"nope"'})
    first = created[0]
    check(
        download,
        "DELETE",
        204,
        path_parameters={"uid": first["uid"]},
        headers={"X-Delete-Token": first["delete_token"]},
    )
    check(download, "GET", 410, path_parameters={"uid": first["uid"]})
    check(f"{download}/metadata", "GET", 410, path_parameters={"uid": first["uid"]})
