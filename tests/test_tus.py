"""tus 1.0.0 at /api/v1/uploads, in process (real PostgreSQL, real disk): every status the
protocol names, its header forms and extensions, after the cases of the tus conformance suites
(sagikazarmark/tus-conformance-tests), and what each failure leaves (nothing it should not)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from mediasvc.auth import ApiKey
from mediasvc.config import Settings
from mediasvc.db.migrations import upgrade
from mediasvc.db.models import UploadRecord
from mediasvc.db.session import Database
from mediasvc.ids import hash_token
from mediasvc.jobs.cleanup import cleanup
from mediasvc.jobs.context import JobContext
from mediasvc.resumable.checkpoints import RowSaver
from mediasvc.resumable.hashing import ResumableSha256
from mediasvc.resumable.sink import Checkpoint
from mediasvc.storage.part import PartFile
from tests.conftest import leftovers
from tests.helpers import (
    OCTETS,
    TUS,
    UPLOADS,
    assert_problem,
    assert_stored_at_uid_path,
    checksum,
    client_for,
    create,
    metadata,
    offset_of,
    own_postgres_database,
    patch,
    random_bytes,
    send_in_pieces,
    with_file_insert_cut_off,
)

DATA = random_bytes(300_000, seed=14)


def uid_of(path: str) -> str:
    return path.rsplit("/", 1)[1]


async def file_metadata(client: httpx.AsyncClient, uid: str) -> dict[str, object]:
    response = await client.get(f"/api/v1/files/{uid}/metadata")
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def upload_files(media_root: Path) -> list[Path]:
    return sorted(media_root.rglob("*.upload"))


# --- discovery and versions -------------------------------------------------------------------


async def test_options_says_what_the_server_supports(client: httpx.AsyncClient) -> None:
    for path in (UPLOADS, f"{UPLOADS}/whatever"):
        response = await client.options(path)  # no Tus-Resumable: OPTIONS needs none
        assert response.status_code == 204
        assert response.headers["tus-version"] == "1.0.0"
        assert response.headers["tus-resumable"] == "1.0.0"
        assert set(response.headers["tus-extension"].split(",")) == {
            "creation",
            "creation-with-upload",
            "creation-defer-length",
            "expiration",
            "checksum",
            "termination",
            "concatenation",
        }
        assert response.headers["tus-checksum-algorithm"].split(",") == ["sha1", "md5", "sha256"]
        assert int(response.headers["tus-max-size"]) == 16 * 1024**3


@pytest.mark.parametrize("version", [None, "0.2.2", "2.0.0"])
async def test_a_tus_version_we_do_not_speak_is_412_with_ours(
    client: httpx.AsyncClient, version: str | None
) -> None:
    path = await create(client, 10)
    headers = {"Tus-Resumable": version} if version else {}
    for response in (
        await client.post(UPLOADS, headers={**headers, "Upload-Length": "5"}),
        await client.head(path, headers=headers),
        await client.patch(
            path,
            content=b"x",
            headers={**headers, "Content-Type": OCTETS["Content-Type"], "Upload-Offset": "0"},
        ),
        await client.delete(path, headers=headers),
    ):
        assert_problem(response, 412)
        assert response.headers["tus-version"] == "1.0.0"
        assert response.headers["tus-resumable"] == "1.0.0"
    assert await offset_of(client, path) == 0  # nothing was processed


async def test_an_unexpected_error_is_a_500_problem_that_still_speaks_tus(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """An exception nobody maps (here the uploads table gone from under the app) is answered
    outside our middlewares, by Starlette: a tus client must still see Tus-Resumable on it,
    an IETF draft client must not."""
    url = f"sqlite+aiosqlite:///{tmp_path}/meta.db"
    await asyncio.to_thread(upgrade, url)
    async with client_for(make_settings(database_url=url), raise_app_exceptions=False) as http:
        path = await create(http, 10)
        with sqlite3.connect(tmp_path / "meta.db") as db:
            db.execute("ALTER TABLE uploads RENAME TO uploads_elsewhere")
        responses = [
            await http.head(path, headers=TUS),
            await http.post(UPLOADS, headers={**TUS, "Upload-Length": "5"}),
        ]
        ietf = await http.head(path, headers={"Upload-Draft-Interop-Version": "8"})
    for response in responses:
        problem = assert_problem(response, 500)
        assert response.headers["tus-resumable"] == "1.0.0"
        assert "Traceback" not in response.text and "uploads" not in problem.get("detail", "")
    assert_problem(ietf, 500)
    assert "tus-resumable" not in ietf.headers


# --- creation ---------------------------------------------------------------------------------


async def test_creation_head_and_metadata(client: httpx.AsyncClient) -> None:
    header = metadata(filename="clip.mp4", note="") + ",flag"
    response = await client.post(
        UPLOADS, headers={**TUS, "Upload-Length": "1000", "Upload-Metadata": header}
    )
    assert response.status_code == 201
    location = response.headers["location"]
    assert location.startswith("http://testserver/api/v1/uploads/")
    assert response.content == b""
    head = await client.head(location, headers=TUS)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == "0"
    assert head.headers["upload-length"] == "1000"
    assert head.headers["cache-control"] == "no-store"
    assert head.headers["upload-metadata"] == header
    assert head.headers["upload-expires"] == response.headers["upload-expires"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 400),  # neither a length nor a deferred one
        ({"Upload-Length": "10", "Upload-Defer-Length": "1"}, 400),
        ({"Upload-Defer-Length": "2"}, 400),
        ({"Upload-Length": "-1"}, 400),
        ({"Upload-Length": "ten"}, 400),
        ({"Upload-Length": "10", "Upload-Metadata": "name !!notbase64"}, 400),
        ({"Upload-Length": "10", "Upload-Metadata": "a YQ==,a Yg=="}, 400),  # a key twice
        ({"Upload-Length": "10", "Upload-Metadata": "k\u00e9y YQ=="}, 400),
        ({"Upload-Length": "10", "Upload-Metadata": metadata(max_downloads="0")}, 400),
        ({"Upload-Length": "10", "Upload-Metadata": metadata(expires_in="soon")}, 400),
        ({"Upload-Length": "10", "Upload-Metadata": metadata(sha256="abc")}, 400),
        ({"Upload-Length": "10", "Upload-Metadata": metadata(filename="a\x07b")}, 400),
        ({"Upload-Length": "10", "Upload-Metadata": metadata(filename=b"\xff")}, 400),
        ({"Upload-Length": str(16 * 1024**3 + 1)}, 413),  # past Tus-Max-Size
        ({"Upload-Length": "10", "Upload-Concat": "whole"}, 400),
    ],
)
async def test_a_bad_creation_is_refused_and_leaves_nothing(
    client: httpx.AsyncClient, settings: Settings, headers: dict[str, str], status: int
) -> None:
    response = await client.post(
        UPLOADS, headers={**TUS, **{k: v.encode() for k, v in headers.items()}}
    )
    assert_problem(response, status)
    assert "location" not in response.headers
    assert upload_files(settings.media_root) == []


async def test_a_zero_length_upload_is_a_file_at_once(client: httpx.AsyncClient) -> None:
    response = await client.post(UPLOADS, headers={**TUS, "Upload-Length": "0"})
    assert response.status_code == 201
    uid = uid_of(response.headers["location"])
    assert response.headers["content-location"] == f"/api/v1/files/{uid}"
    assert response.headers["upload-offset"] == "0"
    assert (await file_metadata(client, uid))["sha256"] == hashlib.sha256(b"").hexdigest()


async def test_creation_with_upload_takes_the_first_bytes(client: httpx.AsyncClient) -> None:
    response = await client.post(
        UPLOADS,
        content=DATA[:1000],
        headers={**OCTETS, "Upload-Length": str(len(DATA))},
    )
    assert response.status_code == 201
    assert response.headers["upload-offset"] == "1000"
    path = httpx.URL(response.headers["location"]).path
    done = await patch(client, path, 1000, DATA[1000:])
    assert done.status_code == 204
    meta = await file_metadata(client, uid_of(path))
    assert meta["sha256"] == hashlib.sha256(DATA).hexdigest()


async def test_creation_with_the_whole_upload_completes_it(client: httpx.AsyncClient) -> None:
    response = await client.post(
        UPLOADS,
        content=DATA,
        headers={
            **OCTETS,
            "Upload-Length": str(len(DATA)),
            "Upload-Metadata": metadata(filename="whole.bin"),
            "Upload-Checksum": checksum("sha1", DATA),
        },
    )
    assert response.status_code == 201
    uid = uid_of(response.headers["location"])
    assert response.headers["content-location"] == f"/api/v1/files/{uid}"
    token = response.headers["x-delete-token"]
    meta = await file_metadata(client, uid)
    assert meta["original_name"] == "whole.bin"
    deleted = await client.delete(f"/api/v1/files/{uid}", headers={"X-Delete-Token": token})
    assert deleted.status_code == 204


async def test_creation_with_upload_needs_the_tus_body_type(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.post(
        UPLOADS, content=b"abc", headers={**TUS, "Upload-Length": "3", "Content-Type": "text/plain"}
    )
    assert_problem(response, 415)
    assert upload_files(settings.media_root) == []


async def upload_rows(settings: Settings) -> int:
    db = Database(settings.database_url)
    async with db.session() as session:
        count = (await session.execute(select(func.count()).select_from(UploadRecord))).scalar()
    await db.dispose()
    return int(count or 0)


@pytest.mark.parametrize(
    ("extra", "body", "status"),
    [
        ({}, b"abcd", 413),  # past the Upload-Length
        ({"Upload-Checksum": checksum("sha1", b"abd")}, b"abc", 460),
    ],
)
async def test_a_failed_creation_with_upload_leaves_nothing(
    client: httpx.AsyncClient,
    settings: Settings,
    extra: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    """The client of a refused creating request never learns the upload's URL: nothing of it
    may stay behind (file or row) for a day waiting for a PATCH that cannot come."""
    response = await client.post(
        UPLOADS, content=body, headers={**OCTETS, "Upload-Length": "3", **extra}
    )
    assert_problem(response, status)
    assert "location" not in response.headers
    assert upload_files(settings.media_root) == []
    assert await upload_rows(settings) == 0


# --- the core: PATCH and HEAD -----------------------------------------------------------------


async def test_chunked_upload_becomes_a_file_like_a_plain_upload(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    header = metadata(
        filename="résumé.txt",
        filetype="text/plain",
        max_downloads="3",
        expires_in="3600",
        sha256=hashlib.sha256(DATA).hexdigest(),
    )
    path = await create(client, len(DATA), {"Upload-Metadata": header})
    uid = uid_of(path)
    first = await patch(client, path, 0, DATA[:70_001])
    assert first.status_code == 204
    assert first.content == b""
    assert first.headers["upload-offset"] == "70001"
    assert "upload-expires" in first.headers
    assert "content-location" not in first.headers
    last = await patch(client, path, 70_001, DATA[70_001:])
    assert last.status_code == 204
    assert last.headers["upload-offset"] == str(len(DATA))
    assert last.headers["content-location"] == f"/api/v1/files/{uid}"
    token = last.headers["x-delete-token"]
    meta = await file_metadata(client, uid)
    assert meta["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert meta["original_name"] == "résumé.txt"
    assert meta["max_downloads"] == 3
    assert meta["expires_at"] is not None
    download = await client.get(f"/api/v1/files/{uid}")
    assert download.content == DATA
    # The upload's URL still answers, complete, and takes no more bytes.
    head = await client.head(path, headers=TUS)
    assert head.headers["upload-offset"] == head.headers["upload-length"] == str(len(DATA))
    assert head.headers["content-location"] == f"/api/v1/files/{uid}"
    assert_problem(await patch(client, path, len(DATA), b"more"), 413)
    assert (await patch(client, path, len(DATA), b"")).status_code == 204
    assert_problem(await patch(client, path, 5, b""), 409)
    assert upload_files(settings.media_root) == []  # the bytes moved into the file
    deleted = await client.delete(f"/api/v1/files/{uid}", headers={"X-Delete-Token": token})
    assert deleted.status_code == 204


async def test_ten_resumed_pieces_make_the_same_file_as_one(client: httpx.AsyncClient) -> None:
    data = random_bytes(1_000_003, seed=10)
    one = await create(client, len(data))
    assert (await patch(client, one, 0, data)).status_code == 204
    ten = await create(client, len(data))
    await send_in_pieces(client, ten, data, 10)
    a, b = [await client.get(f"/api/v1/files/{uid_of(p)}") for p in (one, ten)]
    assert a.content == b.content == data
    for name in ("etag", "repr-digest"):
        assert a.headers[name] == b.headers[name], name
    assert a.headers["repr-digest"] == (
        "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
    )


async def test_patch_errors(client: httpx.AsyncClient) -> None:
    path = await create(client, 100)
    assert_problem(await patch(client, path, 0, b"x" * 101), 413)  # past the length: unread
    wrong_type = await client.patch(
        path, content=b"x", headers={**TUS, "Upload-Offset": "0", "Content-Type": "text/plain"}
    )
    assert_problem(wrong_type, 415)
    no_type = await client.patch(path, content=b"x", headers={**TUS, "Upload-Offset": "0"})
    assert_problem(no_type, 415)
    no_offset = await client.patch(path, content=b"x", headers=OCTETS)
    assert_problem(no_offset, 400)
    assert_problem(await patch(client, path, 0, b"x", **{"Upload-Offset": "-1"}), 400)
    assert (await patch(client, path, 0, b"abc")).status_code == 204
    conflict = await patch(client, path, 1, b"bc")
    assert_problem(conflict, 409)
    assert conflict.headers["upload-offset"] == "3"
    assert_problem(await patch(client, f"{UPLOADS}/{'a' * 26}", 0, b"x"), 404)
    assert_problem(await client.head(f"{UPLOADS}/nothing", headers=TUS), 404)
    assert await offset_of(client, path) == 3


async def test_a_body_longer_than_declared_stops_at_the_length(client: httpx.AsyncClient) -> None:
    path = await create(client, 100)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: found out while reading
        yield b"a" * 60
        yield b"b" * 60

    response = await client.patch(path, content=chunked(), headers={**OCTETS, "Upload-Offset": "0"})
    assert_problem(response, 413)
    assert await offset_of(client, path) in (0, 60)  # never past the length, never a wrong byte


async def test_a_refused_patch_cuts_back_to_the_offset_its_row_names(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATCH that fails (here 413) right after a checkpoint: the checkpoint's row update may
    still be on its way while the file is cut back. Cutting back to an offset read before it
    landed left the row naming bytes the file no longer had (the next request then resumed over
    a hole of zeros, under a hash state of the real bytes)."""
    settings = make_settings(io_chunk_size_bytes=4096, upload_checkpoint_every_bytes=4096)
    landed = threading.Event()
    write, cut_back = RowSaver._write, PartFile.cut_back

    async def slow_database(self: RowSaver, point: Checkpoint) -> None:
        await write(self, point)
        landed.set()

    def cut_back_late(self: PartFile, size: int) -> None:
        # Test hook, not a mock: it makes the cut back come after the row update, an order
        # that a loaded database gives now and then.
        landed.wait(30)
        cut_back(self, size)

    monkeypatch.setattr(RowSaver, "_write", slow_database)
    monkeypatch.setattr(PartFile, "cut_back", cut_back_late)
    data = random_bytes(20_000, seed=5)
    async with client_for(settings) as client:
        path = await create(client, 10_000)

        async def too_long() -> AsyncIterator[bytes]:
            yield data[:8192]
            yield data[8192:16384]

        response = await client.patch(
            path, content=too_long(), headers={**OCTETS, "Upload-Offset": "0"}
        )
        assert_problem(response, 413)
        assert landed.is_set()
        offset = await offset_of(client, path)
        (part,) = upload_files(settings.media_root)
        assert part.read_bytes() == data[:offset]
        done = await patch(client, path, offset, data[offset:10_000])
        assert done.status_code == 204, done.text
        meta = await file_metadata(client, uid_of(path))
        assert meta["sha256"] == hashlib.sha256(data[:10_000]).hexdigest()
        stored = await client.get(f"/api/v1/files/{uid_of(path)}")
        assert stored.content == data[:10_000]


# --- deferred length --------------------------------------------------------------------------


async def test_a_deferred_length_is_told_once(client: httpx.AsyncClient) -> None:
    path = await create(client, None)
    head = await client.head(path, headers=TUS)
    assert head.headers["upload-defer-length"] == "1"
    assert "upload-length" not in head.headers
    assert (await patch(client, path, 0, DATA[:1000])).status_code == 204
    assert_problem(await patch(client, path, 1000, b"", **{"Upload-Length": "999"}), 400)
    told = await patch(client, path, 1000, DATA[1000:2000], **{"Upload-Length": str(len(DATA))})
    assert told.status_code == 204
    assert told.headers["upload-length"] == str(len(DATA))
    assert_problem(await patch(client, path, 2000, b"", **{"Upload-Length": "5000"}), 400)
    done = await patch(client, path, 2000, DATA[2000:])
    assert "content-location" in done.headers
    assert (await file_metadata(client, uid_of(path)))["sha256"] == hashlib.sha256(DATA).hexdigest()


async def test_a_length_past_what_a_row_holds_is_400(
    make_settings: Callable[..., Settings],
) -> None:
    """Without a size limit, a 19-digit length still has to fit the row's 64-bit column."""
    settings = make_settings(max_upload_size_bytes=0)
    huge = str(2**63)
    async with client_for(settings) as client:
        assert_problem(await client.post(UPLOADS, headers={**TUS, "Upload-Length": huge}), 400)
        path = await create(client, None)
        assert_problem(await patch(client, path, 0, b"", **{"Upload-Length": huge}), 400)
        assert_problem(await patch(client, path, 0, b"", **{"Upload-Offset": huge}), 400)
        assert (await client.head(path, headers=TUS)).headers["upload-defer-length"] == "1"


async def test_a_deferred_length_of_zero_takes_no_byte(client: httpx.AsyncClient) -> None:
    """0 is a length like any other, not "no limit": a chunked body past it is 413 and the
    offset never goes past the length (it went to 3 of 0, an upload that could never end)."""
    path = await create(client, None)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: found out while reading
        yield b"abc"

    headers = {**OCTETS, "Upload-Offset": "0", "Upload-Length": "0"}
    assert_problem(await client.patch(path, content=chunked(), headers=headers), 413)
    head = await client.head(path, headers=TUS)  # all of its 0 bytes are in: a file
    assert head.headers["upload-offset"] == head.headers["upload-length"] == "0"
    meta = await file_metadata(client, uid_of(path))
    assert meta["sha256"] == hashlib.sha256(b"").hexdigest()


async def test_a_deferred_upload_body_past_the_max_size_is_413_unread(
    make_settings: Callable[..., Settings],
) -> None:
    """Its length is not known yet, but a body declared past Tus-Max-Size cannot fit it."""
    settings = make_settings(max_upload_size_bytes=1000)
    async with client_for(settings) as client:
        path = await create(client, None)

        async def short() -> AsyncIterator[bytes]:  # the declared length is what counts
            yield b"x" * 10

        headers = {**OCTETS, "Upload-Offset": "0", "Content-Length": "1001"}
        assert_problem(await client.patch(path, content=short(), headers=headers), 413)
        assert await offset_of(client, path) == 0


# --- checksum ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256"])
async def test_a_checksummed_patch(
    client: httpx.AsyncClient, settings: Settings, algorithm: str
) -> None:
    path = await create(client, len(DATA))
    piece = DATA[:100_000]
    good = await patch(client, path, 0, piece, **{"Upload-Checksum": checksum(algorithm, piece)})
    assert good.status_code == 204
    wrong = checksum(algorithm, b"something else")
    bad = await patch(client, path, 100_000, DATA[100_000:], **{"Upload-Checksum": wrong})
    assert_problem(bad, 460)
    assert bad.json()["title"] == "Checksum Mismatch"
    assert await offset_of(client, path) == 100_000  # nothing of it appended
    (part,) = upload_files(settings.media_root)
    assert part.stat().st_size == 100_000
    rest = DATA[100_000:]
    retry = await patch(
        client, path, 100_000, rest, **{"Upload-Checksum": checksum(algorithm, rest)}
    )
    assert retry.status_code == 204
    assert (await file_metadata(client, uid_of(path)))["sha256"] == hashlib.sha256(DATA).hexdigest()


@pytest.mark.parametrize("value", ["crc32 AAAA", "sha1", "sha1 !!!", "SHA1 " + "A" * 28])
async def test_a_checksum_we_cannot_check_is_400(client: httpx.AsyncClient, value: str) -> None:
    path = await create(client, 10)
    assert_problem(await patch(client, path, 0, b"0123456789", **{"Upload-Checksum": value}), 400)
    assert await offset_of(client, path) == 0


async def test_a_wrong_whole_file_sha256_is_422_and_nothing_stays(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    path = await create(
        client, len(DATA), {"Upload-Metadata": metadata(sha256=hashlib.sha256(b"x").hexdigest())}
    )
    assert_problem(await patch(client, path, 0, DATA), 422)
    assert_problem(await client.head(path, headers=TUS), 404)
    assert leftovers(settings.media_root) == []


# --- termination and expiry ---------------------------------------------------------------------


async def test_termination_removes_bytes_and_state(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    path = await create(client, len(DATA))
    await patch(client, path, 0, DATA[:5000])
    assert (await client.delete(path, headers=TUS)).status_code == 204
    assert leftovers(settings.media_root) == []
    assert_problem(await client.head(path, headers=TUS), 404)
    assert_problem(await patch(client, path, 5000, b"x"), 404)
    assert_problem(await client.delete(path, headers=TUS), 404)


async def test_terminating_a_finished_upload_keeps_its_file(client: httpx.AsyncClient) -> None:
    path = await create(client, 10)
    await patch(client, path, 0, b"0123456789")
    assert (await client.delete(path, headers=TUS)).status_code == 204
    assert_problem(await client.head(path, headers=TUS), 404)
    assert (await client.get(f"/api/v1/files/{uid_of(path)}")).content == b"0123456789"


async def age(settings: Settings, uid: str, **values: object) -> None:
    db = Database(settings.database_url)
    async with db.session() as session:
        await session.execute(update(UploadRecord).where(UploadRecord.uid == uid).values(**values))
        await session.commit()
    await db.dispose()


async def test_an_expired_upload_is_410_and_cleanup_removes_it(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    path = await create(client, len(DATA))
    await patch(client, path, 0, DATA[:5000])
    finished = await create(client, 3)
    await patch(client, finished, 0, b"abc")
    past = datetime.now(UTC) - timedelta(seconds=1)
    for uid in (uid_of(path), uid_of(finished)):
        await age(settings, uid, expires_at=past)
    assert_problem(await client.head(path, headers=TUS), 410)
    assert_problem(await patch(client, path, 5000, b"x"), 410)
    metrics = (await client.get("/metrics")).text
    assert 'mediasvc_resumable_uploads{state="expired"} 1.0' in metrics
    ctx = JobContext.build(settings)
    try:
        report = await cleanup(ctx)
    finally:
        await ctx.db.dispose()
    assert report.expired_uploads == 2
    assert upload_files(settings.media_root) == []
    assert_problem(await client.head(path, headers=TUS), 404)
    # The finished upload's file is a file like any other: its row went, not the file.
    assert (await client.get(f"/api/v1/files/{uid_of(finished)}")).content == b"abc"


async def test_the_expiry_moves_with_each_patch(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    path = await create(client, len(DATA))
    soon = datetime.now(UTC) + timedelta(seconds=30)
    await age(settings, uid_of(path), expires_at=soon)
    response = await patch(client, path, 0, DATA[:10])
    assert response.headers["upload-expires"] != soon.strftime("%a, %d %b %Y %H:%M:%S GMT")
    head = await client.head(path, headers=TUS)
    assert head.headers["upload-expires"] == response.headers["upload-expires"]


# --- X-HTTP-Method-Override -------------------------------------------------------------------


async def test_method_override(client: httpx.AsyncClient) -> None:
    path = await create(client, 3)
    headers = {**OCTETS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"}
    response = await client.post(path, content=b"abc", headers=headers)
    assert response.status_code == 204
    assert response.headers["upload-offset"] == "3"
    other = await create(client, 3)
    deleted = await client.post(other, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert deleted.status_code == 204
    assert_problem(await client.head(other, headers=TUS), 404)


# --- owners -----------------------------------------------------------------------------------

ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789"


async def test_another_keys_upload_is_404(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        api_keys=[
            ApiKey(name="alice", sha256=hash_token(ALICE)),
            ApiKey(name="bob", sha256=hash_token(BOB)),
        ]
    )
    alice = {"Authorization": f"Bearer {ALICE}"}
    bob = {"Authorization": f"Bearer {BOB}"}
    async with client_for(settings) as client:
        assert_problem(await client.post(UPLOADS, headers={**TUS, "Upload-Length": "3"}), 401)
        path = await create(client, 3, alice)
        assert_problem(await client.head(path, headers={**TUS, **bob}), 404)
        assert_problem(await patch(client, path, 0, b"abc", **bob), 404)
        assert_problem(await client.delete(path, headers={**TUS, **bob}), 404)
        partial = await create(client, 1, {**alice, "Upload-Concat": "partial"})
        await patch(client, partial, 0, b"a", **alice)
        final = await client.post(
            UPLOADS, headers={**TUS, **bob, "Upload-Concat": f"final;{partial}"}
        )
        assert_problem(final, 400)
        assert (await patch(client, path, 0, b"abc", **alice)).status_code == 204
        meta = await client.get(f"/api/v1/files/{uid_of(path)}/metadata", headers=alice)
        assert meta.json()["sha256"] == hashlib.sha256(b"abc").hexdigest()


# --- concatenation ----------------------------------------------------------------------------


async def partial_with(client: httpx.AsyncClient, data: bytes) -> str:
    path = await create(client, len(data), {"Upload-Concat": "partial"})
    assert (await patch(client, path, 0, data)).status_code == 204
    return path


@pytest.mark.parametrize("order", ["in order", "out of order"])
async def test_concatenation(
    client: httpx.AsyncClient,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    order: str,
) -> None:
    pieces = [DATA[:100_000], DATA[100_000:100_001], DATA[100_001:]]
    if order == "in order":  # each part's first byte after the previous part's last
        paths = [await partial_with(client, piece) for piece in pieces]
    else:  # created together, the last one sent first
        paths = [await create(client, len(p), {"Upload-Concat": "partial"}) for p in pieces]
        for index in (2, 0, 1):
            assert (await patch(client, paths[index], 0, pieces[index])).status_code == 204
    head = await client.head(paths[0], headers=TUS)
    assert head.headers["upload-concat"] == "partial"
    caplog.set_level("INFO", logger="mediasvc.resumable.engine")
    final = await client.post(
        UPLOADS,
        headers={
            **TUS,
            "Upload-Concat": "final;" + " ".join(f"http://testserver{p}" for p in paths),
            "Upload-Metadata": metadata(filename="joined.bin"),
        },
    )
    assert final.status_code == 201, final.text
    rereads = [r for r in caplog.records if "reread partial uploads" in r.getMessage()]
    assert bool(rereads) == (order == "out of order")
    path = httpx.URL(final.headers["location"]).path
    uid = uid_of(path)
    assert final.headers["content-location"] == f"/api/v1/files/{uid}"
    assert final.headers["upload-offset"] == str(len(DATA))
    meta = await file_metadata(client, uid)
    assert meta["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert meta["original_name"] == "joined.bin"
    assert (await client.get(f"/api/v1/files/{uid}")).content == DATA
    head = await client.head(path, headers=TUS)
    assert head.headers["upload-concat"] == "final;" + " ".join(paths)
    assert head.headers["upload-offset"] == head.headers["upload-length"] == str(len(DATA))
    assert_problem(await patch(client, path, len(DATA), b"x"), 403)
    assert upload_files(settings.media_root) == []  # the partials went into the file
    for partial in paths:
        assert_problem(await client.head(partial, headers=TUS), 404)


async def test_concatenation_refusals(client: httpx.AsyncClient) -> None:
    done = await partial_with(client, b"abc")
    unfinished = await create(client, 10, {"Upload-Concat": "partial"})
    plain = await create(client, 3)
    await patch(client, plain, 0, b"abc")
    for value in (
        f"final;{done} {unfinished}",
        f"final;{done} {plain}",
        f"final;{done} {UPLOADS}/{'a' * 26}",
        f"final;{done} /elsewhere/x",
        "final;",
        f"finalize;{done}",
        f"final {done}",
    ):
        response = await client.post(UPLOADS, headers={**TUS, "Upload-Concat": value})
        assert_problem(response, 400)
    with_length = await client.post(
        UPLOADS, headers={**TUS, "Upload-Concat": f"final;{done}", "Upload-Length": "3"}
    )
    assert_problem(with_length, 400)
    assert await offset_of(client, done) == 3  # still there for a good final


async def test_a_finished_partial_upload_is_no_file(client: httpx.AsyncClient) -> None:
    """Only the final upload becomes a file: a finished partial names none, and still says
    when it expires (cleanup removes it then, if no final upload took it)."""
    path = await create(client, 3, {"Upload-Concat": "partial"})
    done = await patch(client, path, 0, b"abc")
    assert done.status_code == 204
    head = await client.head(path, headers=TUS)
    for response in (done, head):
        assert "content-location" not in response.headers
        assert "x-delete-token" not in response.headers
        assert "upload-expires" in response.headers
    assert (await client.get(f"/api/v1/files/{uid_of(path)}")).status_code == 404


async def test_an_expired_partial_is_no_part_of_a_final_upload(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """An expired partial upload is 410 to HEAD and cleanup's to remove (perhaps right now):
    a final upload may not take its bytes."""
    done = await partial_with(client, b"abc")
    await age(settings, uid_of(done), expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert_problem(await client.head(done, headers=TUS), 410)
    final = await client.post(UPLOADS, headers={**TUS, "Upload-Concat": f"final;{done}"})
    assert_problem(final, 400)
    assert "location" not in final.headers


async def test_a_partial_removed_meanwhile_is_400_and_no_final_stays(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Two final uploads naming the same partials, or a DELETE of a partial, race a final: its
    bytes can go between the row read and the copy (unlinked here by hand to make that order
    certain). A 400, not a 500, and no half final upload."""
    first = await partial_with(client, b"abc")
    second = await partial_with(client, b"def")
    (settings.media_root / ".incoming" / f"{uid_of(second)}.upload").unlink()
    final = await client.post(UPLOADS, headers={**TUS, "Upload-Concat": f"final;{first} {second}"})
    assert_problem(final, 400)
    assert upload_files(settings.media_root) == [
        settings.media_root / ".incoming" / f"{uid_of(first)}.upload"
    ]
    assert await offset_of(client, first) == 3


async def test_two_final_uploads_of_the_same_partials_at_once_make_one_file(
    make_settings: Callable[..., Settings], empty_db_url: str
) -> None:
    """The partials go into the file of the final upload that joins them: of two naming the
    same ones at the same moment, exactly one succeeds, the other is 400 and leaves nothing."""
    settings = make_settings(database_url=empty_db_url)
    pieces = [random_bytes(2_000_000, seed=seed) for seed in (31, 32, 33)]
    async with client_for(settings) as client:
        paths = [await create(client, len(p), {"Upload-Concat": "partial"}) for p in pieces]
        for index in (2, 1, 0):  # out of order: the final upload rereads two of them
            assert (await patch(client, paths[index], 0, pieces[index])).status_code == 204
        headers = {**TUS, "Upload-Concat": "final;" + " ".join(paths)}
        finals = await asyncio.gather(
            client.post(UPLOADS, headers=headers), client.post(UPLOADS, headers=headers)
        )
        assert sorted(f.status_code for f in finals) == [201, 400], [f.text for f in finals]
        won = next(f for f in finals if f.status_code == 201)
        assert_problem(next(f for f in finals if f.status_code == 400), 400)
        uid = uid_of(httpx.URL(won.headers["location"]).path)
        listed = (await client.get("/api/v1/files")).json()["items"]
        assert [item["uid"] for item in listed] == [uid]
        assert (await client.get(f"/api/v1/files/{uid}")).content == b"".join(pieces)
        for partial in paths:
            assert_problem(await client.head(partial, headers=TUS), 404)
    assert await upload_rows(settings) == 1  # the final upload's row: no half final stays
    assert upload_files(settings.media_root) == []


# --- disk full --------------------------------------------------------------------------------


async def test_a_full_disk_is_507_and_leaves_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(min_free_disk_bytes=2**62)
    async with client_for(settings) as client:
        response = await client.post(UPLOADS, headers={**TUS, "Upload-Length": "1000"})
        assert_problem(response, 507)
        assert leftovers(settings.media_root) == []


async def test_a_patch_that_does_not_fit_is_507_and_the_upload_stays(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with client_for(settings) as client:
        path = await create(client, None)
        await patch(client, path, 0, b"abc")
    full = make_settings(min_free_disk_bytes=2**62)
    async with client_for(full) as client:
        assert_problem(await patch(client, path, 3, DATA), 507)
        assert await offset_of(client, path) == 3
        (part,) = upload_files(settings.media_root)
        assert part.stat().st_size == 3


# --- one writer per upload --------------------------------------------------------------------


async def stalled_patch(
    client: httpx.AsyncClient, path: str, data: bytes, split: int
) -> asyncio.Task[httpx.Response]:
    """A PATCH from 0 that sends ``data[:split]`` and then nothing (a client stuck on a dead
    connection), once the app holds the upload and has those bytes; the request's task."""
    sent = asyncio.Event()
    never = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield data[:split]
        sent.set()  # the app asks for more: it has the first piece
        await never.wait()
        yield data[split:]

    older = asyncio.create_task(
        client.patch(path, content=stalls(), headers={**OCTETS, "Upload-Offset": "0"})
    )
    await asyncio.wait_for(sent.wait(), 30)
    return older


async def test_a_newer_patch_ends_the_older_one_and_keeps_its_bytes(
    client: httpx.AsyncClient,
) -> None:
    data = random_bytes(500_000, seed=3)
    path = await create(client, len(data))
    older = await stalled_patch(client, path, data, 100_000)
    newer = await patch(client, path, 0, b"")
    # The older request ended, its 100,000 bytes kept: the newer one is told where it stopped.
    assert_problem(newer, 409)
    assert newer.headers["upload-offset"] == "100000"
    old = await asyncio.wait_for(older, 30)
    assert_problem(old, 409)
    assert old.json()["type"] == "urn:mediasvc:problem:upload-taken-over"
    assert (await patch(client, path, 100_000, data[100_000:])).status_code == 204
    meta = await file_metadata(client, uid_of(path))
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()


async def test_a_head_ends_a_running_patch_and_tells_its_bytes(client: httpx.AsyncClient) -> None:
    """A client whose PATCH hangs on a dead connection asks where to go on: the HEAD ends that
    request and counts its bytes, none of which a checkpoint had recorded yet, so the PATCH
    from the offset it tells is the right one (the last checkpoint would have told 0, and
    that PATCH would have met 409 after sending its whole body)."""
    data = random_bytes(500_000, seed=4)
    path = await create(client, len(data))
    older = await stalled_patch(client, path, data, 100_000)
    head = await client.head(path, headers=TUS)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == "100000"
    assert_problem(await asyncio.wait_for(older, 30), 409)
    assert (await patch(client, path, 100_000, data[100_000:])).status_code == 204
    meta = await file_metadata(client, uid_of(path))
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()


async def test_a_length_told_below_what_a_taken_over_request_kept_is_400(
    client: httpx.AsyncClient,
) -> None:
    """The told length is checked against the offset the newer request resumes at, which it
    knows only once the older request stopped and recorded its bytes (below it, the row once
    held a length of 50 at offset 100: an upload that could never end)."""
    path = await create(client, None)
    sent = asyncio.Event()
    never = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"a" * 100
        sent.set()
        await never.wait()  # a client stuck on a dead connection
        yield b"a"

    async def rest() -> AsyncIterator[bytes]:  # no Content-Length: nothing to check early
        yield b"b"

    older = asyncio.create_task(
        client.patch(path, content=stalls(), headers={**OCTETS, "Upload-Offset": "0"})
    )
    await asyncio.wait_for(sent.wait(), 30)
    headers = {**OCTETS, "Upload-Offset": "100", "Upload-Length": "50"}
    assert_problem(await client.patch(path, content=rest(), headers=headers), 400)
    assert_problem(await asyncio.wait_for(older, 30), 409)
    head = await client.head(path, headers=TUS)
    assert head.headers["upload-offset"] == "100"
    assert head.headers["upload-defer-length"] == "1"


async def test_cleanup_sweeps_an_upload_file_no_row_claims(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    kept = await create(client, 10)
    orphan = settings.media_root / ".incoming" / f"{'b' * 26}.upload"
    orphan.write_bytes(b"left by a crash between the file and its row")
    long_ago = datetime.now(UTC).timestamp() - settings.part_grace_s - 60
    for path in (orphan, *upload_files(settings.media_root)):
        os.utime(path, (long_ago, long_ago))
    ctx = JobContext.build(settings)
    try:
        report = await cleanup(ctx)
    finally:
        await ctx.db.dispose()
    assert report.swept_uploads == 1
    assert not orphan.exists()
    assert await offset_of(client, kept) == 0  # an old upload with its row stays


# --- metrics and CORS -------------------------------------------------------------------------


def sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name}")


async def test_metrics_count_resumable_uploads(client: httpx.AsyncClient) -> None:
    before = (await client.get("/metrics")).text
    path = await create(client, len(DATA))
    await send_in_pieces(client, path, DATA, 3)
    after = (await client.get("/metrics")).text
    received = "mediasvc_resumable_bytes_received_total"
    assert sample(after, received) - sample(before, received) == len(DATA)
    resumptions = "mediasvc_resumable_resumptions_total"
    assert sample(after, resumptions) - sample(before, resumptions) == 2
    assert sample(after, "mediasvc_resumable_uploads_in_progress") == 0
    assert 'mediasvc_resumable_uploads{state="open"}' in after


async def test_cors_for_a_browser_tus_client(make_settings: Callable[..., Settings]) -> None:
    origin = "https://app.example"
    async with client_for(make_settings(cors_origins=[origin])) as client:
        preflight = await client.options(
            UPLOADS,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "tus-resumable, upload-offset, content-type, "
                "upload-checksum, upload-length, upload-metadata, upload-concat",
            },
        )
        assert preflight.status_code == 200
        assert "PATCH" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-origin"] == origin
        response = await client.post(
            UPLOADS, headers={**TUS, "Upload-Length": "3", "Origin": origin}
        )
        exposed = {
            h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
        }
        assert {
            "upload-offset",
            "location",
            "upload-length",
            "tus-version",
            "tus-resumable",
            "tus-max-size",
            "tus-extension",
            "upload-expires",
            "upload-metadata",
        } <= exposed
        other = await client.post(
            UPLOADS, headers={**TUS, "Upload-Length": "3", "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


async def test_an_upload_stranded_at_its_length_is_completed_by_head(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """A process that died after the last checkpoint but before the commit left every byte and
    a row at the upload's length: the next look makes it the file (a client that reads
    Upload-Offset = Upload-Length sends nothing more)."""
    path = await create(client, 10)
    assert (await patch(client, path, 0, b"01234")).status_code == 204
    (part,) = upload_files(settings.media_root)
    with part.open("ab") as file:
        file.write(b"56789")
    hasher = ResumableSha256()
    hasher.update(b"0123456789")
    await age(settings, uid_of(path), offset=10, hash_state=hasher.state())
    head = await client.head(path, headers=TUS)
    assert head.headers["upload-offset"] == "10"
    assert head.headers["content-location"] == f"/api/v1/files/{uid_of(path)}"
    meta = await file_metadata(client, uid_of(path))
    assert meta["sha256"] == hashlib.sha256(b"0123456789").hexdigest()


async def test_a_database_outage_at_completion_keeps_the_upload_for_the_next_head(
    make_settings: Callable[..., Settings],
) -> None:
    """The database goes away while the last PATCH commits the file: 503, and the upload keeps
    its bytes and row (only the link to the final path goes); the next HEAD completes it."""
    async with own_postgres_database() as url:
        settings = make_settings(database_url=url)
        async with client_for(settings, raise_app_exceptions=False) as http:
            sha = hashlib.sha256(DATA).hexdigest()
            path = await create(http, len(DATA), {"Upload-Metadata": metadata(sha256=sha)})
            half = len(DATA) // 2
            assert (await patch(http, path, 0, DATA[:half])).status_code == 204
            last = patch(http, path, half, DATA[half:])
            response = await with_file_insert_cut_off(url, last)
            problem = assert_problem(response, 503)
            assert problem["type"].endswith("database-unavailable")
            assert response.headers["tus-resumable"] == "1.0.0"
            (kept,) = upload_files(settings.media_root)
            assert kept.read_bytes() == DATA
            assert leftovers(settings.media_root) == [kept]  # no link without a row
            head = await http.head(path, headers=TUS)
            assert head.status_code == 200, head.status_code
            assert head.headers["upload-offset"] == str(len(DATA))
            assert head.headers["content-location"] == f"/api/v1/files/{uid_of(path)}"
            assert (await file_metadata(http, uid_of(path)))["sha256"] == sha
        # The file, and nothing else: neither the .upload name nor a second link.
        assert_stored_at_uid_path(settings.media_root, uid_of(path), DATA)
