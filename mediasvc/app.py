"""``create_app(settings)``: routers, error handlers, lifespan. Nothing happens at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

import mediasvc
from mediasvc.api import (
    docs,
    events,
    files,
    health,
    ietf,
    ietf_openapi,
    ietf_uploads,
    imports,
    metrics,
    previews,
    problems,
    processing,
    tus,
    uploads,
)
from mediasvc.api.caching import JsonCacheControlMiddleware
from mediasvc.api.forwarding import UploadForwardingMiddleware
from mediasvc.api.limits import HeaderLimitMiddleware
from mediasvc.api.tus import TusMiddleware
from mediasvc.config import Settings
from mediasvc.db.migrations import check_current
from mediasvc.media.tools import missing_tools_warning
from mediasvc.memory import trim_every
from mediasvc.observability import Metrics, ObservabilityMiddleware
from mediasvc.services import Services
from mediasvc.web import install as install_web_page

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings)
        try:
            await anyio.to_thread.run_sync(services.store.prepare)
            await check_current(services.db, settings.database_url)
            await services.queue.start()
            if warning := missing_tools_warning(services.jobs.media):
                logger.warning("%s", warning)
            services.uploads.observer = app.state.metrics
            app.state.services = services
            # Plain tasks, not a task group: a lifespan may be entered and left in two tasks.
            background = [
                asyncio.create_task(services.access_log.run(settings.access_time_flush_s))
            ]
            if settings.malloc_trim_every_s > 0:
                background.append(asyncio.create_task(trim_every(settings.malloc_trim_every_s)))
            try:
                yield
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
        finally:
            await services.close()

    app = FastAPI(
        title="mediasvc",
        version=mediasvc.__version__,
        summary="Media ingest and delivery: streaming uploads, Range downloads, cloud copies.",
        lifespan=lifespan,
        docs_url=None,  # api/docs.py serves /docs from local assets
        redoc_url=None,
        # A trailing-slash miss gets a 307 that says where to go (api/misroutes.py), not a bare one.
        redirect_slashes=False,
    )
    problems.install(app)
    app.state.metrics = Metrics()
    # Innermost: a request for an upload another node holds goes there as it came.
    app.add_middleware(UploadForwardingMiddleware)
    app.add_middleware(HeaderLimitMiddleware, max_header_bytes=settings.max_header_bytes)
    # Outside the header limit, so its 431 says what a cache may do too (api/caching.py).
    app.add_middleware(
        JsonCacheControlMiddleware, schema_paths=frozenset({app.openapi_url or "/openapi.json"})
    )
    # Outermost, so every response (a 431 included) carries X-Request-ID and is logged.
    app.add_middleware(TusMiddleware)  # Tus-Resumable on every answer, X-HTTP-Method-Override
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "PUT", *tus.METHODS],
            allow_headers=[*tus.REQUEST_HEADERS, *ietf.REQUEST_HEADERS],
            expose_headers=[*tus.EXPOSED_HEADERS, *ietf.EXPOSED_HEADERS],
            max_age=86400,
        )
    app.add_middleware(ObservabilityMiddleware, metrics=app.state.metrics)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(uploads.router)
    app.include_router(ietf_uploads.router)  # before tus's: it takes the draft's requests only
    app.include_router(tus.router)
    ietf_openapi.describe(app)  # the draft's operations, merged into tus's in the schema
    app.include_router(imports.router)  # before files: /files/import is not a uid
    app.include_router(files.router)
    app.include_router(previews.router)
    app.include_router(processing.router)
    app.include_router(events.router)
    docs.install(app)
    install_web_page(app)  # `/` and `/static/`: the upload page and player
    return app
