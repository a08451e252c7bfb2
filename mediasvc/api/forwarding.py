"""Any node answers for any resumable upload (behind a load balancer, without sticky sessions):
a request for ``/api/v1/uploads/{uid}`` whose bytes another node holds is forwarded there,
whichever protocol it speaks (tus or the IETF draft). How, and why nothing else may answer it
here: mediasvc/resumable/forwarding.py.

Only when ``MEDIASVC_INTERNAL_URL`` is set (a node that does not know its own address cannot
tell another's uploads from its own); an upload whose row names no node, or this one, is served
here. OPTIONS and creation (``POST /api/v1/uploads``) concern no existing upload: never forwarded.

A request forwarded to this node is believed only with a valid signature for this node
(resumable/node_signature.py): it is then served here (never forwarded again) as if from the
client it names, whose address the per-client upload cap counts; if the upload's row names
another node (a misroute), it is refused (421 ``misdirected-request``) before the upload is
touched: taking it here would end the owner's running PATCH, and forwarding it on could loop.
One that claims to be forwarded without a valid signature is refused (403
``forwarding-refused``) wherever it goes: a client could otherwise pass for another address or
for a node.
"""

from __future__ import annotations

import re
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from mediasvc.api.problems import problem_for
from mediasvc.errors import MediaServiceError, MisdirectedRequest
from mediasvc.resumable import node_signature, repository
from mediasvc.services import Services

_UPLOAD = re.compile(r"^/api/v1/uploads/([a-z2-7]{26})/?$")


class UploadForwardingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services | None = getattr(scope["app"].state, "services", None)
        if scope["type"] != "http" or services is None:
            await self.app(scope, receive, send)
            return
        try:
            own_url = services.settings.internal_url
            forwarded = node_signature.verify(
                services.settings.internal_key(),
                own_url=own_url,
                method=scope["method"],
                raw_path=scope.get("raw_path") or scope["path"].encode(),
                query=scope.get("query_string", b""),
                headers=scope["headers"],
                now=time.time(),
            )
            match = _UPLOAD.match(scope["path"])
            if forwarded is not None:
                if match is not None:
                    owner = await _owner(services, match.group(1))
                    if owner is not None and owner != own_url:
                        raise MisdirectedRequest(
                            f"{forwarded.by} forwarded this request here, but the upload is "
                            f"held by another node ({owner})"
                        )
                # The sending node saw the client; this node only sees that node.
                client = (forwarded.client, 0) if forwarded.client else None
                await self.app({**scope, "client": client}, receive, send)
                return
            forwarder = services.forwarder
            if match is None or forwarder is None or scope["method"] == "OPTIONS":
                await self.app(scope, receive, send)
                return
            owner = await _owner(services, match.group(1))
            if owner is None or owner == forwarder.own_url:
                await self.app(scope, receive, send)
                return
            await forwarder.forward(owner, scope, receive, send)
        except MediaServiceError as exc:  # outside the app's handlers: answer it here
            await problem_for(exc)(scope, receive, send)


async def _owner(services: Services, uid: str) -> str | None:
    async with services.db.session() as session:
        return await repository.node_url(session, uid)
