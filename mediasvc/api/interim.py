"""Interim (1xx) responses from the app, where the server can send them.

ASGI has no message for them; our uvicorn protocol offers ``INFORMATIONAL_EXTENSION``
(mediasvc/server/uvicorn_protocol.py) on HTTP/1.1. Elsewhere (granian, in-process tests, HTTP/1.0
clients) nothing is sent, which every protocol using them allows: they are hints.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import Scope

from mediasvc.server import INFORMATIONAL_EXTENSION


def can_send(scope: Scope) -> bool:
    return INFORMATIONAL_EXTENSION in scope.get("extensions", {})


def send_informational(scope: Scope, status: int, headers: Mapping[str, str]) -> bool:
    """Send ``status`` with ``headers`` before the final response; whether it went out."""
    extension = scope.get("extensions", {}).get(INFORMATIONAL_EXTENSION)
    if extension is None:
        return False
    encoded = [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    ]
    sent: bool = extension["send"](status, encoded)
    return sent
