"""What the HTTP server needs from us beyond the ASGI app (see ``uvicorn_protocol``)."""

# An ASGI extension our uvicorn protocol offers in ``scope["extensions"]``: ``{"abort": fn}``,
# where ``fn()`` drops the connection at once (TCP reset), whatever is still buffered for it.
# ASGI has no message for that, and a server's graceful close waits for its write buffer to
# drain: forever, when the client reads nothing (delivery/abort.py).
ABORT_EXTENSION = "mediasvc.connection.abort"

# ASGI's "Zero Copy Send" extension (``http.response.zerocopysend``), which our uvicorn protocol
# offers on plain-TCP connections: its name in ``scope["extensions"]`` and its message type.
ZEROCOPY_EXTENSION = "http.response.zerocopysend"
# An ASGI extension our uvicorn protocol offers to HTTP/1.1 requests in ``scope["extensions"]``:
# ``{"send": fn}``, where ``fn(status, headers)`` writes an informational (1xx) response at once,
# before the final one (the IETF resumable upload draft's 104, with the upload's Location). ASGI
# has no message for it. ``fn`` returns False when it cannot any more (the final response has
# begun, the connection is gone); a server without the extension sends no 1xx (api/interim.py).
INFORMATIONAL_EXTENSION = "mediasvc.http.informational"
