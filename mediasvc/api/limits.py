"""Request header limits, as pure ASGI middleware (no BaseHTTPMiddleware around streaming bodies).

A request whose headers add up to more than ``max_header_bytes`` gets 431 before any route runs.
This is the backstop: by the time an ASGI app sees headers the server has read them all, so under
uvicorn ``mediasvc.server.uvicorn_protocol`` refuses an oversized header block as it arrives;
under granian (which stops at its own, larger buffer) this check is the one that applies.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from mediasvc.api.problems import problem_for
from mediasvc.errors import HeadersTooLarge


class HeaderLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_header_bytes: int) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            total = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if total > self.max_header_bytes:
                response = problem_for(
                    HeadersTooLarge(
                        f"the request headers are {total} bytes; at most "
                        f"{self.max_header_bytes} are accepted"
                    )
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
