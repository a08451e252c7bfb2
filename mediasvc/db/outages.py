"""Which database errors are an outage (503, retry later) and which are a bug (500).

An outage is a failure to reach or keep a connection, or a database that refuses work for a
while on its own account: a client may retry and succeed without any change on our side. All
else the database says (a constraint violated, SQL it cannot run, a value it rejects, a driver
used wrongly) is a defect in this service and must surface as a 500 with its traceback, not be
disguised as an outage.

Outages, precisely:

- the driver could not connect: ``OSError`` (refused, unreachable, reset) or ``TimeoutError``
  raised from inside asyncpg, aiosqlite or SQLAlchemy (the same exceptions raised by our own
  code, e.g. a file write inside a session, are not the database's);
- SQLAlchemy's pool had no connection free within ``pool_timeout``
  (``sqlalchemy.exc.TimeoutError``) or gave up reconnecting (``DisconnectionError``);
- any ``DBAPIError`` with ``connection_invalidated``: the dialect found the connection gone
  (PostgreSQL terminated the backend, the socket closed mid-statement);
- a ``DBAPIError`` that carries no statement, but an ``IntegrityError``: SQLAlchemy raised it
  while connecting (the server refuses: no such database, authentication, too many clients,
  not accepting connections) or while ending a transaction, where no SQL of ours is at fault
  (the schema has no deferred constraints, and READ COMMITTED has no commit-time conflicts);
- PostgreSQL SQLSTATE classes 08 (connection exception), 53 (insufficient resources: too many
  connections, disk or memory full) and 57P (the server is shutting down or starting up);
- SQLite primary result codes BUSY (the lock was held beyond ``busy_timeout``: "database is
  locked"), IOERR, FULL and CANTOPEN: the file or the disk beneath it, not the statement.

Not outages: IntegrityError, ProgrammingError, DataError, NotSupportedError, PostgreSQL
deadlocks and serialization failures (class 40: our transactions collide), SQLite's other
OperationalErrors ("no such table" is a schema out of step with the code), asyncpg's
InterfaceError on a live connection ("another operation is in progress").
"""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

_DRIVER_MODULES = ("sqlalchemy", "asyncpg", "aiosqlite")
_PG_OUTAGE_CLASSES = ("08", "53", "57P")
_SQLITE_OUTAGE_CODES = frozenset(
    {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN}
)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the database is unreachable or unable to serve for a while."""
    if isinstance(exc, PoolTimeout | DisconnectionError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        if exc.statement is None and not isinstance(exc, IntegrityError):
            return True
        return _outage_code(exc.orig)
    if isinstance(exc, OSError | TimeoutError):
        return _raised_by_driver(exc)
    return False


def _outage_code(orig: BaseException | None) -> bool:
    sqlstate = getattr(orig, "sqlstate", None)  # asyncpg, through SQLAlchemy's adapter
    if isinstance(sqlstate, str):
        return sqlstate.upper().startswith(_PG_OUTAGE_CLASSES)
    if isinstance(orig, sqlite3.Error):
        # Extended result codes carry the primary code in their low byte.
        return (orig.sqlite_errorcode & 0xFF) in _SQLITE_OUTAGE_CODES
    return False


def _raised_by_driver(exc: BaseException) -> bool:
    traceback = exc.__traceback__
    while traceback is not None:
        module = str(traceback.tb_frame.f_globals.get("__name__", ""))
        if module.split(".", 1)[0] in _DRIVER_MODULES:
            return True
        traceback = traceback.tb_next
    return False
