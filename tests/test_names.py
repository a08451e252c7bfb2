"""Unit tests of the ingest helpers: names.py (original names), checksum.py, sniff.py."""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import pytest
from starlette.datastructures import Headers

from mediasvc.config import Settings
from mediasvc.errors import BadRequest, ChecksumMismatch, InvalidFilename
from mediasvc.ingest import checksum
from mediasvc.ingest.names import (
    BIDI_CONTROLS,
    MAX_NAME_BYTES,
    extension_of,
    name_from_request,
    path_name,
    query_name,
    validate_name,
)
from mediasvc.ingest.sniff import choose_format, essence, is_multipart, sniff
from tests.helpers import assert_clean
from tests.mediafiles import SAMPLE_MP4, SAMPLE_WEBM

PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06"


def _name(
    headers: dict[str, str] | None = None, query: str | bytes = "", path: str | bytes | None = None
) -> str | None:
    # Starlette decodes header bytes as latin-1; build Headers the same way it does. The query
    # and the PUT path arrive as the raw bytes of the request line (ASGI query_string, raw_path).
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    query_string = query.encode() if isinstance(query, str) else query
    raw_path = None
    if path is not None:
        raw_path = b"/api/v1/files/stream/" + (path.encode() if isinstance(path, str) else path)
    return name_from_request(Headers(raw=raw), query_string, raw_path)


def _raw_utf8_header(value: str) -> str:
    """What Starlette hands us when a client puts raw UTF-8 bytes in a header."""
    return value.encode("utf-8").decode("latin-1")


# --- validate_name --------------------------------------------------------------------------------


def test_validate_name_accepts_exactly_255_bytes_of_utf8() -> None:
    name = "é" * 127 + "a"  # 254 + 1 bytes
    assert len(name.encode()) == MAX_NAME_BYTES == 255
    assert validate_name(name) == name


def test_validate_name_refuses_256_bytes_of_utf8() -> None:
    with pytest.raises(InvalidFilename):
        validate_name("é" * 128)  # 128 characters, 256 bytes
    with pytest.raises(InvalidFilename):
        validate_name("a" * 256)


def test_validate_name_refuses_an_empty_name() -> None:
    with pytest.raises(InvalidFilename):
        validate_name("")


@pytest.mark.parametrize("char", ["\r", "\n", "\r\n", "\t", "\x00", "\x1b", "\x7f", "\x85"])
def test_validate_name_refuses_control_characters(char: str) -> None:
    with pytest.raises(InvalidFilename):
        validate_name(f"evil{char}name.txt")


def test_validate_name_refuses_lone_surrogates() -> None:
    with pytest.raises(InvalidFilename):
        validate_name("bad\udc80.txt")


@pytest.mark.parametrize(
    "name",
    ["日本語 ファイル.mp4", "naïve café.txt", "emoji 🎬.mkv", "../../etc/passwd", "a/b\\c.txt"],
)
def test_validate_name_keeps_unicode_and_path_like_names_as_metadata(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("char", sorted(BIDI_CONTROLS), ids=lambda c: f"U+{ord(c):04X}")
def test_validate_name_refuses_bidi_controls(char: str) -> None:
    # "evil" RLO "gpj.exe" shows as "evilexe.jpg" in a save dialog.
    with pytest.raises(InvalidFilename, match="bidi"):
        validate_name(f"evil{char}gpj.exe")


def test_bidi_controls_are_unicodes_bidi_control_property() -> None:
    assert {f"U+{ord(c):04X}" for c in BIDI_CONTROLS} == {
        "U+061C",
        "U+200E",
        "U+200F",
        *(f"U+{n:04X}" for n in range(0x202A, 0x202F)),
        *(f"U+{n:04X}" for n in range(0x2066, 0x206A)),
    }


@pytest.mark.parametrize("name", ["שלום עולם.txt", "ملف صوتي.mp3", "mixed עברית and English.mkv"])
def test_validate_name_keeps_right_to_left_text(name: str) -> None:
    assert validate_name(name) == name


# --- extension_of ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "extension"),
    [
        ("Movie.MKV", "mkv"),
        ("archive.tar.gz", "gz"),
        (".bashrc", None),
        ("README", None),
        ("trailing.", None),
        ("dir.d/file", None),
        ("C:\\Videos\\clip.MP4", "mp4"),
        ("../../etc/passwd", None),
        ("фильм.AVI", "avi"),
        (None, None),
        ("", None),
    ],
)
def test_extension_is_lower_case_without_dot_from_the_last_segment(
    name: str | None, extension: str | None
) -> None:
    assert extension_of(name) == extension


# --- name_from_request: sources and their order ---------------------------------------------------


def test_x_filename_wins_over_every_other_source() -> None:
    name = _name(
        {"X-Filename": "x.bin", "Content-Disposition": 'attachment; filename="cd.bin"'},
        "filename=query.bin",
        "path.bin",
    )
    assert name == "x.bin"


def test_content_disposition_wins_over_query_and_path() -> None:
    headers = {"Content-Disposition": 'attachment; filename="cd.bin"'}
    assert _name(headers, "filename=query.bin", "path.bin") == "cd.bin"


def test_query_filename_wins_over_put_path() -> None:
    assert _name({}, "filename=query.bin", "path.bin") == "query.bin"


def test_put_path_is_the_last_resort() -> None:
    assert _name({}, "", "path.bin") == "path.bin"


def test_no_source_gives_no_name() -> None:
    assert _name({}, "", None) is None


def test_content_disposition_without_filename_falls_through_to_query() -> None:
    assert _name({"Content-Disposition": "attachment"}, "filename=query.bin") == "query.bin"


def test_x_filename_is_percent_decoded_utf8() -> None:
    assert _name({"X-Filename": "%E6%97%A5%E6%9C%AC%20film.mp4"}) == "日本 film.mp4"


def test_x_filename_keeps_a_plus_sign() -> None:
    # Percent-encoding, not form encoding: '+' is a plus, not a space.
    assert _name({"X-Filename": "a+b.txt"}) == "a+b.txt"


@pytest.mark.parametrize("value", ["%FF.txt", "bad%C3.txt", "%ZZ.txt", "trunc%2", "50%.txt"])
def test_x_filename_with_invalid_percent_encoding_is_refused(value: str) -> None:
    with pytest.raises(InvalidFilename):
        _name({"X-Filename": value})


def test_x_filename_with_raw_utf8_bytes_is_read_as_utf8_not_latin1() -> None:
    # `curl -H 'X-Filename: café.txt'` sends raw UTF-8; storing "cafÃ©.txt" would be wrong.
    assert _name({"X-Filename": _raw_utf8_header("café.txt")}) == "café.txt"


@pytest.mark.parametrize("value", ["a%0Db.txt", "a%0Ab.txt", "a%00b.txt", "a%09b.txt"])
def test_x_filename_with_encoded_control_characters_is_refused(value: str) -> None:
    with pytest.raises(InvalidFilename):
        _name({"X-Filename": value})


def test_content_disposition_filename_star_is_rfc8187_utf8() -> None:
    headers = {"Content-Disposition": "attachment; filename*=UTF-8''na%C3%AFve%20caf%C3%A9.txt"}
    assert _name(headers) == "naïve café.txt"


def test_content_disposition_filename_star_wins_when_it_comes_first() -> None:
    value = "attachment; filename*=UTF-8''na%C3%AFve.txt; filename=\"fallback.txt\""
    assert _name({"Content-Disposition": value}) == "naïve.txt"


def test_content_disposition_filename_star_wins_when_it_comes_last() -> None:
    # RFC 6266 §4.3: filename* is preferred whatever the order (senders put filename first).
    value = "attachment; filename=\"fallback.txt\"; filename*=UTF-8''na%C3%AFve.txt"
    assert _name({"Content-Disposition": value}) == "naïve.txt"


def test_content_disposition_quoted_filename_with_escapes() -> None:
    assert _name({"Content-Disposition": r'attachment; filename="a\"b.txt"'}) == 'a"b.txt'


def test_content_disposition_filename_star_with_invalid_utf8_is_refused() -> None:
    # Not silently replaced with U+FFFD: the name would no longer be what the client sent.
    with pytest.raises(InvalidFilename):
        _name({"Content-Disposition": "attachment; filename*=UTF-8''bad%FF.txt"})


def test_content_disposition_filename_star_with_control_characters_is_refused() -> None:
    with pytest.raises(InvalidFilename):
        _name({"Content-Disposition": "attachment; filename*=UTF-8''a%0D%0Ab.txt"})


def test_query_filename_with_newline_is_refused() -> None:
    with pytest.raises(InvalidFilename):
        _name({}, "filename=a%0Ab.txt")


def test_put_path_name_over_255_bytes_is_refused() -> None:
    with pytest.raises(InvalidFilename):
        _name({}, "", "x" * 256)


@pytest.mark.parametrize("raw", [b"bad%FF.txt", b"bad%C3.txt", b"bad\xff.txt", b"%ED%A0%80.txt"])
def test_put_path_that_is_not_utf8_is_refused(raw: bytes) -> None:
    # Starlette's decoded path parameter would carry U+FFFD instead: the name would be a lie.
    with pytest.raises(InvalidFilename, match="not valid UTF-8"):
        _name({}, "", raw)


def test_put_path_is_percent_decoded_utf8_from_the_raw_path() -> None:
    assert path_name(b"/api/v1/files/stream/caf%C3%A9%20cr%C3%A8me.txt") == "café crème.txt"
    assert path_name("/api/v1/files/stream/日本.mp4".encode()) == "日本.mp4"
    assert path_name(b"/x/a+b.txt") == "a+b.txt"  # a path is not form-encoded
    assert path_name(b"/x/50%.txt") == "50%.txt"  # a '%' that starts no escape stays


@pytest.mark.parametrize("raw", [b"filename=bad%FF.txt", b"filename=bad\xff.txt", b"filename=%C3"])
def test_query_filename_that_is_not_utf8_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidFilename, match="not valid UTF-8"):
        _name({}, raw)


def test_query_filename_is_form_decoded_utf8_from_the_raw_query() -> None:
    assert query_name(b"filename=caf%C3%A9+cr%C3%A8me.txt") == "café crème.txt"
    assert query_name("filename=日本.mp4".encode()) == "日本.mp4"
    assert query_name(b"max_downloads=3&file%6eame=a.txt&filename=b.txt") == "b.txt"  # last wins
    assert query_name(b"filenames=a.txt&max_downloads=3") is None
    assert query_name(b"") is None


@pytest.mark.parametrize(
    ("headers", "query", "path"),
    [
        ({"X-Filename": "evil%E2%80%AEgpj.exe"}, "", None),
        ({"Content-Disposition": "attachment; filename*=UTF-8''evil%E2%80%AEgpj.exe"}, "", None),
        (
            {"Content-Disposition": _raw_utf8_header('attachment; filename="evil\u202egpj.exe"')},
            "",
            None,
        ),
        ({}, "filename=evil%E2%80%AEgpj.exe", None),
        ({}, "", "evil%E2%80%AEgpj.exe"),
    ],
    ids=["x-filename", "filename*", "filename", "query", "put-path"],
)
def test_every_raw_upload_source_refuses_bidi_controls(
    headers: dict[str, str], query: str, path: str | None
) -> None:
    with pytest.raises(InvalidFilename, match="bidi"):
        _name(headers, query, path)


def test_content_disposition_plain_filename_is_utf8_not_latin1() -> None:
    headers = {"Content-Disposition": _raw_utf8_header('attachment; filename="café.txt"')}
    assert _name(headers) == "café.txt"
    with pytest.raises(InvalidFilename):  # a lone latin-1 byte is not UTF-8
        _name({"Content-Disposition": 'attachment; filename="caf\xe9.txt"'})


# --- one rule for every source, through the service -------------------------------------------

NAME_SOURCES = [
    "x-filename",
    "content-disposition-filename*",
    "content-disposition-filename",
    "query",
    "put-path",
    "multipart-filename",
    "multipart-filename*",
]
BOUNDARY = "names-boundary-5c1e"


def _upload_naming(source: str, name: bytes) -> dict[str, Any]:
    """Keyword arguments of ``client.request`` for an upload whose name, from ``source``, is
    these bytes (percent-encoded where the source is, as they are elsewhere)."""
    quoted = quote_from_bytes(name, safe="")
    if source.startswith("multipart"):
        if source == "multipart-filename":
            parameter = b'filename="' + name + b'"'
        else:
            parameter = f"filename*=UTF-8''{quoted}".encode()
        body = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '.encode()
            + parameter
            + f"\r\n\r\nbytes\r\n--{BOUNDARY}--\r\n".encode()
        )
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
        return {
            "method": "POST",
            "url": "/api/v1/files",
            "content": body,
            "headers": {"Content-Type": content_type},
        }
    upload: dict[str, Any] = {"method": "POST", "url": "/api/v1/files/stream", "content": b"x"}
    if source == "x-filename":
        upload["headers"] = {"X-Filename": quoted}
    elif source == "content-disposition-filename*":
        upload["headers"] = {"Content-Disposition": f"attachment; filename*=UTF-8''{quoted}"}
    elif source == "content-disposition-filename":
        upload["headers"] = {"Content-Disposition": b'attachment; filename="' + name + b'"'}
    elif source == "query":
        upload["url"] += f"?filename={quoted}"
    else:
        upload.update(method="PUT", url=f"/api/v1/files/stream/{quoted}")
    return upload


@pytest.mark.parametrize("source", NAME_SOURCES)
async def test_every_name_source_keeps_utf8_names(
    client: httpx.AsyncClient, settings: Settings, source: str
) -> None:
    response = await client.request(**_upload_naming(source, "café ✓.txt".encode()))
    assert response.status_code == 201, response.text
    meta = response.json()
    assert meta["original_name"] == "café ✓.txt"
    await assert_clean(settings, {meta["uid"]: None})


@pytest.mark.parametrize(
    "name",
    [b"bad\xff.txt", b"cut\xc3.txt", b"\xed\xa0\x80surrogate.txt", b"caf\xe9-latin1.txt"],
    ids=["ff", "truncated", "encoded-surrogate", "latin-1"],
)
@pytest.mark.parametrize("source", NAME_SOURCES)
async def test_every_name_source_refuses_invalid_utf8(
    client: httpx.AsyncClient, settings: Settings, source: str, name: bytes
) -> None:
    """Not stored with U+FFFD (PUT path, ?filename=) nor as latin-1 (filename, multipart)."""
    response = await client.request(**_upload_naming(source, name))
    _assert_invalid_name(response)
    await assert_clean(settings, {})


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200f"], ids=["RLO", "LRI", "RLM"])
@pytest.mark.parametrize("source", NAME_SOURCES)
async def test_every_name_source_refuses_bidi_controls(
    client: httpx.AsyncClient, settings: Settings, source: str, char: str
) -> None:
    response = await client.request(**_upload_naming(source, f"evil{char}gpj.exe".encode()))
    _assert_invalid_name(response)
    await assert_clean(settings, {})


def _assert_invalid_name(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:mediasvc:problem:invalid-filename"


# --- checksum -------------------------------------------------------------------------------------


def _digest_headers(**values: str) -> Headers:
    return Headers(
        raw=[(k.replace("_", "-").lower().encode(), v.encode()) for k, v in values.items()]
    )


def test_x_checksum_sha256_hex_is_normalised_to_lower_case() -> None:
    digest = hashlib.sha256(b"abc").hexdigest()
    assert checksum.expected_sha256(_digest_headers(x_checksum_sha256=digest.upper())) == [digest]


@pytest.mark.parametrize("value", ["abc", "g" * 64, "0" * 63, "0" * 65, "sha256:" + "0" * 64])
def test_malformed_x_checksum_sha256_is_a_bad_request(value: str) -> None:
    with pytest.raises(BadRequest):
        checksum.expected_sha256(_digest_headers(x_checksum_sha256=value))


def test_repr_digest_sha256_is_decoded_from_base64() -> None:
    raw = hashlib.sha256(b"abc").digest()
    value = f"sha-256=:{base64.b64encode(raw).decode()}:"
    assert checksum.expected_sha256(_digest_headers(repr_digest=value)) == [raw.hex()]


def test_repr_digest_ignores_other_algorithms_but_checks_sha256() -> None:
    raw = hashlib.sha256(b"abc").digest()
    sha512 = base64.b64encode(hashlib.sha512(b"abc").digest()).decode()
    value = f"sha-512=:{sha512}:, sha-256=:{base64.b64encode(raw).decode()}:"
    assert checksum.expected_sha256(_digest_headers(repr_digest=value)) == [raw.hex()]


@pytest.mark.parametrize(
    "value",
    [
        "sha-256=abc",  # not a byte sequence
        "sha-256=:not base64!:",
        "sha-256=:" + base64.b64encode(b"short").decode() + ":",  # not 32 bytes
        "garbage",
    ],
)
def test_malformed_repr_digest_is_a_bad_request(value: str) -> None:
    with pytest.raises(BadRequest):
        checksum.expected_sha256(_digest_headers(repr_digest=value))


def test_verify_raises_checksum_mismatch_for_a_wrong_digest() -> None:
    actual = hashlib.sha256(b"abc").hexdigest()
    checksum.verify([actual], actual)
    with pytest.raises(ChecksumMismatch):
        checksum.verify([hashlib.sha256(b"abd").hexdigest()], actual)


def test_repr_digest_header_round_trips() -> None:
    digest = hashlib.sha256(b"abc").hexdigest()
    header = checksum.repr_digest_header(digest)
    assert checksum.expected_sha256(_digest_headers(repr_digest=header)) == [digest]


# --- sniff ----------------------------------------------------------------------------------------


def test_sniff_recognises_mp4_png_webm_and_text() -> None:
    assert sniff(SAMPLE_MP4.read_bytes()[:8192]) == "video/mp4"
    assert sniff(PNG_HEADER) == "image/png"
    assert sniff(SAMPLE_WEBM.read_bytes()[:8192]) == "video/webm"
    assert sniff("plain text, ünïcödé\n".encode()) == "text/plain"


def test_sniff_of_nothing_or_binary_noise_is_octet_stream() -> None:
    assert sniff(b"") == "application/octet-stream"
    assert sniff(b"\x00\x01\x02\x03\xfe\xff") == "application/octet-stream"


def test_sniff_of_text_cut_inside_a_multibyte_character_is_still_text() -> None:
    head = ("é" * 10).encode()[:-1]
    assert sniff(head) == "text/plain"


@pytest.mark.parametrize(
    "declared",
    [
        None,
        "",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
        "text/plain",
        "text/plain; charset=utf-8",
        "nonsense",
    ],
)
def test_generic_or_invalid_declared_types_are_sniffed(declared: str | None) -> None:
    assert choose_format(declared, PNG_HEADER) == "image/png"


@pytest.mark.parametrize(
    ("declared", "stored"),
    [
        ("audio/ogg", "audio/ogg"),
        ("Audio/OGG; codecs=opus", "audio/ogg"),
        ("video/mp4", "video/mp4"),
    ],
)
def test_specific_declared_types_are_kept_as_their_essence(declared: str, stored: str) -> None:
    assert choose_format(declared, PNG_HEADER) == stored


def test_essence_and_is_multipart() -> None:
    assert essence("Multipart/Form-Data; boundary=x") == "multipart/form-data"
    assert is_multipart("multipart/form-data; boundary=x")
    assert not is_multipart("multipart/mixed; boundary=x")
    assert not is_multipart(None)
    assert not is_multipart("application/octet-stream")
