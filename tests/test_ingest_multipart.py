"""multipart/form-data uploads (POST /api/v1/files): round trips, the `file` part, names, types."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from mediasvc.config import Settings
from tests.conftest import leftovers
from tests.helpers import (
    BATCH,
    BOUNDARY,
    PNG_HEADER,
    assert_created,
    assert_downloads_exactly,
    assert_stored_at_uid_path,
    client_for,
    files_outside,
    form_part,
    multipart_body,
    multipart_headers,
    random_bytes,
    small_chunks,
    upload,
)
from tests.mediafiles import SAMPLE_MP4


async def post_form(client: httpx.AsyncClient, body: Any, **kwargs: Any) -> httpx.Response:
    headers = {**multipart_headers(), **kwargs.pop("headers", {})}
    return await client.post("/api/v1/files", content=body, headers=headers, **kwargs)


# --- byte-exact round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [1, BATCH - 1, BATCH, BATCH + 1, 3 * BATCH + 4321], ids=lambda s: f"{s}B"
)
async def test_multipart_round_trip_is_byte_exact(
    client: httpx.AsyncClient, settings: Settings, size: int
) -> None:
    body = random_bytes(size, seed=size)
    meta = await upload(
        client, "POST", "/api/v1/files", files={"file": ("clip.bin", body, "application/x-raw")}
    )
    assert meta["size"] == size
    assert meta["sha256"] == hashlib.sha256(body).hexdigest()
    assert meta["original_name"] == "clip.bin"
    assert meta["extension"] == "bin"
    await assert_downloads_exactly(client, meta, body)
    assert_stored_at_uid_path(settings.media_root, meta["uid"], body)


async def test_multipart_response_has_every_metadata_field_and_location(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/api/v1/files", files={"file": ("Song.OGG", b"OggS\x00\x02" + b"\x00" * 100, "audio/ogg")}
    )
    meta = assert_created(response)
    assert meta["original_name"] == "Song.OGG"
    assert meta["extension"] == "ogg"
    assert meta["format"] == "audio/ogg"
    assert meta["size"] == 106
    assert meta["local"] is True
    assert meta["cloud_status"] == "pending"
    assert meta["cloud_path"] is None
    assert meta["downloads"] == 0
    assert meta["expires_at"] is None
    assert meta["max_downloads"] is None
    assert meta["download_url"] == f"http://testserver/api/v1/files/{meta['uid']}"
    assert meta["delete_token"]


async def test_multipart_download_url_uses_public_base_url(
    client: httpx.AsyncClient, make_settings: Callable[..., Settings]
) -> None:
    async with client_for(make_settings(public_base_url="https://cdn.example.org")) as http:
        meta = await upload(http, "POST", "/api/v1/files", files={"file": ("a.txt", b"a")})
        assert meta["download_url"] == f"https://cdn.example.org/api/v1/files/{meta['uid']}"


async def test_multipart_sample_mp4_round_trips_and_is_video_mp4(client: httpx.AsyncClient) -> None:
    mp4 = SAMPLE_MP4.read_bytes()
    meta = await upload(
        client,
        "POST",
        "/api/v1/files",
        files={"file": ("sample.mp4", mp4, "application/octet-stream")},
    )
    assert meta["format"] == "video/mp4"
    assert meta["extension"] == "mp4"
    await assert_downloads_exactly(client, meta, mp4)


async def test_multipart_zero_byte_file_is_valid(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    meta = await upload(client, "POST", "/api/v1/files", files={"file": ("empty.txt", b"")})
    assert meta["size"] == 0
    assert meta["sha256"] == hashlib.sha256(b"").hexdigest()
    assert meta["original_name"] == "empty.txt"
    await assert_downloads_exactly(client, meta, b"")
    assert_stored_at_uid_path(settings.media_root, meta["uid"], b"")


async def test_multipart_body_streamed_in_tiny_chunks_round_trips(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # Boundaries, part headers and CRLFs split across chunks (and batches) must not matter;
    # the file's bytes contain near-misses of the delimiter.
    data = (b"\r\n--" + BOUNDARY.encode()[:-1] + b"X" + random_bytes(1000)) * 300
    body = multipart_body(
        form_part("title", b"holiday"),
        form_part("file", data, filename="near-miss.bin", content_type="application/octet-stream"),
        form_part("note", b"after the file"),
    )
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    client.event_hooks["request"].append(record)
    response = await post_form(client, small_chunks(body, max_chunk=13))
    assert response.status_code == 201, response.text
    assert "content-length" not in sent[0].headers
    meta = response.json()
    assert meta["size"] == len(data)
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["original_name"] == "near-miss.bin"
    await assert_downloads_exactly(client, meta, data)
    assert_stored_at_uid_path(settings.media_root, meta["uid"], data)


async def test_multipart_body_in_many_small_chunks_via_httpx_files(
    client: httpx.AsyncClient,
) -> None:
    data = random_bytes(4 * BATCH + 99, seed=9)
    request = client.build_request("POST", "/api/v1/files", files={"file": ("f.bin", data)})
    body = request.read()
    response = await client.post(
        "/api/v1/files",
        content=small_chunks(body),
        headers={"Content-Type": request.headers["content-type"]},
    )
    assert response.status_code == 201, response.text
    await assert_downloads_exactly(client, response.json(), data)


async def test_multipart_other_fields_around_the_file_are_ignored(
    client: httpx.AsyncClient,
) -> None:
    data = b"the file itself"
    response = await client.post(
        "/api/v1/files",
        data={"description": "x" * 10_000, "tags": ["a", "b"]},
        files={"file": ("doc.txt", data, "text/plain")},
    )
    assert response.status_code == 201, response.text
    meta = response.json()
    assert meta["size"] == len(data)
    await assert_downloads_exactly(client, meta, data)


async def test_multipart_without_trailing_crlf_after_closing_delimiter_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    data = b"payload"
    body = multipart_body(form_part("file", data, filename="p"))
    assert body.endswith(b"--\r\n")
    response = await post_form(client, body[:-2])
    assert response.status_code == 201, response.text
    await assert_downloads_exactly(client, response.json(), data)


async def test_multipart_with_an_epilogue_after_the_closing_delimiter_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    # RFC 2046 §5.1.1: text after the closing delimiter is an epilogue, to be ignored.
    data = b"payload"
    body = multipart_body(form_part("file", data, filename="p")) + b"\r\nepilogue, ignored\r\n"
    response = await post_form(client, body)
    assert response.status_code == 201, response.text
    await assert_downloads_exactly(client, response.json(), data)


async def test_multipart_upload_options_are_recorded(client: httpx.AsyncClient) -> None:
    meta = await upload(
        client,
        "POST",
        "/api/v1/files",
        files={"file": ("a.bin", b"abc")},
        params={"max_downloads": 2, "expires_in": 60},
    )
    assert meta["max_downloads"] == 2
    assert meta["expires_at"] is not None


async def test_multipart_checksum_header_is_verified(client: httpx.AsyncClient) -> None:
    data = random_bytes(100_000)
    meta = await upload(
        client,
        "POST",
        "/api/v1/files",
        files={"file": ("a.bin", data)},
        headers={"X-Checksum-Sha256": hashlib.sha256(data).hexdigest()},
    )
    await assert_downloads_exactly(client, meta, data)


# --- names ----------------------------------------------------------------------------------------


async def test_multipart_name_comes_from_the_part_filename(client: httpx.AsyncClient) -> None:
    # The part's filename is the name; raw-upload name sources don't apply to multipart.
    meta = await upload(
        client,
        "POST",
        "/api/v1/files",
        files={"file": ("Part Name.MKV", b"x")},
        params={"filename": "query.bin"},
    )
    assert meta["original_name"] == "Part Name.MKV"
    assert meta["extension"] == "mkv"


async def test_multipart_unicode_filename_in_raw_utf8(client: httpx.AsyncClient) -> None:
    name = "日本語 ファイル – naïve ☃ 🎬.MP4"
    meta = await upload(client, "POST", "/api/v1/files", files={"file": (name, b"x")})
    assert meta["original_name"] == name
    assert meta["extension"] == "mp4"


async def test_multipart_unicode_filename_star(client: httpx.AsyncClient) -> None:
    disposition = b"form-data; name=\"file\"; filename*=UTF-8''na%C3%AFve%20%E2%98%83.txt"
    body = multipart_body(form_part("file", b"x", disposition=disposition))
    response = await post_form(client, body)
    assert response.status_code == 201, response.text
    assert response.json()["original_name"] == "naïve ☃.txt"


async def test_multipart_plain_filename_containing_filename_star_text(
    client: httpx.AsyncClient,
) -> None:
    # Only an RFC 8187 parameter takes the filename* route: a quoted name that merely contains
    # the text keeps the plain route (which drops an IE-style full path).
    disposition = b'form-data; name="file"; filename="C:\\dir\\filename*=.txt"'
    response = await post_form(
        client, multipart_body(form_part("file", b"x", disposition=disposition))
    )
    assert response.status_code == 201, response.text
    assert response.json()["original_name"] == "filename*=.txt"


@pytest.mark.parametrize(
    "headers",
    [b"Content-Type: application/octet-stream", b'Content-Disposition: attachment; name="file"'],
    ids=["no-disposition", "attachment"],
)
async def test_multipart_part_without_form_data_disposition_is_400(
    client: httpx.AsyncClient, headers: bytes
) -> None:
    # RFC 7578 §4.2: each part has Content-Disposition: form-data.
    part = headers + b"\r\n\r\nx"
    body = multipart_body(part, form_part("file", b"y", filename="f.bin"))
    response = await post_form(client, body)
    assert response.status_code == 400, response.text
    assert "Content-Disposition: form-data" in response.json()["detail"]


async def test_multipart_part_without_filename_gives_null_name(client: httpx.AsyncClient) -> None:
    body = multipart_body(form_part("file", b"no name here"))
    response = await post_form(client, body)
    assert response.status_code == 201, response.text
    meta = response.json()
    assert meta["original_name"] is None
    assert meta["extension"] is None


async def test_multipart_empty_filename_gives_null_name(client: httpx.AsyncClient) -> None:
    # Browsers send filename="" for a file input with no name.
    response = await post_form(client, multipart_body(form_part("file", b"x", filename="")))
    assert response.status_code == 201, response.text
    assert response.json()["original_name"] is None


async def test_multipart_255_byte_filename_is_accepted(client: httpx.AsyncClient) -> None:
    name = "ж" * 125 + "a.bin"
    assert len(name.encode()) == 255
    meta = await upload(client, "POST", "/api/v1/files", files={"file": (name, b"x")})
    assert meta["original_name"] == name


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..\\..\\boot.ini", ".."])
async def test_multipart_hostile_filename_is_metadata_only(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path, name: str
) -> None:
    body = b"not a password file"
    request_body = multipart_body(form_part("file", body, filename=name.replace("\\", "\\\\")))
    response = await post_form(client, request_body)
    assert response.status_code == 201, response.text
    meta = response.json()
    assert meta["original_name"] == name
    assert_stored_at_uid_path(settings.media_root, meta["uid"], body)
    assert files_outside(tmp_path, settings.media_root) == []


# --- content types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "part_type",
    ["application/octet-stream", "text/plain", "application/x-www-form-urlencoded", None],
)
async def test_multipart_generic_part_type_is_sniffed(
    client: httpx.AsyncClient, part_type: str | None
) -> None:
    png = PNG_HEADER + random_bytes(2000)
    body = multipart_body(form_part("file", png, filename="img", content_type=part_type))
    response = await post_form(client, body)
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "image/png"


async def test_multipart_specific_part_type_is_kept(client: httpx.AsyncClient) -> None:
    body = multipart_body(
        form_part("file", PNG_HEADER, filename="voice", content_type="Audio/Ogg; codecs=opus")
    )
    response = await post_form(client, body)
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "audio/ogg"


async def test_multipart_boundary_may_be_quoted_and_body_uses_it(client: httpx.AsyncClient) -> None:
    boundary = "quoted:boundary=with/specials"
    data = b"quoted boundary"
    body = multipart_body(form_part("file", data, filename="q.txt"), boundary=boundary)
    response = await client.post(
        "/api/v1/files",
        content=body,
        headers={"Content-Type": f'multipart/form-data; boundary="{boundary}"'},
    )
    assert response.status_code == 201, response.text
    await assert_downloads_exactly(client, response.json(), data)


async def test_successful_multipart_leaves_only_the_final_file(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    meta = await upload(client, "POST", "/api/v1/files", files={"file": ("a", b"abc")})
    root = settings.media_root.resolve()
    assert leftovers(root) == [root / meta["uid"][:2] / meta["uid"]]


@pytest.mark.parametrize(
    "epilogue", [b"", b"\r\n", b"\r\nepilogue\r\n"], ids=["none", "crlf", "text"]
)
@pytest.mark.parametrize("split", [1, 2, 10, 40, 44, 45])
async def test_multipart_closing_delimiter_straddling_a_batch_border(
    client: httpx.AsyncClient, split: int, epilogue: bytes
) -> None:
    # The feeder hands the parser BATCH-byte batches: put the closing delimiter
    # "\r\n--<boundary>--" (45 bytes here) across a border, `split` bytes in the first batch.
    ender = b"\r\n--" + BOUNDARY.encode() + b"--"
    assert len(ender) == 45
    head = multipart_body(form_part("file", b"", filename="s.bin"), close=False)[: -len(b"\r\n")]
    # head ends right after the part headers' blank line; the file's bytes follow.
    size = 2 * BATCH - split - len(head)
    data = random_bytes(size, seed=split)
    body = head + data + ender + epilogue
    assert body.index(ender) == 2 * BATCH - split
    response = await post_form(client, body)
    assert response.status_code == 201, response.text
    await assert_downloads_exactly(client, response.json(), data)
