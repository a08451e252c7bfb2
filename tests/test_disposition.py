"""Content-Disposition of downloads (RFC 6266, RFC 8187 filename*): unit and through the API."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest

from mediasvc.delivery.disposition import content_disposition, is_active_content

# The whole header, strictly: a type, then `; name=value` parameters, values a token or a
# quoted-string without escapes. A header that matches this cannot smuggle a parameter.
DISPOSITION = re.compile(
    r"(?P<type>attachment|inline)"
    r"(?P<params>(?:; [A-Za-z*]+=(?:\"[ !#-\[\]-~]*\"|[!#$&+\-.^_`|~0-9A-Za-z%']+))*)"
)
PARAM = re.compile(r"; ([A-Za-z*]+)=(\"[^\"]*\"|[^;]+)")
# RFC 8187 ext-value with UTF-8 and no language: attr-char or %XX only.
EXT_VALUE = re.compile(r"UTF-8''((?:[!#$&+\-.^_`|~0-9A-Za-z]|%[0-9A-F]{2})*)")

UNICODE_NAMES = [
    "€ rates.pdf",
    "日本語のファイル名.txt",
    "🎬 movie 🍿.mp4",
    "café au lait.jpg",
    "Ñandú (copy).png",
    "Ελληνικά.doc",
    "שלום.txt",
    "a\u0301e\u0301.txt",  # combining accents: kept as sent, not normalized
]
HOSTILE_NAMES = [
    "../../etc/passwd",
    "..\\..\\windows\\system32\\cmd.exe",
    'quote"in"name.txt',
    'a\\"b.txt',
    '"; filename="evil.exe',
    "x.txt\"; filename*=UTF-8''evil.exe",
    "100% real.txt",
    "%2e%2e%2fetc%2fpasswd",
    "%22.txt",
    "semi;colon=equals.txt",
    "comma, name.txt",
    "'single' quotes.txt",
    "a" * 251 + ".txt",  # 255 bytes
    "é" * 125 + '.txt"',  # 255 bytes of UTF-8, ending in a quote
    "/",
    "\\",
    ".",
    "..",
]


def parse(header: str) -> tuple[str, dict[str, str]]:
    """(type, parameters) of a header that must match DISPOSITION exactly."""
    assert "\r" not in header and "\n" not in header, header
    assert header.isascii(), header
    match = DISPOSITION.fullmatch(header)
    assert match, header
    params: dict[str, str] = {}
    for name, value in PARAM.findall(match.group("params")):
        assert name.lower() not in params, f"duplicate parameter {name} in {header}"
        params[name.lower()] = value[1:-1] if value.startswith('"') else value
    assert set(params) <= {"filename", "filename*"}, header
    return match.group("type"), params


def assert_safe_fallback(fallback: str) -> None:
    assert fallback.isascii()
    assert fallback.isprintable()
    for forbidden in ('"', "\\", "/", "%"):
        assert forbidden not in fallback, (forbidden, fallback)


def assert_name_comes_back(params: dict[str, str], name: str) -> None:
    """A safe fallback, and the name as sent but for path separators, which become "_" (no path
    reaches a save dialog)."""
    assert_safe_fallback(params["filename"])
    expected = name.replace("/", "_").replace("\\", "_")
    if "filename*" in params:
        assert decoded_ext_value(params["filename*"]) == expected
    else:
        assert params["filename"] == expected


def decoded_ext_value(value: str) -> str:
    match = EXT_VALUE.fullmatch(value)
    assert match, value
    return unquote(match.group(1), encoding="utf-8", errors="strict")


# --- unit: content_disposition -------------------------------------------------------------------


def test_no_name_is_plain_attachment() -> None:
    assert content_disposition(None, media_type="video/mp4", inline=False) == "attachment"
    assert content_disposition("", media_type="video/mp4", inline=False) == "attachment"


def test_no_name_inline_is_plain_inline() -> None:
    assert content_disposition(None, media_type="video/mp4", inline=True) == "inline"


def test_no_name_active_content_is_plain_attachment() -> None:
    assert content_disposition(None, media_type="text/html", inline=True) == "attachment"


def test_ascii_name_is_a_quoted_filename_only() -> None:
    header = content_disposition("holiday clip.mp4", media_type="video/mp4", inline=False)
    assert header == 'attachment; filename="holiday clip.mp4"'


@pytest.mark.parametrize(
    "media_type", ["video/mp4", "video/webm", "audio/mpeg", "image/png", "image/jpeg", "text/plain"]
)
def test_inline_for_passive_content(media_type: str) -> None:
    header = content_disposition("f.bin", media_type=media_type, inline=True)
    assert header == 'inline; filename="f.bin"'


@pytest.mark.parametrize(
    "media_type",
    [
        "text/html",
        "image/svg+xml",
        "application/pdf",
        "application/xhtml+xml",
        "text/xml",
        "application/xml",
        "text/javascript",
        "application/javascript",
        "application/rss+xml",
        "application/atom+xml",
    ],
)
def test_active_content_is_never_inline(media_type: str) -> None:
    assert is_active_content(media_type)
    header = content_disposition("page", media_type=media_type, inline=True)
    assert header == 'attachment; filename="page"'


@pytest.mark.parametrize("media_type", ["video/mp4", "image/png", "application/octet-stream"])
def test_passive_content_is_not_active(media_type: str) -> None:
    assert not is_active_content(media_type)


@pytest.mark.parametrize("name", UNICODE_NAMES)
def test_unicode_name_has_ascii_fallback_and_utf8_filename_star(name: str) -> None:
    header = content_disposition(name, media_type="application/octet-stream", inline=False)
    kind, params = parse(header)
    assert kind == "attachment"
    assert_safe_fallback(params["filename"])
    assert decoded_ext_value(params["filename*"]) == name
    # The fallback keeps the ASCII it can (the extension tells the save dialog the type).
    assert params["filename"].endswith(name.rsplit(".", 1)[1])
    # RFC 6266 appendix D: filename first, filename* after it, for older user agents.
    assert header.index("filename=") < header.index("filename*=")


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("inline", [False, True])
def test_hostile_name_never_injects(name: str, inline: bool) -> None:
    header = content_disposition(name, media_type="video/mp4", inline=inline)
    kind, params = parse(header)
    assert kind == ("inline" if inline else "attachment")
    assert_name_comes_back(params, name)


@pytest.mark.parametrize(
    "name",
    ["x\r\nSet-Cookie: a=b", "tab\there.txt", "nul\x00.txt", "del\x7f.txt", "\u2028line.txt"],
    ids=repr,
)
def test_control_characters_never_break_the_header(name: str) -> None:
    # Ingest refuses control characters, but the builder must be safe on its own.
    header = content_disposition(name, media_type="video/mp4", inline=False)
    _, params = parse(header)
    assert_safe_fallback(params["filename"])
    assert decoded_ext_value(params["filename*"]) == name


def test_percent_sign_goes_to_filename_star_only() -> None:
    header = content_disposition("100%.txt", media_type="text/plain", inline=False)
    _, params = parse(header)
    assert "%" not in params["filename"]
    assert params["filename*"] == "UTF-8''100%25.txt"


def test_every_ascii_character_round_trips() -> None:
    name = "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) not in "/\\")
    _, params = parse(content_disposition(name, media_type="video/mp4", inline=False))
    assert_safe_fallback(params["filename"])
    assert decoded_ext_value(params["filename*"]) == name


# --- through the API ------------------------------------------------------------------------------


async def upload(
    client: httpx.AsyncClient,
    *,
    name: str | None = None,
    content_type: str | None = None,
    data: bytes = b"\x00\x01 some bytes \xfe\xff",
) -> dict[str, Any]:
    headers: dict[str, str] = {}
    if name is not None:
        headers["X-Filename"] = quote(name, safe="")
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post("/api/v1/files/stream", content=data, headers=headers)
    assert response.status_code == 201, response.text
    meta: dict[str, Any] = response.json()
    assert meta["original_name"] == name
    return meta


async def disposition_of(client: httpx.AsyncClient, uid: str, **params: str) -> str:
    response = await client.get(f"/api/v1/files/{uid}", params=params)
    assert response.status_code == 200, response.text
    head = await client.head(f"/api/v1/files/{uid}", params=params)
    partial = await client.get(
        f"/api/v1/files/{uid}", params=params, headers={"Range": "bytes=0-0"}
    )
    assert partial.status_code == 206
    header = response.headers["content-disposition"]
    assert head.headers["content-disposition"] == header == partial.headers["content-disposition"]
    assert len(response.headers.get_list("content-disposition")) == 1
    return header


async def test_download_is_attachment_by_default(client: httpx.AsyncClient) -> None:
    meta = await upload(client, name="clip.mp4", content_type="video/mp4")
    assert await disposition_of(client, meta["uid"]) == 'attachment; filename="clip.mp4"'
    assert await disposition_of(client, meta["uid"], inline="false") == (
        'attachment; filename="clip.mp4"'
    )


async def test_download_inline_for_video(client: httpx.AsyncClient) -> None:
    meta = await upload(client, name="clip.mp4", content_type="video/mp4")
    assert await disposition_of(client, meta["uid"], inline="true") == 'inline; filename="clip.mp4"'


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("text/html", b"<!doctype html><script>alert(document.cookie)</script>"),
        (
            "image/svg+xml",
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        ),
        ("application/pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"),
    ],
)
async def test_download_inline_refused_for_active_content(
    client: httpx.AsyncClient, content_type: str, data: bytes
) -> None:
    meta = await upload(client, name="doc", content_type=content_type, data=data)
    assert meta["format"] == content_type
    header = await disposition_of(client, meta["uid"], inline="true")
    assert header == 'attachment; filename="doc"'
    response = await client.get(f"/api/v1/files/{meta['uid']}", params={"inline": "true"})
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name", UNICODE_NAMES)
async def test_download_unicode_name(client: httpx.AsyncClient, name: str) -> None:
    meta = await upload(client, name=name)
    kind, params = parse(await disposition_of(client, meta["uid"]))
    assert kind == "attachment"
    assert_safe_fallback(params["filename"])
    assert decoded_ext_value(params["filename*"]) == name


async def test_download_unicode_name_inline(client: httpx.AsyncClient) -> None:
    meta = await upload(client, name="€ rates.mp4", content_type="video/mp4")
    header = await disposition_of(client, meta["uid"], inline="true")
    assert header == "inline; filename=\"_ rates.mp4\"; filename*=UTF-8''%E2%82%AC%20rates.mp4"


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_download_hostile_name(client: httpx.AsyncClient, name: str) -> None:
    meta = await upload(client, name=name)
    kind, params = parse(await disposition_of(client, meta["uid"]))
    assert kind == "attachment"
    assert_name_comes_back(params, name)


async def test_download_255_byte_name(client: httpx.AsyncClient) -> None:
    name = "日" * 83 + ".mp4"  # 83 × 3 + 4 = 253 bytes, 87 characters
    name += "é"  # 255 bytes
    assert len(name.encode()) == 255
    meta = await upload(client, name=name)
    _, params = parse(await disposition_of(client, meta["uid"]))
    assert_safe_fallback(params["filename"])
    assert decoded_ext_value(params["filename*"]) == name


async def test_download_without_name_is_plain_attachment(client: httpx.AsyncClient) -> None:
    meta = await upload(client)
    assert meta["original_name"] is None
    assert await disposition_of(client, meta["uid"]) == "attachment"


async def test_download_without_name_inline_video(client: httpx.AsyncClient) -> None:
    meta = await upload(client, content_type="video/mp4")
    assert await disposition_of(client, meta["uid"], inline="true") == "inline"
