"""A plain upload's body, read only while its client is there to get the answer.

Starlette's ``request.stream()`` ends at the body's last byte, whenever that arrived. Our uvicorn
protocol also hands over the bytes it had received before the client's connection was lost,
marked ``DISCONNECTED_KEY`` (mediasvc/server/__init__.py): a body whose last byte came that way is
whole, but its client never reads the 201 with the file's one-time delete token. Stored, it is a
file nobody knows of, and the client's retry a duplicate. So to a plain upload such a body is cut,
like one whose client left before its end: ``ClientDisconnect``, and the ingest keeps nothing.
A resumable upload reads ``request.stream()`` instead: what arrived counts, whoever waits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request

from mediasvc.server import DISCONNECTED_KEY


async def plain_body(request: Request) -> AsyncIterator[bytes]:
    """The body's chunks, as ``request.stream()``; ``ClientDisconnect`` once the client is gone,
    also at bytes it sent before it went."""
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request" or message.get(DISCONNECTED_KEY):
            raise ClientDisconnect
        if body := message.get("body", b""):
            yield body
        if not message.get("more_body", False):
            return
