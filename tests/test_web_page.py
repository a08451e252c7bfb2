"""The web page's serving, in process (the browser test, tests/test_browser.py, drives it)."""

from __future__ import annotations

import json
import re
import tomllib

import httpx

from mediasvc.web import STATIC_DIR
from tests.conftest import PROJECT_ROOT


async def test_root_serves_the_page_with_a_strict_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "media-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    assert (await client.head("/")).status_code == 200
    # The page is not part of the API's schema.
    assert "/" not in (await client.get("/openapi.json")).json()["paths"]


async def test_every_asset_the_page_names_is_served(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert {"/static/app.js", "/static/style.css"} <= set(assets)
    for asset in assets:
        response = await client.get(asset)
        assert response.status_code == 200, asset
        assert response.headers["x-content-type-options"] == "nosniff"
        etag = response.headers["etag"]
        assert (await client.get(asset, headers={"If-None-Match": etag})).status_code == 304
    assert "javascript" in (await client.get("/static/app.js")).headers["content-type"]


async def test_nothing_outside_the_static_folder(client: httpx.AsyncClient) -> None:
    for path in ("/static/../__init__.py", "/static/%2e%2e/__init__.py", "/static/nope.js"):
        assert (await client.get(path)).status_code == 404, path


def test_the_wheel_carries_the_static_files() -> None:
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["mediasvc.web"]
    files = [path for path in STATIC_DIR.rglob("*") if path.is_file()]
    assert files
    for path in files:
        relative = path.relative_to(STATIC_DIR.parent)
        assert any(relative.match(pattern) for pattern in patterns), relative


def test_the_vendored_files_are_the_listed_ones_at_pinned_versions() -> None:
    """static/vendor holds exactly what web-vendor/files.txt names (make vendor-web copies
    them), from packages pinned to one exact version that the lock file agrees with."""
    vendor_dir = PROJECT_ROOT / "web-vendor"
    listed = {
        line.split()[1]
        for line in (vendor_dir / "files.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    vendored = {
        path.relative_to(STATIC_DIR / "vendor").as_posix()
        for path in (STATIC_DIR / "vendor").rglob("*")
        if path.is_file()
    }
    assert vendored == listed
    assert any(name.endswith("LICENSE") for name in vendored)
    wanted = json.loads((vendor_dir / "package.json").read_text())["dependencies"]
    locked = json.loads((vendor_dir / "package-lock.json").read_text())["packages"]
    for name, version in wanted.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), (name, version)  # exact, no range
        assert locked[f"node_modules/{name}"]["version"] == version


async def test_the_page_loads_tus_js_client_before_its_script(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert scripts == ["/static/vendor/tus-js-client/tus.min.js", "/static/app.js"]
    assert "<script>" not in page  # nothing inline: the policy forbids it
