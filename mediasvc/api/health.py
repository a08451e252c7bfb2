"""Liveness and readiness."""

from __future__ import annotations

import os

import anyio
from fastapi import APIRouter, Request
from sqlalchemy import text
from starlette.responses import JSONResponse, Response

from mediasvc.errors import DatabaseUnavailable
from mediasvc.media.tools import missing_tools, missing_tools_warning
from mediasvc.services import Services

router = APIRouter()

# Reported, but not a reason to take the node out of rotation: without ffmpeg uploads and
# downloads work, only the probe (media facts, previews) is skipped. Status "degraded" says so.
OPTIONAL_CHECKS = frozenset({"ffmpeg"})


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz", summary="Readiness: database and storage answer; ffprobe and ffmpeg are there"
)
async def readyz(request: Request) -> Response:
    services: Services = request.app.state.services
    checks: dict[str, str] = {}
    try:
        async with services.db.session() as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except DatabaseUnavailable:
        checks["database"] = "unavailable"
    writable = await anyio.to_thread.run_sync(os.access, services.store.incoming, os.W_OK)
    checks["storage"] = "ok" if writable else "unavailable"
    settings = services.settings
    missing = await anyio.to_thread.run_sync(
        missing_tools, settings.ffprobe_path, settings.ffmpeg_path
    )
    checks["ffmpeg"] = "missing" if missing else "ok"
    ready = all(value == "ok" for name, value in checks.items() if name not in OPTIONAL_CHECKS)
    if ready and missing:
        warning = missing_tools_warning(missing)
        return JSONResponse({"status": "degraded", "checks": checks, "warnings": [warning]})
    if ready:
        return JSONResponse({"status": "ready", "checks": checks})
    return JSONResponse(
        {
            "type": "urn:mediasvc:problem:unavailable",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "a dependency is down: "
            + ", ".join(
                name
                for name, value in checks.items()
                if value != "ok" and name not in OPTIONAL_CHECKS
            ),
            "checks": checks,
        },
        status_code=503,
        media_type="application/problem+json",
    )
