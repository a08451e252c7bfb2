"""API keys: who may upload and list. Off unless ``api_keys`` is configured.

Keys are configured by their SHA-256 only (``mediasvc hash-key KEY`` prints it), so a leaked
settings file does not leak keys. A presented key is hashed and compared with every configured
hash in constant time, without stopping at the first match.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from pydantic import BaseModel, Field
from starlette.datastructures import Headers

from mediasvc.errors import Forbidden, Unauthorized
from mediasvc.ids import hash_token


class ApiKey(BaseModel):
    """One configured key: ``{"name": "alice", "sha256": "<hex>", "admin": false}``."""

    name: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    admin: bool = False


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a key identifies; files uploaded with it belong to ``name``."""

    name: str
    admin: bool


class KeyRing:
    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, headers: Headers) -> Principal | None:
        """The caller, or None when keys are off. 401 without a key, 403 with a wrong one."""
        if not self._keys:
            return None
        authorization = headers.get("authorization")
        if authorization is None:
            raise Unauthorized("this endpoint needs an API key: Authorization: Bearer <key>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use Authorization: Bearer <key>")
        presented = hash_token(token.strip()).encode("ascii")
        found: ApiKey | None = None
        for key in self._keys:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(presented, key.sha256.encode("ascii")):
                found = key
        if found is None:
            raise Forbidden("the API key is not valid")
        return Principal(name=found.name, admin=found.admin)
