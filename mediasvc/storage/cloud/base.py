"""The cloud store protocol every backend implements, and the object key convention."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

KEY_PREFIX = "media"
# A file's preview image sits beside it, locally and in the bucket: ``<uid>.preview.jpg``.
PREVIEW_SUFFIX = ".preview.jpg"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store says about an object: its size, and its sha256 (hex) when it can tell."""

    size: int
    sha256: str | None


class CloudStore(Protocol):
    """A bucket of immutable objects, addressed by key.

    Errors are ``mediasvc.storage.cloud.errors`` classes: ``CloudUnavailable`` means "try
    again later", any other ``CloudError`` needs a person.
    """

    async def put_file(self, key: str, path: Path, *, size: int, sha256: str) -> None:
        """Upload a local file in constant memory, replacing any object at ``key``.

        Returns only once the object is complete and its size and sha256 are confirmed;
        raises ``CloudIntegrityError`` if the bytes are not ``size`` bytes hashing to
        ``sha256`` (nothing is left behind then). A failed or cancelled upload never leaves
        an incomplete multipart upload in the store.
        """
        ...

    def open_range(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of an object in bounded chunks, fetching only those.

        ``CloudObjectMissing`` if there is no object; ``CloudIntegrityError`` if it is shorter
        than ``end``.
        """
        ...

    async def reader_url(self, key: str, *, expires_s: float) -> str:
        """A URL a media tool can read the object from, seeking with Range requests, for at
        least ``expires_s``: a presigned GET for a bucket, ``file:<path>`` for a directory.
        Made without asking the store whether the object is there (``stat`` does that)."""
        ...

    async def stat(self, key: str) -> ObjectInfo | None:
        """The object's size (and sha256 if known), or None if there is no object."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; removing one that is not there is not an error."""
        ...

    async def sweep_abandoned(self, *, older_than_s: float) -> int:
        """Remove what puts killed mid-way left in the store, if it can see any; how many.

        Never touches a put still in progress.
        """
        ...

    async def close(self) -> None:
        """Release the client's resources."""
        ...


def key_for(uid: str) -> str:
    """Object key of a file: ``media/<uid[:2]>/<uid>``, the local layout's fan-out."""
    if not uid or "/" in uid or uid in (".", ".."):
        raise ValueError(f"not a file UID: {uid!r}")
    return f"{KEY_PREFIX}/{uid[:2]}/{uid}"


def preview_key_for(uid: str) -> str:
    """Object key of a file's preview: ``media/<uid[:2]>/<uid>.preview.jpg``."""
    return f"{key_for(uid)}{PREVIEW_SUFFIX}"


def check_range(start: int, end: int) -> None:
    if start < 0 or end < start:
        raise ValueError(f"bad byte range [{start}, {end})")


def check_sha256(sha256: str) -> None:
    if not SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lower-case hex digits, got {sha256!r}")
