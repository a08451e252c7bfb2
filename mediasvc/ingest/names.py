"""Original file names: where raw uploads take them from, and what we accept.

Names are metadata only (paths on disk come from the UID), so we keep them as sent, within limits.
One rule for every source (X-Filename, Content-Disposition ``filename*`` and ``filename``, the
query's ``?filename=``, the PUT path, a multipart part's ``filename`` and ``filename*``): the
name's bytes, after percent-decoding where the source is percent-encoded, must be UTF-8 (never
replaced with U+FFFD), at most 255 of them, without control characters and without bidi
controls (U+202E and friends reorder what a save dialog shows: "evil" + U+202E + "gpj.exe"
shows as "evilexe.jpg"). Anything else is 422.
"""

from __future__ import annotations

import re
import unicodedata
from email.message import Message
from pathlib import PurePosixPath
from urllib.parse import unquote_to_bytes

from starlette.datastructures import Headers

from mediasvc.errors import InvalidFilename

MAX_NAME_BYTES = 255
QUERY_NAME_PARAM = b"filename"
# A '%' that does not start a %XX escape: the value is not percent-encoded.
_BAD_PERCENT_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Unicode's Bidi_Control property (PropList.txt): ALM, LRM, RLM, the embeddings and overrides
# (LRE, RLE, PDF, LRO, RLO) and the isolates (LRI, RLI, FSI, PDI). Names may hold right-to-left
# text; they may not reorder it.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def validate_name(name: str) -> str:
    """Return ``name`` if acceptable: non-empty, ≤ 255 bytes of UTF-8, no control characters,
    no bidi controls."""
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
    if not BIDI_CONTROLS.isdisjoint(name):
        raise InvalidFilename(
            "the file name contains bidi control characters (U+202E and the like), which can "
            "disguise its extension"
        )
    return name


def decode_name_bytes(raw: bytes, *, source: str) -> str:
    """A name sent as bytes (a multipart ``filename``, a percent-decoded path or query): strict
    UTF-8, so a client never gets back a name with U+FFFD where its bytes were."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidFilename(f"the file name in {source} is not valid UTF-8") from exc


def _percent_decoded(raw: bytes, *, source: str) -> str:
    # A '%' that starts no escape is kept as it is (as Starlette did: `curl -T "50%.txt" URL/`
    # sends it so); what the escapes and raw bytes spell must be UTF-8.
    return decode_name_bytes(unquote_to_bytes(raw), source=source)


def query_name(query_string: bytes) -> str | None:
    """``?filename=`` from the raw query (the last one wins, as in Starlette's QueryParams).

    Read from the bytes: Starlette's QueryParams replaces invalid UTF-8 with U+FFFD.
    """
    found: bytes | None = None
    for field in query_string.split(b"&"):
        key, _, value = field.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")) == QUERY_NAME_PARAM:
            found = value.replace(b"+", b" ")  # form encoding: '+' is a space
    return None if found is None else _percent_decoded(found, source="?filename=")


def path_name(raw_path: bytes) -> str:
    """The name in a PUT path's last segment, from the request's raw path (ASGI ``raw_path``)."""
    return _percent_decoded(raw_path.rsplit(b"/", 1)[-1], source="the path")


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
                # The header's bytes (Starlette and our multipart parser hand them over as
                # latin-1): UTF-8 as clients send them, strictly, like every other source.
                plain = str(param).encode("latin-1").decode("utf-8")
    except (ValueError, LookupError, UnicodeError) as exc:
        raise InvalidFilename("the Content-Disposition header has an unreadable filename") from exc
    return plain


def name_from_request(headers: Headers, query_string: bytes, raw_path: bytes | None) -> str | None:
    """The original name of a raw upload: X-Filename, Content-Disposition, ?filename=, PUT path.

    ``query_string`` and ``raw_path`` are the request's raw bytes (ASGI ``query_string`` and
    ``raw_path``); ``raw_path`` is None on the routes without a name in the path.
    """
    name: str | None = None
    if (x_filename := headers.get("x-filename")) is not None:
        name = _from_x_filename(x_filename)
    elif (disposition := headers.get("content-disposition")) is not None:
        name = filename_from_disposition(disposition)
    if name is None:
        name = query_name(query_string)
    if name is None and raw_path is not None:
        name = path_name(raw_path)
    return None if name is None else validate_name(name)
