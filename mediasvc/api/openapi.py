"""What the OpenAPI schema says about routes, shared by every router.

Error responses are declared so that the schema is truthful (tests/test_schema_fuzz.py checks
every response against it): every error is RFC 9457 problem+json (``api.problems``); without
these FastAPI declared only a 422 as application/json ``HTTPValidationError``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


# Statuses outside the IANA registry that a protocol we speak defines.
_PHRASES = {460: "Checksum Mismatch"}  # tus's checksum extension


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": _PHRASES.get(status) or HTTPStatus(status).phrase,
            "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


def bytes_responses(media_type: str) -> dict[int | str, dict[str, Any]]:
    """A route that sends a representation's bytes (``delivery.serve``): its statuses.

    400 malformed Range, 401/403 signature or key, 404 unknown UID, 410 gone, 412/416
    preconditions and ranges, 422 bad query, 431 headers, 503 database or cloud.
    """
    return {
        200: {"content": {media_type: {"schema": {"type": "string", "format": "binary"}}}},
        206: {"description": "Partial content (one range, or multipart/byteranges)"},
        304: {"description": "Not modified"},
        **problem_responses(400, 401, 403, 404, 410, 412, 416, 422, 431, 503),
    }
