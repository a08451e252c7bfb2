"""Preconditions of RFC 9110 §13.2.2, in the order the RFC gives.

``If-Match``, ``If-Unmodified-Since``, ``If-None-Match`` and ``If-Modified-Since`` are evaluated
here (``delivery.serve`` runs this before any source is opened); ``If-Range`` goes with the
ranges (``delivery.ranges``).
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
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
    elif (since := _http_date(headers.get("if-unmodified-since"))) is not None and (
        last_modified > since
    ):
        raise PreconditionFailed("the file was modified after If-Unmodified-Since")

    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if _matches(if_none_match, etag, weak=True):
            if method in ("GET", "HEAD"):
                return Outcome.NOT_MODIFIED
            raise PreconditionFailed("If-None-Match matches the file's ETag")
    elif (
        method in ("GET", "HEAD")
        and (since := _http_date(headers.get("if-modified-since"))) is not None
        and last_modified <= since
    ):
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


# RFC 9110 §5.6.7: the three HTTP-date forms, nothing else (IMF-fixdate, rfc850-date, asctime).
_HTTP_DATE = re.compile(
    r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT"
    r"|[A-Z][a-z]{5,8}, \d{2}-[A-Z][a-z]{2}-\d{2} \d{2}:\d{2}:\d{2} GMT"
    r"|[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \d{4}"
)


def _http_date(value: str | None) -> datetime | None:
    """An HTTP-date, or None if absent or invalid (RFC 9110: an invalid date is ignored)."""
    # Match the grammar first: email's lenient parser read a list of two dates as one (RFC 9110
    # §13.1.3: more than one member MUST be ignored) and raised OverflowError, uncaught, on
    # huge numbers ("Sun, 06 Nov 99999999999999999999 …" was a 500). The fixed digit counts
    # here keep every field small.
    if not value or not _HTTP_DATE.fullmatch(value.strip()):
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # asctime() dates ("Sun Nov  6 08:49:37 1994") carry no zone and parse naive, yet RFC 9110
    # §5.6.7 says a recipient MUST accept them and every HTTP-date is GMT: read naive as UTC.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
