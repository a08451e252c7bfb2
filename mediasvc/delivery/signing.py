"""Signed download links: an HMAC over the path's UID and every query parameter, with an expiry.

``GET /api/v1/files/{uid}/link`` hands them out; with ``require_signed_downloads`` every route
that reveals the file needs one or the owner's key (``mediasvc.api.access``). The signature
covers the UID and the query, not the route, so one link opens the file's download, metadata and
preview. Changing any part of the query (UID, expiry, ``inline``, an added parameter) breaks it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

from mediasvc.errors import Forbidden

SIGNATURE_PARAM = "signature"
EXPIRES_PARAM = "expires"


def _canonical(uid: str, params: list[tuple[str, str]]) -> bytes:
    kept = sorted((k, v) for k, v in params if k != SIGNATURE_PARAM)
    return f"{uid}?{urlencode(kept)}".encode()


def _mac(secret: str, uid: str, params: list[tuple[str, str]]) -> str:
    return hmac.new(secret.encode("utf-8"), _canonical(uid, params), hashlib.sha256).hexdigest()


def signed_query(secret: str, uid: str, *, expires_at_s: int, inline: bool) -> str:
    params = [(EXPIRES_PARAM, str(expires_at_s))]
    if inline:
        params.append(("inline", "true"))
    params.append((SIGNATURE_PARAM, _mac(secret, uid, params)))
    return urlencode(params)


def verify(secret: str, uid: str, query: QueryParams, *, now_s: float | None = None) -> None:
    """403 unless the URL carries a valid, unexpired signature for exactly these parameters."""
    signature = query.get(SIGNATURE_PARAM)
    expires = query.get(EXPIRES_PARAM)
    if signature is None or expires is None:
        raise Forbidden("downloads need a signed link: GET /api/v1/files/{uid}/link")
    expected = _mac(secret, uid, list(query.multi_items()))
    if not hmac.compare_digest(signature.encode("utf-8"), expected.encode("ascii")):
        raise Forbidden("the link's signature does not match")
    if not expires.isdigit() or int(expires) < (time.time() if now_s is None else now_s):
        raise Forbidden("the link has expired")
