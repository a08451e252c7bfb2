"""What the HTTP server needs from us beyond the ASGI app (see ``uvicorn_protocol``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# An ASGI extension our uvicorn protocol offers in ``scope["extensions"]``: ``{"abort": fn}``,
# where ``fn()`` drops the connection at once (TCP reset), whatever is still buffered for it.
# ASGI has no message for that, and a server's graceful close waits for its write buffer to
# drain: forever, when the client reads nothing (delivery/abort.py).
ABORT_EXTENSION = "mediasvc.connection.abort"

# ASGI's "Zero Copy Send" extension (``http.response.zerocopysend``), which our uvicorn protocol
# offers on plain-TCP connections: its name in ``scope["extensions"]`` and its message type.
ZEROCOPY_EXTENSION = "http.response.zerocopysend"


def zerocopy_descriptor(message: Mapping[str, Any]) -> int:
    """A zero-copy message's file: a descriptor, or an object with ``fileno()``."""
    file = message["file"]
    return file if isinstance(file, int) else int(file.fileno())


# An ASGI extension our uvicorn protocol offers to HTTP/1.1 requests in ``scope["extensions"]``:
# ``{"send": fn}``, where ``fn(status, headers)`` writes an informational (1xx) response at once,
# before the final one (the IETF resumable upload draft's 104, with the upload's Location). ASGI
# has no message for it. ``fn`` returns False when it cannot any more (the final response has
# begun, the connection is gone); a server without the extension sends no 1xx (api/interim.py).
INFORMATIONAL_EXTENSION = "mediasvc.http.informational"
# A key our uvicorn protocol sets, True, in an ``http.request`` message whose body bytes it had
# received before the client's connection was lost and hands over only after (uvicorn would drop
# them: ``KeptReadAhead``); the next message is ``http.disconnect``. Such a message may end the
# body (``more_body`` False), yet nobody reads the answer: an app that keeps what arrived (a
# resumable upload) takes the bytes, one whose answer is the point (a plain upload's 201 with its
# one-time delete token) takes the body as cut (api/plain_body.py). Other servers never set it.
DISCONNECTED_KEY = "mediasvc.disconnected"
