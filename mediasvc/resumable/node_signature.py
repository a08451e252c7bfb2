"""Requests one API node forwards to another (resumable/forwarding.py), signed so that the
receiving node can believe what they say: that a node sent them (so they are never forwarded
again) and which client they came from (so the owner's per-client upload cap counts that client,
not the forwarding node).

Without a signature a client could send these fields itself (a proxy in front passes them on):
it would claim another address, dodging its cap or filling another's, and skip forwarding. So
each forwarded request carries an HMAC-SHA256, keyed by ``MEDIASVC_INTERNAL_SECRET`` (the same on
every node), over its method, target (path and query as sent), time, sending node and client
address; a request that carries any of these fields without a valid signature is refused (403),
never half-believed. The time bounds a replay of a captured request to ``MAX_SKEW_S`` either
way (nodes' clocks are assumed NTP-synchronized); within it, a replay can only repeat a request
for an upload, which the upload's offset rules make idempotent or refuse (409).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from mediasvc.errors import ForwardingRefused

FORWARDED_BY = "x-mediasvc-forwarded-by"  # the sending node's internal URL
FORWARDED_FOR = "x-mediasvc-forwarded-for"  # the client's address as the sending node saw it
FORWARDED_AT = "x-mediasvc-forwarded-at"  # Unix time of the signature, whole seconds
SIGNATURE = "x-mediasvc-forwarded-signature"  # hex HMAC-SHA256 of the above, method and target
FIELDS = frozenset(name.encode() for name in (FORWARDED_BY, FORWARDED_FOR, FORWARDED_AT, SIGNATURE))
MAX_SKEW_S = 300
_VERSION = "mediasvc-forward-1"  # changes if what is signed changes


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What a verified forwarded request says."""

    by: str
    client: str | None


def _mac(secret: bytes, method: str, target: str, at: str, by: str, client: str) -> str:
    message = "\n".join((_VERSION, method.upper(), target, at, by, client))
    return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).hexdigest()


def sign(
    secret: bytes, *, method: str, target: str, by: str, client: str | None, now: float
) -> list[tuple[str, str]]:
    """The fields a forwarded request carries; ``target`` is its path and query as sent."""
    at = str(int(now))
    return [
        (FORWARDED_BY, by),
        (FORWARDED_FOR, client or ""),
        (FORWARDED_AT, at),
        (SIGNATURE, _mac(secret, method, target, at, by, client or "")),
    ]


def verify(
    secret: bytes | None,
    *,
    method: str,
    target: str,
    headers: Iterable[tuple[bytes, bytes]],
    now: float,
) -> Forwarded | None:
    """None for a request that says nothing of forwarding; what a forwarded one says once its
    signature holds; ``ForwardingRefused`` otherwise (a missing, repeated or wrong field, no
    secret here, a time too far off)."""
    found: dict[bytes, list[str]] = {}
    for name, value in headers:
        if name in FIELDS:
            found.setdefault(name, []).append(value.decode("latin-1"))
    if not found:
        return None
    if secret is None:
        raise ForwardingRefused("this node takes no forwarded requests (no internal secret)")
    values: dict[str, str] = {}
    for name in FIELDS:
        got = found.get(name, [])
        if len(got) != 1:
            raise ForwardingRefused(f"a forwarded request carries {name.decode()} once")
        values[name.decode()] = got[0]
    at = values[FORWARDED_AT]
    if not at.isdigit() or abs(now - int(at)) > MAX_SKEW_S:
        raise ForwardingRefused("the forwarded request's time is missing or too far off")
    by, client = values[FORWARDED_BY], values[FORWARDED_FOR]
    expected = _mac(secret, method, target, at, by, client)
    if not hmac.compare_digest(expected, values[SIGNATURE]):
        raise ForwardingRefused("the forwarded request's signature does not hold")
    return Forwarded(by=by, client=client or None)
