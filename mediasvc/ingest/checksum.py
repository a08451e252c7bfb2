"""The SHA-256 a client declares: ``X-Checksum-Sha256`` (hex) or ``Repr-Digest`` (RFC 9530)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

from starlette.datastructures import Headers

from mediasvc.errors import BadRequest, ChecksumMismatch

_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
# One member of an RFC 8941 dictionary whose value is a byte sequence: key=:base64:
_DIGEST_MEMBER = re.compile(r"^\s*([a-z*][a-z0-9_.*-]*)\s*=\s*:([A-Za-z0-9+/=]*):\s*(;.*)?$")


def expected_sha256(headers: Headers) -> list[str]:
    """Every SHA-256 (hex, lower case) the client declared; 400 if a header is malformed."""
    expected: list[str] = []
    if (hex_value := headers.get("x-checksum-sha256")) is not None:
        if not _HEX_SHA256.match(hex_value.strip()):
            raise BadRequest("X-Checksum-Sha256 must be 64 hexadecimal characters")
        expected.append(hex_value.strip().lower())
    if (repr_digest := headers.get("repr-digest")) is not None:
        expected.extend(_sha256_from_repr_digest(repr_digest))
    return expected


def _sha256_from_repr_digest(value: str) -> list[str]:
    found: list[str] = []
    # Members are comma-separated; a base64 value never contains a comma.
    for member in value.split(","):
        match = _DIGEST_MEMBER.match(member)
        if not match:
            raise BadRequest("Repr-Digest is not a valid RFC 9530 dictionary")
        algorithm, b64 = match.group(1), match.group(2)
        if algorithm != "sha-256":
            continue  # other algorithms are allowed; we only check the one we compute
        try:
            digest = base64.b64decode(b64, validate=True)
        except binascii.Error as exc:
            raise BadRequest("Repr-Digest sha-256 is not valid base64") from exc
        if len(digest) != 32:
            raise BadRequest("Repr-Digest sha-256 must be 32 bytes")
        found.append(digest.hex())
    return found


def verify(expected: Sequence[str], actual_hex: str) -> None:
    for value in expected:
        if value != actual_hex:
            raise ChecksumMismatch(
                f"the body's SHA-256 is {actual_hex}, the request declared {value}"
            )


def repr_digest_header(sha256_hex: str) -> str:
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii") + ":"
