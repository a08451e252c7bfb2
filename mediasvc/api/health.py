"""Liveness and readiness."""

from __future__ import annotations

import os

import anyio
from fastapi import APIRouter, Request
from sqlalchemy import text
from starlette.responses import JSONResponse, Response

from mediasvc.errors import DatabaseUnavailable
from mediasvc.media.tools import missing_tools_warning
from mediasvc.services import Services

router = APIRouter()

# Reported, but not a reason to take the node out of rotation: without ffmpeg uploads and
# downloads work, only the probe (media facts, previews) is skipped. Status "degraded" says so.
OPTIONAL_CHECKS = frozenset({"ffmpeg"})


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: database, Redis (if configured) and storage answer, the disk has room; "
    "ffprobe and ffmpeg are there (else degraded)",
)
async def readyz(request: Request) -> Response:
    services: Services = request.app.state.services
    checks: dict[str, str] = {"database": await _database(services)}
    if services.settings.redis_url is not None:  # else the jobs run in-process: no Redis
        checks["redis"] = "ok" if await services.queue.ping() else "unavailable"
    checks["storage"] = await _storage(services)
    free_bytes = await _free_bytes(services)
    needed_bytes = services.settings.min_free_disk_bytes
    # Below the headroom every upload is 507: take the node out of the balancer's rotation.
    if free_bytes is None:
        checks["disk"] = "unavailable"
    else:
        checks["disk"] = "ok" if free_bytes >= needed_bytes else "full"
    warning = await anyio.to_thread.run_sync(missing_tools_warning, services.jobs.media)
    checks["ffmpeg"] = "missing" if warning else "ok"
    failed = [
        name for name, value in checks.items() if value != "ok" and name not in OPTIONAL_CHECKS
    ]
    if not failed and warning:
        return JSONResponse({"status": "degraded", "checks": checks, "warnings": [warning]})
    if not failed:
        return JSONResponse({"status": "ready", "checks": checks})
    reasons = [f"{name} {checks[name]}" for name in failed]
    if "disk" in failed and free_bytes is not None:
        reasons[failed.index("disk")] += f" ({free_bytes} bytes free, {needed_bytes} kept free)"
    return JSONResponse(
        {
            "type": "urn:mediasvc:problem:unavailable",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "not ready: " + ", ".join(reasons),
            "checks": checks,
            "failed": failed,
        },
        status_code=503,
        media_type="application/problem+json",
    )


async def _database(services: Services) -> str:
    try:
        async with services.db.session() as session:
            await session.execute(text("SELECT 1"))
    except DatabaseUnavailable:
        return "unavailable"
    return "ok"


async def _storage(services: Services) -> str:
    writable = await anyio.to_thread.run_sync(os.access, services.store.incoming, os.W_OK)
    return "ok" if writable else "unavailable"


async def _free_bytes(services: Services) -> int | None:
    try:
        return await anyio.to_thread.run_sync(services.store.free_bytes)
    except OSError:
        return None  # the media root is gone
