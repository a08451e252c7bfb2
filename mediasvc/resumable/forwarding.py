"""Forwarding a request for an upload to the node that holds its bytes.

An unfinished upload's bytes are a file on the node that created it, which alone may write them
(one writer per upload: resumable/writers.py locks a local file). Behind a load balancer a
request for the upload may reach any node; that node passes it on, whole and streaming, to the
owner's internal URL recorded in the row (``uploads.node_url``, from ``MEDIASVC_INTERNAL_URL``),
and passes the owner's response back. Nothing is buffered: each body piece the client sends goes
on before the next is read (httpx streams both ways), so memory stays constant whatever the size.

If the owner cannot be reached, the answer is 503 with ``Retry-After``: never an offset from the
row alone, which may lag what the owner holds, and never a write here, which would fork the
upload. The request carries this node's URL and the client's address, signed with the nodes'
shared secret (resumable/node_signature.py): the owner never forwards it again and counts the
client, not this node, against its per-client upload cap.

Interim responses (a 104 of the owner) are not passed on: httpx does not expose them; they are
hints, and the client already knows the upload's URL when it talks to the upload.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send

from mediasvc.errors import UploadOwnerUnavailable
from mediasvc.resumable import node_signature

# Hop-by-hop fields (RFC 9110 7.6.1) and those httpx sets itself.
_NOT_FORWARDED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)


class Forwarder:
    def __init__(
        self, own_url: str, secret: bytes, *, connect_timeout_s: float, retry_after_s: int
    ) -> None:
        self.own_url = own_url
        self._secret = secret
        self._retry_after_s = retry_after_s
        # Bodies take as long as they take; only reaching the owner is bounded.
        timeout = httpx.Timeout(connect_timeout_s, read=None, write=None, pool=None)
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def close(self) -> None:
        await self._client.aclose()

    async def forward(self, owner_url: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the request to ``owner_url`` and its response back to the client; 503
        (``UploadOwnerUnavailable``) if the owner cannot be reached or breaks off before its
        response began."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        target = node_signature.target(raw_path, scope.get("query_string", b""))
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name not in _NOT_FORWARDED and name not in node_signature.FIELDS
        ]
        has_body = any(
            (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding"
            for name, value in scope["headers"]
        )
        request = self._client.build_request(
            scope["method"],
            owner_url + target,
            headers=headers,
            content=_body(receive) if has_body else None,
        )
        client = scope.get("client")
        for name, value in node_signature.sign(
            self._secret,
            method=scope["method"],
            target=target,
            by=self.own_url,
            to=owner_url,
            client=client[0] if client else None,
            now=time.time(),
        ):
            request.headers[name] = value
        try:
            response = await self._client.send(request, stream=True)
        except ClientDisconnect:
            return  # the client left: the owner saw its request end there (what came is kept)
        except httpx.TransportError as exc:
            raise UploadOwnerUnavailable(
                f"the node that holds this upload ({owner_url}) does not answer "
                f"({type(exc).__name__}); try again shortly",
                retry_after_s=self._retry_after_s,
            ) from exc
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (name, value)
                        for name, value in response.headers.raw
                        if name.lower() not in _NOT_FORWARDED
                    ],
                }
            )
            async for piece in response.aiter_raw():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        if body := message.get("body", b""):
            yield body
        if not message.get("more_body", False):
            return
