"""Unguessable identifiers and the secrets that go with them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

# 128 bits of randomness as 26 lower-case base32 characters: safe in paths and URLs.
UID_PATTERN = re.compile(r"^[a-z2-7]{26}$")


def new_uid() -> str:
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()


def is_valid_uid(value: str) -> bool:
    return bool(UID_PATTERN.match(value))


def new_delete_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a secret (a delete token, an API key): its SHA-256 in hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, token_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), token_hash)
