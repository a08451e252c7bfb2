"""Checks ``mediasvc serve`` makes before it starts the server, each failing with one plain line.

Without them a port in use or a schema not yet migrated surfaced as a traceback inside a JSON log
line (the lifespan's) and an exit status of 3; an absent ffmpeg did not surface at all.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from sqlalchemy.exc import SQLAlchemyError

from mediasvc.config import Settings
from mediasvc.db.migrations import DatabaseNotMigrated, check_current
from mediasvc.db.session import Database
from mediasvc.media.tools import missing_tools, missing_tools_warning


class StartupError(Exception):
    """The server cannot start; ``str(exc)`` says what to do, in one line."""


def check_port(host: str, port: int) -> None:
    """Bind the address as uvicorn will (SO_REUSEADDR), then let it go."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {port} on {host} is already in use (another mediasvc?): stop it, "
                    f"or start on another port with --port (`ss -ltnp 'sport = :{port}'` shows "
                    "who has it)"
                ) from exc
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def check_database(settings: Settings) -> None:
    """The schema must be at head: `mediasvc migrate` first."""

    async def check() -> None:
        db = Database(settings.database_url)
        try:
            await check_current(db, settings.database_url)
        finally:
            await db.dispose()

    where = settings.database_url.split("@")[-1]  # never the password
    try:
        asyncio.run(check())
    except DatabaseNotMigrated as exc:
        raise StartupError(str(exc)) from exc
    except (SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise StartupError(
            f"cannot open the database {where}: {reason}; is it running, is "
            "MEDIASVC_DATABASE_URL right, and was `mediasvc migrate` run?"
        ) from exc


def media_tools_warning(settings: Settings) -> str | None:
    missing = missing_tools(settings.ffprobe_path, settings.ffmpeg_path)
    return missing_tools_warning(missing) if missing else None
