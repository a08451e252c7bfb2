"""The caller's metadata: a small JSON object given at upload, kept on the row, echoed back.

Every route parses it here: ``X-Metadata`` on raw uploads, the ``metadata`` form field of a
multipart upload, the ``metadata`` key of a resumable upload's ``Upload-Metadata``, the
``metadata`` member of an import. Bounded in bytes, nesting depth and keys, so a caller cannot
make every event about its file large; anything else is 422 (``InvalidMetadata``).
"""

from __future__ import annotations

import json
from typing import Any

from mediasvc.errors import InvalidMetadata

#: The largest metadata accepted, as UTF-8 JSON text.
MAX_METADATA_BYTES = 4096
#: Objects and arrays nested deeper than this are refused (the top-level object is depth 1).
MAX_METADATA_DEPTH = 4
#: Keys in all its objects together.
MAX_METADATA_KEYS = 64


def parse_metadata(raw: str | bytes | None) -> dict[str, Any] | None:
    """The caller's metadata from its JSON text; None when none was given (or it is empty)."""
    if raw is None:
        return None
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if not data.strip():
        return None
    if len(data) > MAX_METADATA_BYTES:
        raise InvalidMetadata(f"metadata is {len(data)} bytes; at most {MAX_METADATA_BYTES}")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidMetadata(f"metadata is not valid JSON: {exc}") from None
    return check_metadata(value)


def check_metadata(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object within the bounds (already parsed, as in a JSON body)."""
    if not isinstance(value, dict):
        raise InvalidMetadata("metadata must be a JSON object")
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise InvalidMetadata(f"metadata is {size} bytes as JSON; at most {MAX_METADATA_BYTES}")
    keys = _count_keys(value, depth=1)
    if keys > MAX_METADATA_KEYS:
        raise InvalidMetadata(f"metadata has {keys} keys; at most {MAX_METADATA_KEYS}")
    return value


def _count_keys(value: Any, *, depth: int) -> int:
    """Keys in ``value`` and below; refuses nesting deeper than the bound."""
    if isinstance(value, dict | list) and depth > MAX_METADATA_DEPTH:
        raise InvalidMetadata(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, dict):
        return len(value) + sum(_count_keys(v, depth=depth + 1) for v in value.values())
    if isinstance(value, list):
        return sum(_count_keys(v, depth=depth + 1) for v in value)
    return 0
