"""The nginx edge of deploy/nginx for tests: Debian's nginx on loopback, in front of a real
`mediasvc serve`, configured from the same template as the docker-compose service (rendered as
the nginx image's envsubst does: only the names given are replaced)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi import FastAPI

from mediasvc.db.migrations import upgrade
from tests.conftest import PROJECT_ROOT, free_port, launch_server, stop_process, wait_healthy

DEPLOY = PROJECT_ROOT / "deploy" / "nginx"
ACCEL_PREFIX = "/_mediasvc_files/"


def _deploy_renderer() -> ModuleType:
    """deploy/nginx/render.py, which is no package of ours: loaded from its path."""
    spec = importlib.util.spec_from_file_location("nginx_render", DEPLOY / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("nginx is missing: apt-get install nginx (make test does)")


class Edge:
    """A running nginx edge: its URL, and its process to stop."""

    def __init__(self, process: subprocess.Popen[bytes], base_url: str) -> None:
        self.process = process
        self.base_url = base_url

    def stop(self) -> None:
        stop_process(self.process)


def start_edge(prefix: Path, *, upstream: str, media_root: Path) -> Edge:
    """nginx with deploy/nginx's template in front of ``upstream`` (host:port), reading
    ``media_root`` for offloaded downloads."""
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    _deploy_renderer().render(
        prefix,
        upstream=upstream,
        listen=f"127.0.0.1:{port}",
        media_root=media_root,
        accel_prefix=ACCEL_PREFIX,
    )
    with (prefix / "stderr.log").open("wb") as log:
        process = subprocess.Popen(
            [nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    wait_healthy(process, base_url, prefix / "stderr.log")  # the API's answer, through nginx
    return Edge(process, base_url)


@dataclass(frozen=True)
class EdgeStack:
    base_url: str  # the edge's
    api_url: str  # the API's own
    media_root: Path  # the API's


@contextlib.contextmanager
def offloading_edge(root: Path) -> Iterator[EdgeStack]:
    """A `mediasvc serve` that offloads to nginx, on its own SQLite database, with the test
    settings' chunk sizes, behind the edge."""
    database_url = f"sqlite+aiosqlite:///{root}/db.sqlite"
    with ThreadPoolExecutor(1) as pool:  # its own loop: the fixture may be asked for in ours
        pool.submit(upgrade, database_url).result()
    media_root = root / "media"
    server = launch_server(
        {
            "MEDIASVC_DATABASE_URL": database_url,
            "MEDIASVC_MEDIA_ROOT": str(media_root),
            "MEDIASVC_CLOUD_ROOT": str(root / "bucket"),
            "MEDIASVC_IO_CHUNK_SIZE_BYTES": str(64 * 1024),
            "MEDIASVC_DOWNLOAD_CHUNK_SIZE_BYTES": str(64 * 1024),
            "MEDIASVC_ACCEL_REDIRECT_PREFIX": ACCEL_PREFIX,
        },
        root,
    )
    try:
        edge = start_edge(
            root / "nginx", upstream=server.base_url.removeprefix("http://"), media_root=media_root
        )
        try:
            yield EdgeStack(edge.base_url, server.base_url, media_root)
        finally:
            edge.stop()
    finally:
        stop_process(server.process)


@contextlib.asynccontextmanager
async def direct_or_edge(
    request: pytest.FixtureRequest, app: FastAPI
) -> AsyncIterator[httpx.AsyncClient]:
    """For a ``client`` fixture with params ``["direct", "edge"]``: a client of ``app`` itself
    (in-process), or of the nginx edge in front of a real server (the module's ``edge_url``).
    A module whose ``client`` is that runs each of its cases both ways, expecting the same."""
    if request.param == "direct":
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http
    else:
        async with httpx.AsyncClient(base_url=request.getfixturevalue("edge_url")) as http:
            yield http
