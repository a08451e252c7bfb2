"""Hand a download's bytes to the nginx edge: ``X-Accel-Redirect`` to its internal location.

The app still decides everything about the request (access, signed links, expiry, the
preconditions, which range) and sets every header; nginx then sends the file with sendfile and
its own Range handling (deploy/nginx). Only what nginx answers exactly as we would is handed
over: a local file (the cloud fallback streams through us), a file without a download budget
(the budget counts bytes we send), a request without Range, or with one range we serve. nginx
parses the client's Range header again, so the rest stays with us:
- several ranges (even ones we merge into one, or ignore past ``max_ranges``): nginx neither
  merges overlapping ranges nor caps their number as we do;
- a Range we ignore (an empty file, an If-Range that does not match), and numbers past 18
  digits (nginx answers 416 where we clamp to the file's end);
- ``If-Match`` and ``If-Unmodified-Since``: nginx re-evaluates them against its own validators
  (an ETag of mtime and size, the file's mtime), which are not ours, and would answer 412;
- a request nginx sends back to us because the file was gone when it opened it (a delete or an
  eviction racing the download): ``BYPASS_HEADER``, so we serve it from the cloud copy.
``If-None-Match``/``If-Modified-Since`` were answered here (304) before we hand over; the edge
turns nginx's own evaluation of them off, and replaces its ETag and Last-Modified with ours
before its Range filter evaluates ``If-Range``.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.responses import Response

from mediasvc.delivery.response import SourceResponse

ACCEL_REDIRECT_HEADER = "X-Accel-Redirect"
# Set by the edge when it asks again after the file was gone from its disk.
BYPASS_HEADER = "x-mediasvc-direct"
_JUDGED_BY_NGINX = ("if-match", "if-unmodified-since")
# nginx's own, for what it sends. nginx adds Accept-Ranges to a whole file (ours would be a
# second one) but not to a 206, which keeps ours.
_NOT_OURS_TO_SEND = frozenset({"content-length", "content-range"})
_HUGE_NUMBER = re.compile(r"\d{19}")  # nginx's range parser refuses what overflows its off_t


def accel_redirect(
    request_headers: Headers, response: SourceResponse, *, prefix: str | None, relative_path: str
) -> Response | None:
    """The empty answer that makes the edge send ``response``'s bytes; None to send them here."""
    if prefix is None or response.source.descriptor() is None:
        return None
    if BYPASS_HEADER in request_headers:
        return None
    if any(name in request_headers for name in _JUDGED_BY_NGINX):
        return None
    range_header = request_headers.get("range")
    if range_header is not None and (
        len(response.ranges) != 1 or "," in range_header or _HUGE_NUMBER.search(range_header)
    ):
        return None
    dropped = _NOT_OURS_TO_SEND if response.ranges else _NOT_OURS_TO_SEND | {"accept-ranges"}
    headers = {name: value for name, value in response.headers.items() if name not in dropped}
    headers[ACCEL_REDIRECT_HEADER] = prefix + relative_path
    return Response(status_code=200, headers=headers)
