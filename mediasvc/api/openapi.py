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


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }
