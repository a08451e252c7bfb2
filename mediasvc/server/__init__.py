"""What the HTTP server needs from us beyond the ASGI app (see ``uvicorn_protocol``)."""

# An ASGI extension our uvicorn protocol offers in ``scope["extensions"]``: ``{"abort": fn}``,
# where ``fn()`` drops the connection at once (TCP reset), whatever is still buffered for it.
# ASGI has no message for that, and a server's graceful close waits for its write buffer to
# drain: forever, when the client reads nothing (delivery/abort.py).
ABORT_EXTENSION = "mediasvc.connection.abort"

# ASGI's "Zero Copy Send" extension (``http.response.zerocopysend``), which our uvicorn protocol
# offers on plain-TCP connections: its name in ``scope["extensions"]`` and its message type.
ZEROCOPY_EXTENSION = "http.response.zerocopysend"
