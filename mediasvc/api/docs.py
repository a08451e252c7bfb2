"""The API's documentation page (Swagger UI) at ``/docs``, with no request leaving this server.

FastAPI's own page loads Swagger UI from a CDN, so offline (or behind a strict firewall) it was
blank. The assets come from the ``swagger-ui-bundle-v2`` distribution (Swagger UI 5, which reads
the OpenAPI 3.1 that FastAPI writes), served under ``/docs/assets/``; Swagger UI's online
validator badge is off. ReDoc is not offered: no maintained package ships its assets.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"


def install(app: FastAPI) -> None:
    """Serve ``/docs`` (create the app with ``docs_url=None, redoc_url=None``)."""
    openapi_url = app.openapi_url or "/openapi.json"

    async def swagger_ui(_request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
            oauth2_redirect_url=OAUTH2_REDIRECT_URL,
            swagger_ui_parameters={"validatorUrl": None},  # the badge is fetched from swagger.io
        )

    async def oauth2_redirect(_request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.add_api_route(DOCS_URL, swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        OAUTH2_REDIRECT_URL, oauth2_redirect, methods=["GET"], include_in_schema=False
    )
    app.mount(ASSETS_URL, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
