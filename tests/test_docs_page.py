"""/docs (api/docs.py): Swagger UI from the package's own assets, nothing from another host."""

from __future__ import annotations

import re

import httpx


async def test_docs_page_names_only_local_assets(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    html = response.text
    assert "http://" not in html and "https://" not in html  # no CDN, no validator badge
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/docs/assets/swagger-ui-bundle.js" in assets
    assert "/docs/assets/swagger-ui.css" in assets
    for asset in assets:
        assert asset.startswith("/"), asset
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert served.content, asset
    script = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert "javascript" in script.headers["content-type"]
    assert len(script.content) > 100_000  # the real bundle, not a placeholder
    assert "'/openapi.json'" in html or '"/openapi.json"' in html


async def test_oauth2_redirect_and_no_redoc(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs/oauth2-redirect")).status_code == 200
    # ReDoc loaded its script from a CDN: it is gone rather than blank.
    assert (await client.get("/redoc")).status_code == 404
