"""The stored ``format``: the client's media type unless it is generic, else sniffed."""

from __future__ import annotations

import codecs
import re

import puremagic

OCTET_STREAM = "application/octet-stream"
# What clients send when they don't know: curl --data-binary sends x-www-form-urlencoded.
GENERIC_TYPES = frozenset({OCTET_STREAM, "application/x-www-form-urlencoded", "text/plain", ""})
_CHARSET = re.compile(r";\s*charset=\"?([A-Za-z0-9._:+-]{1,40})\"?\s*(?:;|$)", re.IGNORECASE)
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


def essence(content_type: str | None) -> str:
    """``type/subtype`` in lower case, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_multipart(content_type: str | None) -> bool:
    return essence(content_type).startswith("multipart/form-data")


def sniff(head: bytes) -> str:
    try:
        mime = puremagic.from_string(head, mime=True) if head else ""
    except (puremagic.PureError, ValueError):
        mime = ""
    if mime:
        return str(mime)
    if head and _looks_like_text(head):
        return "text/plain"
    return OCTET_STREAM


def choose_format(declared: str | None, head: bytes) -> str:
    """The declared type (with its charset, which decides how text is read) unless generic."""
    declared_essence = essence(declared)
    chosen = declared_essence
    if declared_essence in GENERIC_TYPES or not _MEDIA_TYPE.match(declared_essence):
        chosen = sniff(head)
    charset = _CHARSET.search(declared or "")
    if charset and chosen == declared_essence:
        return f"{chosen}; charset={charset.group(1).lower()}"
    return chosen


def _looks_like_text(head: bytes) -> bool:
    try:
        # The head may end inside a multi-byte character: an incremental decoder keeps it pending.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return not any(ord(ch) < 32 and ch not in "\t\r\n\f" for ch in text)
