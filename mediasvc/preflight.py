"""What `mediasvc serve`, `migrate` and `worker` check first, each failing with one plain line.

Without them a port in use or a schema not yet migrated surfaced as a traceback inside a JSON log
line (the lifespan's) and an exit status of 3; an absent ffmpeg did not surface at all.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from alembic.util import CommandError as AlembicCommandError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from mediasvc.config import Settings
from mediasvc.db.migrations import DatabaseNotMigrated, check_current, upgrade
from mediasvc.db.session import Database

#: Connecting to and asking Redis, each: a Redis that is up answers in milliseconds.
REDIS_TIMEOUT_S = 5.0


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

    with opening_database(settings, then="was `mediasvc migrate` run?"):
        try:
            asyncio.run(check())
        except DatabaseNotMigrated as exc:
            raise StartupError(str(exc)) from exc


def migrate(settings: Settings) -> None:
    """`mediasvc migrate`: a database that cannot be reached or read is one line, too."""
    with opening_database(settings, then="does the database exist?"):
        try:
            upgrade(settings.database_url)
        except AlembicCommandError as exc:  # e.g. a revision this code does not know
            raise StartupError(
                f"cannot migrate {database_where(settings)}: {_first_line(exc)}"
            ) from exc


@contextmanager
def opening_database(settings: Settings, *, then: str) -> Iterator[None]:
    """The driver's and SQLAlchemy's errors on the way to the database, as a StartupError."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        reason = _first_line(getattr(exc, "orig", None) or exc)
        raise StartupError(
            f"cannot open the database {database_where(settings)}: {reason}; is it running, is "
            f"MEDIASVC_DATABASE_URL right, and {then}"
        ) from exc


def database_where(settings: Settings) -> str:
    """The database as it may be shown: never the user or password."""
    return settings.database_url.split("@")[-1]


def _first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0].rstrip(".")


def check_redis(redis_url: str) -> None:
    """One bounded PING before the worker starts: arq retried for seconds, then a traceback."""
    with _reaching_redis(redis_url) as client:
        client.ping()


def worker_health(redis_url: str, *, key: str, interval_s: float) -> str:
    """What a running worker last wrote to its health key; none in ``interval_s``: refused."""
    with _reaching_redis(redis_url) as client:
        value = client.get(key)
    if not value:
        raise StartupError(
            f"no worker has reported to Redis at {_redis_where(redis_url)} in the last "
            f"{interval_s:g} s: is `mediasvc worker` running, with this MEDIASVC_REDIS_URL?"
        )
    return value.decode() if isinstance(value, bytes) else str(value)


@contextmanager
def _reaching_redis(redis_url: str) -> Iterator[redis.Redis]:
    where = _redis_where(redis_url)
    try:
        client = redis.Redis.from_url(
            redis_url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
        )
        with client:
            yield client
    except (RedisError, OSError, ValueError) as exc:
        raise StartupError(
            f"cannot reach Redis at {where}: {_first_line(exc)}; is it running, and is "
            "MEDIASVC_REDIS_URL right?"
        ) from exc


def _redis_where(redis_url: str) -> str:
    return redis_url.split("@")[-1].removeprefix("redis://")  # never the password
