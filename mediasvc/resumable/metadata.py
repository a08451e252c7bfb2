"""``Upload-Metadata`` (tus: comma-separated ``key base64value`` pairs) and the file options its
keys carry. They mean what the plain upload's headers and query parameters mean, and a bad value
is refused when the upload is created (400), not when its last byte arrives."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from mediasvc.errors import BadRequest, InvalidFilename
from mediasvc.events.metadata import parse_metadata as parse_caller_metadata
from mediasvc.ingest.names import validate_name

MAX_DOWNLOADS_LIMIT = 1_000_000
MAX_EXPIRES_IN_S = 315_360_000  # ten years, as the plain upload's expires_in
MAX_METADATA_BYTES = 4096
_KEY = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # a token; no spaces or commas
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class InvalidUploadMetadata(BadRequest):
    slug = "invalid-upload-metadata"


@dataclass(frozen=True, slots=True, kw_only=True)
class FileOptions:
    """What the finished file takes from the upload's metadata."""

    filename: str | None = None
    filetype: str | None = None
    max_downloads: int | None = None
    expires_in_s: int | None = None
    sha256: str | None = None  # hex, lower case: the whole file must have it
    metadata: dict[str, Any] | None = None  # the caller's JSON object (events/metadata.py)


def parse_metadata(header: str | None) -> dict[str, bytes | None]:
    """The pairs of an ``Upload-Metadata`` header (a key may come without a value)."""
    if header is None or not header.strip():
        return {}
    if len(header) > MAX_METADATA_BYTES:
        raise InvalidUploadMetadata(f"Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes")
    pairs: dict[str, bytes | None] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition(" ")
        if not _KEY.match(key) or key in pairs or " " in value.strip():
            raise InvalidUploadMetadata(
                "Upload-Metadata must be comma-separated 'key base64' pairs with unique keys"
            )
        try:
            pairs[key] = base64.b64decode(value.strip(), validate=True) if value.strip() else None
        except binascii.Error as exc:
            raise InvalidUploadMetadata(f"Upload-Metadata: {key}'s value is not base64") from exc
    return pairs


def file_options(pairs: dict[str, bytes | None]) -> FileOptions:
    """The file options among the pairs (other keys are the client's own and are kept as they
    are); 400 for a bad value."""
    return FileOptions(
        filename=_filename(pairs.get("filename")),
        filetype=_text(pairs, "filetype"),
        max_downloads=_number(pairs, "max_downloads", MAX_DOWNLOADS_LIMIT),
        expires_in_s=_number(pairs, "expires_in", MAX_EXPIRES_IN_S),
        sha256=_sha256(pairs),
        # The caller's own JSON, bounded and checked as on every route (422 if bad).
        metadata=parse_caller_metadata(pairs.get("metadata")),
    )


def _text(pairs: dict[str, bytes | None], key: str) -> str | None:
    raw = pairs.get(key)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidUploadMetadata(f"Upload-Metadata: {key} is not UTF-8") from exc


def _filename(raw: bytes | None) -> str | None:
    name = _text({"filename": raw}, "filename")
    if name is None:
        return None
    try:
        return validate_name(name)
    except InvalidFilename as exc:
        raise InvalidUploadMetadata(f"Upload-Metadata: filename: {exc.detail}") from exc


def _number(pairs: dict[str, bytes | None], key: str, most: int) -> int | None:
    text = _text(pairs, key)
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= most:
        raise InvalidUploadMetadata(f"Upload-Metadata: {key} must be a whole number, 1 to {most}")
    return int(text)


def _sha256(pairs: dict[str, bytes | None]) -> str | None:
    text = _text(pairs, "sha256")
    if text is None:
        return None
    if not _HEX_SHA256.match(text):
        raise InvalidUploadMetadata("Upload-Metadata: sha256 must be 64 hexadecimal characters")
    return text.lower()
