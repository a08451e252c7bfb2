"""Original file names: where raw uploads take them from, and what we accept.

Names are metadata only (paths on disk come from the UID), so we keep them as sent, within limits.
"""

from __future__ import annotations

import re
import unicodedata
from email.message import Message
from pathlib import PurePosixPath
from urllib.parse import unquote_to_bytes

from starlette.datastructures import Headers, QueryParams

from mediasvc.errors import InvalidFilename

MAX_NAME_BYTES = 255
# A '%' that does not start a %XX escape: the value is not percent-encoded.
_BAD_PERCENT_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


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
    # Malformed escapes (`%ZZ`, `50%`) used to be kept literally, and the value was decoded from
    # Starlette's latin-1 view of the header, so raw UTF-8 (`curl -H 'X-Filename: café.txt'`)
    # became "cafÃ©.txt". Undo the latin-1 step and decode the bytes as UTF-8, strictly.
    if _BAD_PERCENT_ESCAPE.search(value):
        raise InvalidFilename("X-Filename has a '%' that does not start a %XX escape")
    try:
        return unquote_to_bytes(value.encode("latin-1")).decode("utf-8")
    except UnicodeError as exc:
        raise InvalidFilename("X-Filename is not percent-encoded UTF-8") from exc


def filename_from_disposition(value: str) -> str | None:
    """The filename of a Content-Disposition value, preferring ``filename*`` (RFC 6266 §4.3)."""
    # email's compat32 parser implements RFC 2231/8187 and returns filename* as a
    # (charset, language, latin-1 text) tuple. We pick filename* ourselves: `get_filename()`
    # returned whichever parameter came first, so `filename="x"; filename*=UTF-8''y` gave "x"
    # (RFC 6266 §4.3 prefers filename*), and it replaced invalid UTF-8 with U+FFFD silently.
    message = Message()
    try:
        message["content-disposition"] = value
        params = message.get_params(header="content-disposition", failobj=[])
        plain: str | None = None
        for key, param in params:
            if key.lower() != "filename":
                continue
            if isinstance(param, tuple):
                charset, _language, text = param
                return str(text).encode("latin-1").decode(charset or "us-ascii")
            if plain is None:
                plain = str(param)
    except (ValueError, LookupError, UnicodeError) as exc:
        raise InvalidFilename("the Content-Disposition header has an unreadable filename") from exc
    return plain


def name_from_request(headers: Headers, query: QueryParams, path_name: str | None) -> str | None:
    """The original name of a raw upload: X-Filename, Content-Disposition, ?filename=, PUT path."""
    name: str | None = None
    if (x_filename := headers.get("x-filename")) is not None:
        name = _from_x_filename(x_filename)
    elif (disposition := headers.get("content-disposition")) is not None:
        name = filename_from_disposition(disposition)
    if name is None:
        name = query.get("filename")
    if name is None:
        name = path_name
    return None if name is None else validate_name(name)
