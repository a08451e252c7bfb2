"""The IETF draft's operations in the OpenAPI schema (api/ietf_uploads.py serves them).

OpenAPI holds one operation per path and method, and the draft shares tus's (api/tus.py): a
request is the draft's when it carries ``Upload-Draft-Interop-Version`` and no ``Tus-Resumable``.
So each shared operation describes both: the draft's request fields are added as parameters
(``Tus-Resumable`` is then not required: a draft request has none), its statuses and response
fields are added to the operation's responses, each saying which protocol answers it, and the
problem types each status may carry are listed (``x-problem-types``, and in the text). ``GET`` on
an upload is the draft's alone (offset retrieval from interop 8).

A response body that only some of the requests get is described in words, not as content: a
completing creation or append answers the plain upload's ``UploadedFile`` JSON, any other ``201``
has no body, and OpenAPI cannot say "sometimes" (the schema test would hold every bodiless
answer against it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from mediasvc.api import ietf
from mediasvc.api.openapi import problem_responses
from mediasvc.errors import IANA_PROBLEM_TYPES

TAG = "IETF resumable upload"
UPLOAD = f"{ietf.PREFIX}/{{uid}}"
_VERSIONS = [str(version) for version in sorted(ietf.INTEROP_VERSIONS)]
_OURS = "urn:mediasvc:problem:"


def _header(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": f"IETF draft: {description}",
        "schema": {"type": "string"},
    }


def _interop(required: bool) -> dict[str, Any]:
    parameter = _header(
        ietf.INTEROP_HEADER,
        "the interop version whose rules apply (6, 7, 8 or 9; another is 400 "
        "unsupported-interop-version). Its presence, without Tus-Resumable, makes the request "
        "the draft's.",
        required=required,
    )
    parameter["schema"] = {"type": "string", "enum": _VERSIONS}
    return parameter


_COMPLETE = _header("Upload-Complete", "?1 if this request's body ends the file, else ?0")
_CONTENT_DIGEST = _header(
    "Content-Digest", "RFC 9530 digest of this request's body (sha-256, sha-512; 400 if not met)"
)
_WANT_REPR = _header("Want-Repr-Digest", "sha-256=N asks for Repr-Digest on the answer")

# Response fields of the draft (all optional: which appear depends on the state and version).
_FIELDS = {
    "Upload-Complete": "IETF: ?1 once the upload is complete (this answer is the file's)",
    "Upload-Offset": "IETF: bytes received durably",
    "Upload-Length": "IETF: the file's length, once told",
    "Upload-Limit": "IETF: max-size and the remaining lifetime (max-age; interop 6: expires)",
    "Location": "IETF: the upload's URL; on the answer that completed it, the file's",
    "Content-Location": "IETF: the file, once the upload is complete",
    "X-Delete-Token": "IETF: the file's delete token, in the answer that completed it",
    "Repr-Digest": "IETF: sha-256 of the bytes so far (the whole file's once complete)",
    "Cache-Control": "IETF: no-store",
    "Accept-Patch": "IETF, interop 8 only: application/partial-upload",
}

# Problem types per status, of either protocol's answers on these paths.
_PROBLEMS: dict[int, list[str]] = {
    400: [
        f"{IANA_PROBLEM_TYPES}inconsistent-upload-length",
        f"{IANA_PROBLEM_TYPES}completed-upload",
        f"{_OURS}unsupported-interop-version",
        f"{_OURS}content-digest-mismatch",
        f"{_OURS}bad-request",
    ],
    403: [f"{_OURS}forwarding-refused", f"{_OURS}forbidden"],
    409: [f"{IANA_PROBLEM_TYPES}mismatching-upload-offset", f"{_OURS}upload-taken-over"],
    413: [f"{_OURS}too-large"],  # IETF: with Upload-Limit
    421: [f"{_OURS}misdirected-request"],  # forwarded to a node that does not hold it
    422: [f"{_OURS}checksum-mismatch", f"{_OURS}invalid-input"],  # IETF: Upload-Complete: ?1
    503: [f"{_OURS}upload-owner-unavailable"],
}


def _response(description: str, *fields: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            name: {"description": _FIELDS[name], "schema": {"type": "string"}} for name in fields
        },
    }


# On a problem of the draft: Upload-Complete always, the offset (409, 400), the limits (413),
# the created upload's Location (a creation whose body failed).
_PROBLEM_FIELDS = ("Upload-Complete", "Upload-Offset", "Upload-Limit", "Location")
_STATE = ("Upload-Offset", "Upload-Complete", "Upload-Length", "Upload-Limit")
_DONE = ("Content-Location", "X-Delete-Token", "Repr-Digest")
_WHERE = (*_STATE, "Cache-Control", "Content-Location", "Repr-Digest")  # offset retrieval
_LIMITS = _response("IETF: the limits", "Upload-Limit", "Accept-Patch")

# method, path -> (what the draft's operation is, its parameters, its body, its answers)
_Operation = tuple[str, list[dict[str, Any]], dict[str, Any] | None, dict[str, dict[str, Any]]]
_OPERATIONS: dict[tuple[str, str], _Operation] = {
    ("options", ietf.PREFIX): (
        "IETF draft: the limits (Upload-Limit; Accept-Patch for interop 8).",
        [_interop(False)],
        None,
        {"204": _LIMITS},
    ),
    ("options", UPLOAD): (
        "IETF draft: the limits (Upload-Limit; Accept-Patch for interop 8).",
        [_interop(False)],
        None,
        {"204": _LIMITS},
    ),
    ("post", ietf.PREFIX): (
        "IETF draft: upload creation. Upload-Complete (?1: the body is the whole file), "
        "Upload-Length or Content-Length with ?1 for the length, the name from "
        "Content-Disposition, Repr-Digest (the whole file's sha-256, checked at completion: 422). "
        "Over HTTP/1.1 (our uvicorn) a 104 with the upload's Location comes before the body is "
        "read. The body, any media type (it is the file's), is kept even when cut.",
        [
            _interop(False),
            _COMPLETE,
            _header("Upload-Length", "the file's length"),
            _CONTENT_DIGEST,
            _header("Repr-Digest", "sha-256 of the whole file, checked at completion"),
            _WANT_REPR,
            _header("Content-Disposition", "the file's name (filename or filename*)"),
        ],
        {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        {
            "104": _response(
                "IETF: Upload Resumption Supported, before the body is read (HTTP/1.1)",
                "Location",
                "Upload-Limit",
            ),
            "201": _response(
                "IETF: the upload exists; if this request completed it (Upload-Complete: ?1), "
                "the body is the file's UploadedFile JSON, as POST /api/v1/files/stream answers, "
                "else there is none",
                "Location",
                *_STATE,
                *_DONE,
            ),
        },
    ),
    ("head", UPLOAD): (
        "IETF draft: offset retrieval (ends a request still writing the upload first).",
        [_interop(False)],
        None,
        {"204": _response("IETF: where the upload is", *_WHERE)},
    ),
    ("get", UPLOAD): (
        "IETF draft only: offset retrieval as HEAD, from interop 8 (6 and 7: 405).",
        [_interop(True)],
        None,
        {
            "204": _response("IETF: where the upload is", *_WHERE),
            "405": {"description": "IETF interop 6 and 7: GET is not offset retrieval"},
        },
    ),
    ("patch", UPLOAD): (
        "IETF draft: append, a PATCH of application/partial-upload at Upload-Offset with "
        "Upload-Complete (?1 on the last; an empty ?1 also completes).",
        [
            _interop(False),
            _COMPLETE,
            _header(
                "Upload-Offset",
                "where the bytes go (409 with the expected one if not)",
                required=True,
            ),
            _header("Upload-Length", "the file's length, once known"),
            _CONTENT_DIGEST,
            _WANT_REPR,
        ],
        {ietf.PARTIAL_UPLOAD: {"schema": {"type": "string", "format": "binary"}}},
        {
            "204": _response("IETF interop 7 to 9: appended, not complete", *_STATE),
            "201": _response(
                "IETF: completed by this request (the body is the file's UploadedFile JSON), or "
                "interop 6: appended, not complete (no body)",
                "Location",
                *_STATE,
                *_DONE,
            ),
            "200": _response(
                "IETF interop 7 to 9: a repeat of the request that completed the upload (its "
                "answer was lost): the file's place, no body",
                "Upload-Complete",
                "Upload-Offset",
                "Content-Location",
                "Repr-Digest",
            ),
        },
    ),
    ("delete", UPLOAD): (
        "IETF draft: cancellation (the upload's bytes and state go).",
        [_interop(False)],
        None,
        {"204": {"description": "IETF: cancelled"}},
    ),
}

_LABELS = {
    "options": "its limits",
    "post": "upload creation",
    "head": "offset retrieval",
    "get": "offset retrieval (interop 8, 9)",
    "patch": "append",
    "delete": "cancellation",
}
# The problem statuses a draft request may get, per method (beside tus's, already declared).
_ERRORS_BY_METHOD = {
    "options": (400, 431),
    "post": (400, 401, 403, 413, 415, 422, 429, 431, 503, 507),
    "head": (400, 401, 403, 404, 410, 421, 423, 431, 503),
    "get": (400, 401, 403, 404, 410, 421, 423, 431, 503),
    "patch": (400, 401, 403, 404, 409, 410, 413, 415, 421, 422, 423, 429, 431, 503, 507),
    "delete": (400, 401, 403, 404, 410, 421, 423, 431, 503),
}


def _merge_parameters(operation: dict[str, Any], added: list[dict[str, Any]]) -> None:
    parameters: list[dict[str, Any]] = operation.setdefault("parameters", [])
    for parameter in parameters:
        if parameter["in"] == "header" and parameter["name"].lower() == "tus-resumable":
            # A draft request carries none: required of tus's requests only (412 without).
            parameter["required"] = False
            parameter["description"] = "tus: required (1.0.0); absent on IETF draft requests"
    for new in added:
        same = [
            p
            for p in parameters
            if p["in"] == "header" and p["name"].lower() == new["name"].lower()
        ]
        if not same:
            parameters.append(copy.deepcopy(new))
            continue
        for parameter in same:
            parameter["required"] = bool(parameter.get("required")) and new["required"]
            told = parameter.get("description", "")
            parameter["description"] = (
                f"tus: {told}; {new['description']}" if told else new["description"]
            )


def _merge_responses(operation: dict[str, Any], method: str, added: dict[str, Any]) -> None:
    # Copies: FastAPI may share one response object between operations.
    responses = {code: copy.deepcopy(r) for code, r in operation.get("responses", {}).items()}
    for status, response in added.items():
        if status not in responses:
            responses[status] = copy.deepcopy(response)
            continue
        present = responses[status]
        present["description"] = f"tus: {present.get('description', '')}; {response['description']}"
        for name, header in response.get("headers", {}).items():
            present.setdefault("headers", {}).setdefault(name, copy.deepcopy(header))
    for code, problem in problem_responses(*_ERRORS_BY_METHOD[method]).items():
        responses.setdefault(str(code), problem)
    for code, declared in responses.items():
        if "application/problem+json" not in declared.get("content", {}):
            continue
        # The draft's fields on its problems (api/ietf.py decorate, the 409's offset, ...).
        headers = declared.setdefault("headers", {})
        for name in _PROBLEM_FIELDS:
            headers.setdefault(name, {"description": _FIELDS[name], "schema": {"type": "string"}})
        types = _PROBLEMS.get(int(code))
        if types:
            declared["x-problem-types"] = types
            declared["description"] += f" (problem types: {', '.join(types)})"
    operation["responses"] = dict(sorted(responses.items()))


def describe_ietf(schema: dict[str, Any]) -> None:
    """Add the draft's operations to a schema FastAPI built (in place)."""
    paths: dict[str, dict[str, Any]] = schema.setdefault("paths", {})
    for (method, path), (summary, parameters, body, responses) in _OPERATIONS.items():
        operation = paths.setdefault(path, {}).setdefault(
            method,
            {
                "operationId": f"ietf_{method}_upload",
                "parameters": [
                    {"name": "uid", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {},
            },
        )
        label = f"IETF draft: {_LABELS[method]}"
        told = operation.get("summary")
        operation["summary"] = f"{told}; {label}" if told else label
        if TAG not in operation.setdefault("tags", []):
            operation["tags"].append(TAG)
        text = operation.get("description", "")
        operation["description"] = f"{text}\n\n{summary}".strip()
        _merge_parameters(operation, parameters)
        if body is not None:
            request_body = operation.setdefault("requestBody", {"content": {}})
            for media_type, content in body.items():
                request_body["content"].setdefault(media_type, copy.deepcopy(content))
        _merge_responses(operation, method, responses)


def describe(app: FastAPI) -> None:
    """Make the app's OpenAPI schema describe the draft's operations too."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        describe_ietf(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
