"""The one path from a request to the bytes of a representation, whatever serves them.

Downloads, previews and the web page's assets all come here: the source (so a 304 or 412 is
only ever said of bytes that exist: a missing preview stays a 404), the preconditions (RFC 9110
§13.2.2: 412, or 304), the ranges the request asks for (400/416), then one ``SourceResponse``.
Every answer but the last closes the source again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime

import anyio
from starlette.requests import Request
from starlette.responses import Response

from mediasvc.delivery import conditional
from mediasvc.delivery.ranges import requested_ranges
from mediasvc.delivery.response import SendConfig, SourceResponse, not_modified
from mediasvc.delivery.sources import ByteSource


@dataclass(frozen=True, kw_only=True)
class Representation:
    """What a response says about its bytes, known before they are opened.

    ``etag`` is a strong, quoted ETag; ``last_modified`` an aware UTC time (sent, and compared,
    in whole seconds); ``headers`` the rest (Cache-Control, Content-Disposition, …).
    """

    etag: str
    last_modified: datetime
    media_type: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def header_block(self) -> dict[str, str]:
        return {
            **self.headers,
            "ETag": self.etag,
            "Last-Modified": format_datetime(self.last_modified, usegmt=True),
        }


async def deliver(
    request: Request,
    representation: Representation,
    open_source: Callable[[], Awaitable[ByteSource]],
    config: SendConfig,
) -> Response:
    """A 304, or a ``SourceResponse`` (200/206) over the source ``open_source`` opens.

    Raises whatever ``open_source`` raises, then 412 (``PreconditionFailed``), 400/416 (ranges).
    """
    headers = representation.header_block()
    source = await open_source()
    try:
        outcome = conditional.evaluate(
            request.headers,
            method=request.method,
            etag=representation.etag,
            last_modified=representation.last_modified.replace(microsecond=0),
        )
        if outcome is conditional.Outcome.NOT_MODIFIED:
            await source.aclose()
            return not_modified(headers)
        ranges = requested_ranges(
            request.headers,
            request.method,
            source.size,
            etag=headers["ETag"],
            last_modified=headers["Last-Modified"],
            max_ranges=config.max_ranges,
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await source.aclose()
        raise
    return SourceResponse(
        source,
        ranges=ranges,
        media_type=representation.media_type,
        headers=headers,
        config=config,
    )
