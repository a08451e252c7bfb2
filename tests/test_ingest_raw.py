"""Raw-body uploads (POST/PUT /api/v1/files/stream[/{name}]): round trips, names, types."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from mediasvc.config import Settings
from tests.conftest import leftovers
from tests.helpers import (
    BATCH,
    METADATA_FIELDS,
    PNG_HEADER,
    assert_created,
    assert_downloads_exactly,
    assert_stored_at_uid_path,
    client_for,
    files_outside,
    random_bytes,
    small_chunks,
    upload,
)
from tests.mediafiles import SAMPLE_MP4

# --- byte-exact round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [1, BATCH - 1, BATCH, BATCH + 1, 3 * BATCH, 5 * BATCH + 12345], ids=lambda s: f"{s}B"
)
async def test_post_stream_round_trip_is_byte_exact(
    client: httpx.AsyncClient, settings: Settings, size: int
) -> None:
    body = random_bytes(size, seed=size)
    meta = await upload(client, "POST", "/api/v1/files/stream", content=body)
    assert meta["size"] == size
    assert meta["sha256"] == hashlib.sha256(body).hexdigest()
    await assert_downloads_exactly(client, meta, body)
    assert_stored_at_uid_path(settings.media_root, meta["uid"], body)


async def test_put_stream_round_trip_is_byte_exact(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    body = random_bytes(300_000, seed=2)
    meta = await upload(
        client, "PUT", "/api/v1/files/stream", content=body, headers={"X-Filename": "put.bin"}
    )
    assert meta["original_name"] == "put.bin"
    assert meta["size"] == len(body)
    await assert_downloads_exactly(client, meta, body)
    assert_stored_at_uid_path(settings.media_root, meta["uid"], body)


async def test_put_stream_with_filename_round_trip_takes_the_name_from_the_path(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    body = SAMPLE_MP4.read_bytes()
    meta = await upload(client, "PUT", "/api/v1/files/stream/sample.mp4", content=body)
    assert meta["original_name"] == "sample.mp4"
    assert meta["extension"] == "mp4"
    assert meta["format"] == "video/mp4"
    await assert_downloads_exactly(client, meta, body)
    assert_stored_at_uid_path(settings.media_root, meta["uid"], body)


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("POST", "/api/v1/files/stream"),
        ("PUT", "/api/v1/files/stream"),
        ("PUT", "/api/v1/files/stream/chunked.bin"),
    ],
)
async def test_chunked_body_in_many_small_chunks_round_trips(
    client: httpx.AsyncClient, settings: Settings, method: str, url: str
) -> None:
    body = random_bytes(4 * BATCH + 777, seed=3)  # ~530 small chunks, across batch borders
    sent_headers: list[httpx.Headers] = []

    async def record(request: httpx.Request) -> None:
        sent_headers.append(request.headers)

    client.event_hooks["request"].append(record)
    meta = await upload(client, method, url, content=small_chunks(body))
    assert "content-length" not in sent_headers[0]
    assert sent_headers[0]["transfer-encoding"] == "chunked"
    assert meta["size"] == len(body)
    assert meta["sha256"] == hashlib.sha256(body).hexdigest()
    await assert_downloads_exactly(client, meta, body)
    assert_stored_at_uid_path(settings.media_root, meta["uid"], body)


async def test_single_byte_chunks_round_trip(client: httpx.AsyncClient) -> None:
    body = random_bytes(3000, seed=4)
    meta = await upload(
        client, "POST", "/api/v1/files/stream", content=small_chunks(body, max_chunk=1)
    )
    await assert_downloads_exactly(client, meta, body)


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("POST", "/api/v1/files/stream"),
        ("PUT", "/api/v1/files/stream"),
        ("PUT", "/api/v1/files/stream/empty.txt"),
    ],
)
async def test_zero_byte_file_is_a_valid_upload(
    client: httpx.AsyncClient, settings: Settings, method: str, url: str
) -> None:
    meta = await upload(client, method, url, content=b"")
    assert meta["size"] == 0
    assert meta["sha256"] == hashlib.sha256(b"").hexdigest()
    assert meta["downloads"] == 0
    await assert_downloads_exactly(client, meta, b"")
    assert_stored_at_uid_path(settings.media_root, meta["uid"], b"")


async def test_zero_byte_chunked_upload_is_valid(client: httpx.AsyncClient) -> None:
    async def nothing() -> AsyncIterator[bytes]:
        for _ in ():
            yield b""

    meta = await upload(client, "POST", "/api/v1/files/stream", content=nothing())
    assert meta["size"] == 0
    await assert_downloads_exactly(client, meta, b"")


# --- the 201 response -----------------------------------------------------------------------------


async def test_upload_response_has_every_metadata_field_and_location(
    client: httpx.AsyncClient,
) -> None:
    body = b"hello, metadata\n"
    response = await client.post(
        "/api/v1/files/stream", content=body, headers={"X-Filename": "Notes.TXT"}
    )
    meta = assert_created(response)
    assert meta["original_name"] == "Notes.TXT"
    assert meta["extension"] == "txt"
    assert meta["format"] == "text/plain"
    assert meta["size"] == len(body)
    assert meta["sha256"] == hashlib.sha256(body).hexdigest()
    created_at = datetime.fromisoformat(meta["created_at"])
    assert created_at.tzinfo is not None
    assert meta["expires_at"] is None
    assert meta["max_downloads"] is None
    assert meta["downloads"] == 0
    assert meta["local"] is True
    assert meta["cloud_status"] == "pending"
    assert meta["cloud_path"] is None
    assert meta["download_url"] == f"http://testserver/api/v1/files/{meta['uid']}"
    assert isinstance(meta["delete_token"], str) and len(meta["delete_token"]) >= 32

    # The Location answers, and /metadata agrees with the upload response minus the token.
    located = await client.get(response.headers["location"])
    assert located.content == body
    stored = (await client.get(f"/api/v1/files/{meta['uid']}/metadata")).json()
    assert set(stored) == METADATA_FIELDS
    # The cloud push runs in the background and may have moved these on since the 201.
    moving = {"cloud_status", "cloud_path", "local", "delete_token"}
    moving |= {"probe_status", "probe_error", "media", "preview_url"}  # so does the probe
    assert {k: v for k, v in stored.items() if k not in moving} == {
        k: v for k, v in meta.items() if k not in moving
    }
    assert stored["cloud_status"] in {"pending", "uploading", "uploaded", "failed"}


async def test_delete_token_from_the_upload_deletes_the_file(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    meta = await upload(client, "POST", "/api/v1/files/stream", content=b"to delete")
    response = await client.delete(
        f"/api/v1/files/{meta['uid']}", headers={"X-Delete-Token": meta["delete_token"]}
    )
    assert response.status_code == 204
    assert leftovers(settings.media_root) == []


async def test_upload_options_are_recorded(client: httpx.AsyncClient) -> None:
    meta = await upload(
        client,
        "POST",
        "/api/v1/files/stream",
        content=b"limited",
        params={"max_downloads": 3, "expires_in": 3600},
    )
    assert meta["max_downloads"] == 3
    created_at = datetime.fromisoformat(meta["created_at"])
    assert datetime.fromisoformat(meta["expires_at"]) - created_at == timedelta(seconds=3600)


@pytest.mark.parametrize(
    ("method", "url"),
    [("POST", "/api/v1/files/stream"), ("PUT", "/api/v1/files/stream/x.bin")],
)
@pytest.mark.parametrize(
    "params",
    [
        {"max_downloads": 1},
        {"max_downloads": 1_000_000},
        {"expires_in": 1},
        {"expires_in": 315_360_000},
    ],
    ids=["max_downloads=1", "max_downloads=1e6", "expires_in=1", "expires_in=10y"],
)
async def test_upload_options_at_their_bounds_are_accepted(
    client: httpx.AsyncClient, method: str, url: str, params: dict[str, int]
) -> None:
    meta = await upload(client, method, url, content=b"bounds", params=params)
    if "max_downloads" in params:
        assert meta["max_downloads"] == params["max_downloads"]
    else:
        assert meta["expires_at"] is not None


async def test_download_url_uses_public_base_url(
    client: httpx.AsyncClient, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(public_base_url="https://media.example.com/")
    async with client_for(settings) as http:
        meta = await upload(http, "POST", "/api/v1/files/stream", content=b"abc")
        assert meta["download_url"] == f"https://media.example.com/api/v1/files/{meta['uid']}"
        listed = (await http.get("/api/v1/files")).json()["items"]
        assert [item["download_url"] for item in listed] == [meta["download_url"]]


# --- names ----------------------------------------------------------------------------------------


async def test_name_order_x_filename_first(client: httpx.AsyncClient) -> None:
    meta = await upload(
        client,
        "PUT",
        "/api/v1/files/stream/path.bin",
        content=b"x",
        params={"filename": "query.bin"},
        headers={
            "X-Filename": "header.bin",
            "Content-Disposition": 'attachment; filename="cd.bin"',
        },
    )
    assert meta["original_name"] == "header.bin"


async def test_name_order_content_disposition_second(client: httpx.AsyncClient) -> None:
    meta = await upload(
        client,
        "PUT",
        "/api/v1/files/stream/path.bin",
        content=b"x",
        params={"filename": "query.bin"},
        headers={"Content-Disposition": 'attachment; filename="cd.bin"'},
    )
    assert meta["original_name"] == "cd.bin"


async def test_name_order_query_third(client: httpx.AsyncClient) -> None:
    meta = await upload(
        client, "PUT", "/api/v1/files/stream/path.bin", content=b"x", params={"filename": "q.BIN"}
    )
    assert meta["original_name"] == "q.BIN"
    assert meta["extension"] == "bin"


async def test_name_order_put_path_last(client: httpx.AsyncClient) -> None:
    meta = await upload(client, "PUT", "/api/v1/files/stream/path.bin", content=b"x")
    assert meta["original_name"] == "path.bin"


@pytest.mark.parametrize(
    ("method", "url"), [("POST", "/api/v1/files/stream"), ("PUT", "/api/v1/files/stream")]
)
async def test_no_name_anywhere_gives_null_name_and_extension(
    client: httpx.AsyncClient, method: str, url: str
) -> None:
    meta = await upload(client, method, url, content=b"anonymous")
    assert meta["original_name"] is None
    assert meta["extension"] is None


async def test_content_disposition_filename_star_beats_filename(client: httpx.AsyncClient) -> None:
    value = "attachment; filename=\"fallback.txt\"; filename*=UTF-8''%E2%82%AC%20rates.txt"
    meta = await upload(
        client, "POST", "/api/v1/files/stream", content=b"x", headers={"Content-Disposition": value}
    )
    assert meta["original_name"] == "€ rates.txt"


async def test_content_disposition_without_filename_falls_through_to_query(
    client: httpx.AsyncClient,
) -> None:
    meta = await upload(
        client,
        "POST",
        "/api/v1/files/stream",
        content=b"x",
        params={"filename": "q.txt"},
        headers={"Content-Disposition": "attachment"},
    )
    assert meta["original_name"] == "q.txt"


@pytest.mark.parametrize(
    ("name", "extension"),
    [
        ("Movie.MKV", "mkv"),
        ("archive.tar.gz", "gz"),
        (".bashrc", None),
        ("Makefile", None),
        ("photo.JPEG", "jpeg"),
    ],
)
async def test_extension_is_lower_case_without_dot(
    client: httpx.AsyncClient, name: str, extension: str | None
) -> None:
    meta = await upload(
        client, "POST", "/api/v1/files/stream", content=b"x", headers={"X-Filename": quote(name)}
    )
    assert meta["original_name"] == name
    assert meta["extension"] == extension


UNICODE_NAME = "日本語 ファイル – naïve ☃ 🎬.MP4"


async def test_unicode_name_from_percent_encoded_x_filename(client: httpx.AsyncClient) -> None:
    meta = await upload(
        client,
        "POST",
        "/api/v1/files/stream",
        content=b"x",
        headers={"X-Filename": quote(UNICODE_NAME, safe="")},
    )
    assert meta["original_name"] == UNICODE_NAME
    assert meta["extension"] == "mp4"


async def test_unicode_name_from_raw_utf8_x_filename(client: httpx.AsyncClient) -> None:
    # `curl -H 'X-Filename: naïve.txt'` sends raw UTF-8 bytes; the name must not turn into mojibake.
    meta = await upload(
        client,
        "POST",
        "/api/v1/files/stream",
        content=b"x",
        headers=[(b"X-Filename", "naïve ☃.txt".encode())],
    )
    assert meta["original_name"] == "naïve ☃.txt"


async def test_unicode_name_from_content_disposition_filename_star(
    client: httpx.AsyncClient,
) -> None:
    value = f"attachment; filename*=UTF-8''{quote(UNICODE_NAME, safe='')}"
    meta = await upload(
        client, "POST", "/api/v1/files/stream", content=b"x", headers={"Content-Disposition": value}
    )
    assert meta["original_name"] == UNICODE_NAME


async def test_unicode_name_from_query(client: httpx.AsyncClient) -> None:
    meta = await upload(
        client, "POST", "/api/v1/files/stream", content=b"x", params={"filename": UNICODE_NAME}
    )
    assert meta["original_name"] == UNICODE_NAME


async def test_unicode_name_from_put_path(client: httpx.AsyncClient) -> None:
    meta = await upload(
        client, "PUT", f"/api/v1/files/stream/{quote(UNICODE_NAME, safe='')}", content=b"x"
    )
    assert meta["original_name"] == UNICODE_NAME


async def test_name_of_exactly_255_utf8_bytes_is_accepted(client: httpx.AsyncClient) -> None:
    name = "é" * 125 + "a.mkv"  # 250 + 5 bytes
    assert len(name.encode()) == 255
    meta = await upload(
        client, "POST", "/api/v1/files/stream", content=b"x", headers={"X-Filename": quote(name)}
    )
    assert meta["original_name"] == name
    meta = await upload(client, "PUT", f"/api/v1/files/stream/{quote(name)}", content=b"x")
    assert meta["original_name"] == name


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "..", "a/../../../b.txt", "..\\..\\win.ini"]
)
@pytest.mark.parametrize("source", ["x-filename", "content-disposition", "query"])
async def test_hostile_name_is_metadata_only(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path, name: str, source: str
) -> None:
    kwargs: dict[str, Any] = {}
    if source == "x-filename":
        kwargs["headers"] = {"X-Filename": quote(name, safe="")}
    elif source == "content-disposition":
        kwargs["headers"] = {
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}"
        }
    else:
        kwargs["params"] = {"filename": name}
    body = b"not a password file"
    meta = await upload(client, "POST", "/api/v1/files/stream", content=body, **kwargs)
    assert meta["original_name"] == name
    assert_stored_at_uid_path(settings.media_root, meta["uid"], body)
    assert files_outside(tmp_path, settings.media_root) == []
    await assert_downloads_exactly(client, meta, body)


# --- content types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",  # curl --data-binary's default
        "application/octet-stream",
        "text/plain",
        None,
    ],
)
async def test_generic_content_type_is_sniffed_from_the_bytes(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    mp4 = SAMPLE_MP4.read_bytes()
    meta = await upload(client, "POST", "/api/v1/files/stream", content=mp4, headers=headers)
    assert meta["format"] == "video/mp4"
    await assert_downloads_exactly(client, meta, mp4)

    png = PNG_HEADER + random_bytes(5000)
    meta = await upload(client, "PUT", "/api/v1/files/stream/p", content=png, headers=headers)
    assert meta["format"] == "image/png"


async def test_form_urlencoded_body_is_stored_as_sent_not_parsed_as_a_form(
    client: httpx.AsyncClient,
) -> None:
    body = b"a=1&b=%20two&c"
    meta = await upload(
        client,
        "POST",
        "/api/v1/files/stream",
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert meta["format"] == "text/plain"
    await assert_downloads_exactly(client, meta, body)


async def test_missing_content_type_with_text_is_text_plain(client: httpx.AsyncClient) -> None:
    meta = await upload(client, "POST", "/api/v1/files/stream", content="plain ünïcode\n".encode())
    assert meta["format"] == "text/plain"


async def test_missing_content_type_with_unknown_binary_is_octet_stream(
    client: httpx.AsyncClient,
) -> None:
    meta = await upload(client, "POST", "/api/v1/files/stream", content=b"\x00\x01\x02\xfe\xff" * 9)
    assert meta["format"] == "application/octet-stream"


async def test_zero_byte_file_is_octet_stream(client: httpx.AsyncClient) -> None:
    meta = await upload(client, "POST", "/api/v1/files/stream", content=b"")
    assert meta["format"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("declared", "stored"),
    [
        ("audio/ogg", "audio/ogg"),
        ("audio/ogg; codecs=opus", "audio/ogg"),
        ("Video/MP4", "video/mp4"),
        ("application/pdf", "application/pdf"),
    ],
)
async def test_specific_content_type_is_kept(
    client: httpx.AsyncClient, declared: str, stored: str
) -> None:
    # Even when the bytes say otherwise: a specific type is the client's statement.
    meta = await upload(
        client,
        "POST",
        "/api/v1/files/stream",
        content=PNG_HEADER,
        headers={"Content-Type": declared},
    )
    assert meta["format"] == stored
    download = await client.get(f"/api/v1/files/{meta['uid']}")
    assert download.headers["content-type"].split(";")[0] == stored
    assert download.headers["x-content-type-options"] == "nosniff"


async def test_chunked_sniffing_sees_the_first_bytes_even_in_tiny_chunks(
    client: httpx.AsyncClient,
) -> None:
    head = SAMPLE_MP4.read_bytes()[: 2 * BATCH]
    meta = await upload(
        client, "POST", "/api/v1/files/stream", content=small_chunks(head, max_chunk=5)
    )
    assert meta["format"] == "video/mp4"
    await assert_downloads_exactly(client, meta, head)
