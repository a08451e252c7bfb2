"""``Content-Disposition`` for downloads (RFC 6266, with RFC 8187 ``filename*`` for non-ASCII)."""

from __future__ import annotations

from urllib.parse import quote

# RFC 8187 attr-char beyond ALPHA / DIGIT (which quote() never escapes).
_ATTR_CHAR_PUNCTUATION = "!#$&+-.^_`|~"
# Characters a quoted-string fallback must not carry: quotes and escapes break the header,
# '%' is decoded by some user agents, path separators must never reach a save dialog.
_UNSAFE_IN_FALLBACK = frozenset('"\\%/')

# Types a browser would run or render as a document: never inline from our origin.
ACTIVE_CONTENT_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/javascript",
        "application/javascript",
        "application/pdf",
    }
)


def is_active_content(media_type: str) -> bool:
    essence = media_type.split(";", 1)[0].strip().lower()  # "text/html; charset=…" is HTML too
    return essence in ACTIVE_CONTENT_TYPES or essence.endswith("+xml")


def content_disposition(name: str | None, *, media_type: str, inline: bool) -> str:
    disposition = "inline" if inline and not is_active_content(media_type) else "attachment"
    if not name:
        return disposition
    name = name.replace("/", "_").replace("\\", "_")
    fallback = "".join(
        ch if " " <= ch <= "~" and ch not in _UNSAFE_IN_FALLBACK else "_" for ch in name
    )
    header = f'{disposition}; filename="{fallback}"'
    if fallback != name:
        header += "; filename*=UTF-8''" + quote(name, safe=_ATTR_CHAR_PUNCTUATION)
    return header
