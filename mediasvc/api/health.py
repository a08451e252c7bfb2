"""Liveness and readiness."""

from __future__ import annotations

import os

import anyio
from fastapi import APIRouter, Request
from sqlalchemy import text
from starlette.responses import JSONResponse, Response

from mediasvc.errors import DatabaseUnavailable
from mediasvc.services import Services

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database and storage answer")
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
    ready = all(value == "ok" for value in checks.values())
    if ready:
        return JSONResponse({"status": "ready", "checks": checks})
    return JSONResponse(
        {
            "type": "urn:mediasvc:problem:unavailable",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "a dependency is down: "
            + ", ".join(name for name, value in checks.items() if value != "ok"),
            "checks": checks,
        },
        status_code=503,
        media_type="application/problem+json",
    )
