"""Preconditions of RFC 9110 §13.2.2 that Starlette's FileResponse leaves to us.

Starlette answers ``If-Range`` itself; ``If-Match``, ``If-Unmodified-Since``, ``If-None-Match``
and ``If-Modified-Since`` are evaluated here, in the order the RFC gives.
"""

from __future__ import annotations

import enum
from datetime import datetime
from email.utils import parsedate_to_datetime

from starlette.datastructures import Headers

from mediasvc.errors import PreconditionFailed


class Outcome(enum.Enum):
    PROCEED = "proceed"
    NOT_MODIFIED = "not-modified"


def evaluate(headers: Headers, *, method: str, etag: str, last_modified: datetime) -> Outcome:
    """``etag`` is our strong ETag (quoted); ``last_modified`` is whole seconds, aware UTC."""
    if_match = headers.get("if-match")
    if if_match is not None:
        if not _matches(if_match, etag, weak=False):
            raise PreconditionFailed("If-Match does not match the file's ETag")
    elif (since := _http_date(headers.get("if-unmodified-since"))) is not None:
        if last_modified > since:
            raise PreconditionFailed("the file was modified after If-Unmodified-Since")

    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if _matches(if_none_match, etag, weak=True):
            if method in ("GET", "HEAD"):
                return Outcome.NOT_MODIFIED
            raise PreconditionFailed("If-None-Match matches the file's ETag")
    elif method in ("GET", "HEAD"):
        if (since := _http_date(headers.get("if-modified-since"))) is not None:
            if last_modified <= since:
                return Outcome.NOT_MODIFIED
    return Outcome.PROCEED


def _matches(header: str, etag: str, *, weak: bool) -> bool:
    header = header.strip()
    if header == "*":
        return True
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            if not weak:
                continue  # strong comparison: a weak tag never matches
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


def _http_date(value: str | None) -> datetime | None:
    """An HTTP-date, or None if absent or invalid (RFC 9110: an invalid date is ignored)."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else None
