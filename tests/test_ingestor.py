"""The ingestor driven without HTTP: a plain async iterator of chunks and plain request facts.

This is how a resumable-upload engine, a URL import or a job hands it bytes. The app fixture
only provides a migrated, empty database and a media root; no request is made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from mediasvc.config import Settings
from mediasvc.db.models import FileRecord
from mediasvc.errors import (
    ChecksumMismatch,
    InsufficientStorage,
    MalformedMultipart,
    PayloadTooLarge,
    TooManyUploadsFromClient,
)
from mediasvc.ingest.config import IngestConfig
from mediasvc.ingest.pipeline import Ingestor, UploadFacts, UploadOptions
from mediasvc.services import Services

BATCH = 64 * 1024
CONFIG = IngestConfig(io_chunk_size_bytes=BATCH, upload_buffer_budget_bytes=8 * BATCH)


def services_of(app: FastAPI) -> Services:
    services: Services = app.state.services
    return services


def make_ingestor(app: FastAPI, config: IngestConfig = CONFIG) -> tuple[Ingestor, list[str]]:
    """An ingestor of its own on the app's database and store; the uids it reported."""
    services = services_of(app)
    committed: list[str] = []

    async def after_commit(record: FileRecord) -> None:
        committed.append(record.uid)

    return Ingestor(config, services.store, services.db, after_commit=after_commit), committed


async def chunks_of(data: bytes, size: int = 10_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[start : start + size]


def leftover_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".volume-id")


async def row_uids(app: FastAPI) -> list[str]:
    async with services_of(app).db.session() as session:
        return list(await session.scalars(select(FileRecord.uid)))


async def test_a_file_from_a_plain_iterator_is_stored_with_its_row(app: FastAPI) -> None:
    ingestor, committed = make_ingestor(app)
    data = os.urandom(5 * BATCH + 17)
    facts = UploadFacts(name="clip.bin", declared_length=len(data), client="10.0.0.1")
    stored = await ingestor.ingest(chunks_of(data), facts, UploadOptions(max_downloads=3))
    record = stored.record
    assert record.size == len(data)
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert record.original_name == "clip.bin" and record.extension == "bin"
    assert record.max_downloads == 3
    assert record.volume == services_of(app).store.volume_id
    assert committed == [record.uid]
    store = services_of(app).store
    assert store.path_for(record.uid).read_bytes() == data
    assert leftover_files(store.root) == [store.path_for(record.uid)]
    assert await row_uids(app) == [record.uid]
    assert ingestor.admission.in_flight == 0
    assert ingestor.buffers.in_use == 0


async def test_a_form_from_a_plain_iterator_stores_its_file_part(app: FastAPI) -> None:
    ingestor, _ = make_ingestor(app)
    data = os.urandom(3 * BATCH)
    boundary = "plainIteratorBoundary"
    form = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="photo.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    facts = UploadFacts(declared_type=f"multipart/form-data; boundary={boundary}")
    stored = await ingestor.ingest_form(chunks_of(form, 7777), facts, UploadOptions())
    assert stored.record.original_name == "photo.png"
    assert stored.record.format == "image/png"
    assert stored.record.sha256 == hashlib.sha256(data).hexdigest()
    assert services_of(app).store.path_for(stored.record.uid).read_bytes() == data


async def test_a_source_that_fails_midway_leaves_nothing(app: FastAPI) -> None:
    ingestor, committed = make_ingestor(app)

    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(3 * BATCH)
        raise ConnectionResetError("the source went away")

    with pytest.raises(ConnectionResetError):
        await ingestor.ingest(broken(), UploadFacts(), UploadOptions())
    assert leftover_files(services_of(app).store.root) == []
    assert await row_uids(app) == []
    assert committed == []
    assert ingestor.buffers.in_use == 0


async def test_a_wrong_expected_digest_is_refused_and_nothing_is_kept(app: FastAPI) -> None:
    ingestor, _ = make_ingestor(app)
    data = os.urandom(2 * BATCH)
    facts = UploadFacts(expected_sha256=(hashlib.sha256(b"other").hexdigest(),))
    with pytest.raises(ChecksumMismatch):
        await ingestor.ingest(chunks_of(data), facts, UploadOptions())
    assert leftover_files(services_of(app).store.root) == []
    assert await row_uids(app) == []


async def test_the_file_limit_holds_for_a_source_of_unknown_length(app: FastAPI) -> None:
    ingestor, _ = make_ingestor(
        app, IngestConfig(io_chunk_size_bytes=BATCH, max_upload_size_bytes=BATCH)
    )
    with pytest.raises(PayloadTooLarge):
        await ingestor.ingest(chunks_of(os.urandom(BATCH + 1)), UploadFacts(), UploadOptions())
    assert leftover_files(services_of(app).store.root) == []
    exact = await ingestor.ingest(chunks_of(os.urandom(BATCH)), UploadFacts(), UploadOptions())
    assert exact.record.size == BATCH


async def test_a_declared_length_over_the_limit_or_the_disk_is_refused_before_reading(
    app: FastAPI,
) -> None:
    ingestor, _ = make_ingestor(
        app, IngestConfig(io_chunk_size_bytes=BATCH, max_upload_size_bytes=BATCH)
    )
    pulled = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal pulled
        pulled += 1
        yield b"x"

    with pytest.raises(PayloadTooLarge):
        await ingestor.ingest(counted(), UploadFacts(declared_length=BATCH + 1), UploadOptions())
    unlimited, _ = make_ingestor(app, IngestConfig(max_upload_size_bytes=0))
    with pytest.raises(InsufficientStorage):
        await unlimited.ingest(counted(), UploadFacts(declared_length=1 << 60), UploadOptions())
    assert pulled == 0
    assert leftover_files(services_of(app).store.root) == []


async def test_a_form_without_a_file_part_is_refused(app: FastAPI) -> None:
    ingestor, _ = make_ingestor(app)
    form = b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\nvalue\r\n--b--\r\n'
    facts = UploadFacts(declared_type="multipart/form-data; boundary=b")
    with pytest.raises(MalformedMultipart):
        await ingestor.ingest_form(chunks_of(form), facts, UploadOptions())
    assert leftover_files(services_of(app).store.root) == []


async def test_the_client_address_in_the_facts_is_what_admission_counts(app: FastAPI) -> None:
    ingestor, _ = make_ingestor(
        app, IngestConfig(io_chunk_size_bytes=BATCH, max_uploads_per_client=1)
    )
    started, go = asyncio.Event(), asyncio.Event()

    async def held() -> AsyncIterator[bytes]:
        started.set()  # admitted: the first chunk is being read
        yield b"first"
        await go.wait()
        yield b"rest"

    first = asyncio.create_task(
        ingestor.ingest(held(), UploadFacts(client="192.0.2.1"), UploadOptions())
    )
    await started.wait()
    with pytest.raises(TooManyUploadsFromClient):
        await ingestor.ingest(chunks_of(b"x"), UploadFacts(client="192.0.2.1"), UploadOptions())
    other = await ingestor.ingest(chunks_of(b"y"), UploadFacts(client="192.0.2.2"), UploadOptions())
    assert other.record.size == 1
    go.set()
    assert (await first).record.size == len(b"firstrest")
    assert ingestor.admission.in_flight == 0


def test_the_ingest_config_is_taken_from_the_settings_field_by_field(settings: Settings) -> None:
    config = IngestConfig.from_settings(settings)
    for field in dataclasses.fields(config):
        assert getattr(config, field.name) == getattr(settings, field.name)
    assert config.io_chunk_size_bytes == BATCH  # the test settings' batch, not the default


def test_the_ingest_config_defaults_are_the_settings_defaults() -> None:
    assert IngestConfig.from_settings(Settings(_env_file=None)) == IngestConfig()  # type: ignore[call-arg]


async def test_a_form_of_unknown_length_is_held_to_the_limit_plus_framing(app: FastAPI) -> None:
    # The same rule as for a declared Content-Length: the file's limit plus 64 KiB of framing,
    # however the bytes are split between the file and other fields.
    ingestor, _ = make_ingestor(app, IngestConfig(max_upload_size_bytes=BATCH))
    filler = b"v" * (BATCH + 64 * 1024)  # a field that is not the file
    form = (
        b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\n' + filler + b"\r\n"
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\nx\r\n--b--\r\n'
    )
    facts = UploadFacts(declared_type="multipart/form-data; boundary=b")
    with pytest.raises(PayloadTooLarge):
        await ingestor.ingest_form(chunks_of(form), facts, UploadOptions())
    assert leftover_files(services_of(app).store.root) == []
