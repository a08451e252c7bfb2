"""What the HTTP server needs from us beyond the ASGI app (see ``uvicorn_protocol``)."""
