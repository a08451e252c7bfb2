"""Any node answers for any resumable upload (behind a load balancer, without sticky sessions):
a request for ``/api/v1/uploads/{uid}`` whose bytes another node holds is forwarded there,
whichever protocol it speaks (tus or the IETF draft). How, and why nothing else may answer it
here: mediasvc/resumable/forwarding.py.

Only when ``MEDIASVC_INTERNAL_URL`` is set (a node that does not know its own address cannot
tell another's uploads from its own); an upload whose row names no node, or this one, is served
here. OPTIONS and creation (``POST /api/v1/uploads``) concern no existing upload: never forwarded.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from mediasvc.api.problems import problem_for
from mediasvc.errors import MediaServiceError
from mediasvc.resumable import repository
from mediasvc.resumable.forwarding import FORWARDED_BY
from mediasvc.services import Services

_UPLOAD = re.compile(r"^/api/v1/uploads/([a-z2-7]{26})/?$")
_FORWARDED_BY = FORWARDED_BY.encode()


class UploadForwardingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _UPLOAD.match(scope["path"]) if scope["type"] == "http" else None
        services: Services | None = getattr(scope["app"].state, "services", None)
        if (
            match is None
            or services is None
            or services.forwarder is None
            or scope["method"] == "OPTIONS"
            or any(name == _FORWARDED_BY for name, _ in scope["headers"])
        ):
            await self.app(scope, receive, send)
            return
        forwarder = services.forwarder
        try:
            async with services.db.session() as session:
                owner = await repository.node_url(session, match.group(1))
            if owner is None or owner == forwarder.own_url:
                await self.app(scope, receive, send)
                return
            await forwarder.forward(owner, scope, receive, send)
        except MediaServiceError as exc:  # outside the app's handlers: answer it here
            await problem_for(exc)(scope, receive, send)
