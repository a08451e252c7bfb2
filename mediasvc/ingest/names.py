"""Original file names: where raw uploads take them from, and what we accept.

Names are metadata only (paths on disk come from the UID), so we keep them as sent, within limits.
"""

from __future__ import annotations

import unicodedata
from email.message import EmailMessage
from pathlib import PurePosixPath
from urllib.parse import unquote

from starlette.datastructures import Headers, QueryParams

from mediasvc.errors import InvalidFilename

MAX_NAME_BYTES = 255


def validate_name(name: str) -> str:
    """Return ``name`` if acceptable: non-empty, ≤ 255 bytes of UTF-8, no control characters."""
    if not name:
        raise InvalidFilename("the file name is empty")
    try:
        encoded_size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:  # lone surrogates
        raise InvalidFilename("the file name is not valid Unicode") from exc
    if encoded_size > MAX_NAME_BYTES:
        raise InvalidFilename(
            f"the file name is {encoded_size} bytes of UTF-8; at most {MAX_NAME_BYTES} are allowed"
        )
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InvalidFilename("the file name contains control characters")
    return name


def extension_of(name: str | None) -> str | None:
    """Lower-case extension without the dot, from the last path segment; None if there is none."""
    if not name:
        return None
    suffix = PurePosixPath(name.replace("\\", "/")).suffix
    return suffix[1:].lower() or None


def _from_x_filename(value: str) -> str:
    try:
        return unquote(value, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidFilename("X-Filename is not percent-encoded UTF-8") from exc


def _from_content_disposition(value: str) -> str | None:
    # email's parser implements RFC 2231/8187 (filename*=UTF-8''…) and prefers filename*.
    message = EmailMessage()
    try:
        message["content-disposition"] = value
        name = message.get_filename()
    except (ValueError, LookupError, UnicodeError) as exc:
        raise InvalidFilename("the Content-Disposition header has an unreadable filename") from exc
    return name


def name_from_request(headers: Headers, query: QueryParams, path_name: str | None) -> str | None:
    """The original name of a raw upload: X-Filename, Content-Disposition, ?filename=, PUT path."""
    name: str | None = None
    if (x_filename := headers.get("x-filename")) is not None:
        name = _from_x_filename(x_filename)
    elif (disposition := headers.get("content-disposition")) is not None:
        name = _from_content_disposition(disposition)
    if name is None:
        name = query.get("filename")
    if name is None:
        name = path_name
    return None if name is None else validate_name(name)
