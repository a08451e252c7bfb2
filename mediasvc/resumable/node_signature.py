"""Requests one API node forwards to another (resumable/forwarding.py), signed so that the
receiving node can believe what they say: that a node sent them (so they are never forwarded
again) and which client they came from (so the owner's per-client upload cap counts that client,
not the forwarding node).

Without a signature a client could send these fields itself (a proxy in front passes them on):
it would claim another address, dodging its cap or filling another's, and skip forwarding. So
each forwarded request carries an HMAC-SHA256, keyed by ``MEDIASVC_INTERNAL_SECRET`` (the same on
every node), over its method, target (path and query as sent: ``target``, the one form both
sides compute), time, sending node, receiving node and client address; a request that carries
any of these fields without a valid signature, or with a malformed one, is refused (403), never
half-believed. The time bounds a replay of a captured request to ``MAX_SKEW_S`` either way
(nodes' clocks are assumed NTP-synchronized); the receiving node's URL confines it to the node
it was sent to (the upload's owner, api/forwarding.py), where it can only repeat a request for
an upload, which the upload's offset rules make idempotent or refuse (409).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from mediasvc.errors import ForwardingRefused

FORWARDED_BY = "x-mediasvc-forwarded-by"  # the sending node's internal URL
FORWARDED_FOR = "x-mediasvc-forwarded-for"  # the client's address as the sending node saw it
FORWARDED_AT = "x-mediasvc-forwarded-at"  # Unix time of the signature, whole seconds
SIGNATURE = "x-mediasvc-forwarded-signature"  # hex HMAC-SHA256 of the above, method and target
FIELDS = frozenset(name.encode() for name in (FORWARDED_BY, FORWARDED_FOR, FORWARDED_AT, SIGNATURE))
MAX_SKEW_S = 300
_VERSION = "mediasvc-forward-2"  # changes if what is signed changes (2: the receiving node)
_HEX_DIGEST_CHARS = 64


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What a verified forwarded request says."""

    by: str
    client: str | None


def target(raw_path: bytes, query: bytes) -> str:
    """A request's path and query in the one form both nodes sign: as httpx sends it (it
    percent-encodes what a URL may not carry as is, and leaves escapes alone), so the sender's
    form of what its client sent is what the receiver sees, and the receiver's form of that is
    the same again. ASCII only; ``ForwardingRefused`` for a target no URL can carry (not a
    path, control characters)."""
    raw = raw_path + b"?" + query if query else raw_path
    if not raw.startswith(b"/"):
        raise ForwardingRefused("only a request for a path is forwarded")
    try:
        url = httpx.URL("http://node" + raw.decode("latin-1"))
    except httpx.InvalidURL as exc:
        raise ForwardingRefused(f"the request's target cannot be forwarded: {exc}") from exc
    return url.raw_path.decode("ascii")


def _mac(secret: bytes, method: str, path: str, at: str, by: str, to: str, client: str) -> bytes:
    message = "\n".join((_VERSION, method.upper(), path, at, by, to, client))
    return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).hexdigest().encode()


def sign(
    secret: bytes, *, method: str, target: str, by: str, to: str, client: str | None, now: float
) -> list[tuple[str, str]]:
    """The fields a request forwarded from node ``by`` to node ``to`` (their internal URLs)
    carries; ``target`` is its path and query as ``target()`` gives them."""
    at = str(int(now))
    return [
        (FORWARDED_BY, by),
        (FORWARDED_FOR, client or ""),
        (FORWARDED_AT, at),
        (SIGNATURE, _mac(secret, method, target, at, by, to, client or "").decode()),
    ]


def verify(
    secret: bytes | None,
    *,
    own_url: str | None,
    method: str,
    raw_path: bytes,
    query: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    now: float,
) -> Forwarded | None:
    """None for a request that says nothing of forwarding; what a forwarded one says once its
    signature holds for this node (``own_url``); ``ForwardingRefused`` otherwise (a missing,
    repeated, malformed or wrong field, no secret or URL here, a time too far off)."""
    found: dict[bytes, list[str]] = {}
    for name, value in headers:
        if name in FIELDS:
            found.setdefault(name, []).append(value.decode("latin-1"))
    if not found:
        return None
    if secret is None or own_url is None:
        raise ForwardingRefused("this node takes no forwarded requests (no internal URL)")
    values: dict[str, str] = {}
    for name in FIELDS:
        got = found.get(name, [])
        if len(got) != 1:
            raise ForwardingRefused(f"a forwarded request carries {name.decode()} once")
        values[name.decode()] = got[0]
    at, signature = values[FORWARDED_AT], values[SIGNATURE]
    # isdigit alone takes "²" (which int refuses); the length keeps int() and the
    # comparison cheap whatever a client sends.
    if not (at.isascii() and at.isdigit() and len(at) <= 12) or abs(now - int(at)) > MAX_SKEW_S:
        raise ForwardingRefused("the forwarded request's time is missing or too far off")
    if not (signature.isascii() and len(signature) == _HEX_DIGEST_CHARS):
        raise ForwardingRefused("the forwarded request's signature is malformed")
    by, client = values[FORWARDED_BY], values[FORWARDED_FOR]
    expected = _mac(secret, method, target(raw_path, query), at, by, own_url, client)
    # Bytes: compare_digest refuses a str with other than ASCII in it (TypeError).
    if not hmac.compare_digest(expected, signature.encode("ascii")):
        raise ForwardingRefused("the forwarded request's signature does not hold")
    return Forwarded(by=by, client=client or None)
