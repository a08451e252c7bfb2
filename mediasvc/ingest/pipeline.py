"""One upload, start to finish: admission → part file (hash + size) → fsync → rename → row.

The ingestor takes an async iterator of body chunks and the plain facts of the request, so any
front end can call it: the HTTP routes (api/uploads.py), and whatever else brings bytes. A 201
means the bytes are durable and the row is committed. Any failure before that removes what was
written.

    chunks ─▶ BodyReader (count, limit, idle, rate) ─▶ BatchingFeeder (buffers, worker thread)
          ─▶ [MultipartFileReader] ─▶ FileSink (hash, head, file limit) ─▶ PartFile (disk)
          ─▶ commit_part (rename + row in the uid's commit window)
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from mediasvc.db.models import FileRecord
from mediasvc.db.repository import UploadCompletion
from mediasvc.db.session import Database
from mediasvc.errors import InvalidMetadata, PayloadTooLarge
from mediasvc.events.metadata import parse_metadata
from mediasvc.ids import hash_token, new_delete_token, new_uid
from mediasvc.ingest import checksum
from mediasvc.ingest.admission import UploadAdmission
from mediasvc.ingest.body import BodyReader
from mediasvc.ingest.buffers import BufferPool
from mediasvc.ingest.commit import commit_part, new_record
from mediasvc.ingest.config import IngestConfig
from mediasvc.ingest.feeder import BatchingFeeder
from mediasvc.ingest.multipart import FRAMING_ALLOWANCE_BYTES, MultipartFileReader
from mediasvc.ingest.names import extension_of
from mediasvc.ingest.sink import FileSink, ReceivedFile
from mediasvc.ingest.sniff import choose_format
from mediasvc.storage.local import LocalStore
from mediasvc.storage.part import PartFile


@dataclass(frozen=True, slots=True)
class UploadOptions:
    max_downloads: int | None = None
    expires_in_s: int | None = None
    owner: str | None = None
    metadata: dict[str, Any] | None = None  # the caller's (events/metadata.py), checked already


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadFacts:
    """What the request says about the file, before a body byte is read."""

    name: str | None = None  # the original name (a form's part names its own)
    declared_type: str | None = None  # the body's Content-Type (a form: with its boundary)
    declared_length: int | None = None  # the body's length, when known
    expected_sha256: tuple[str, ...] = ()  # hex digests the file must have
    client: str | None = None  # the client's address, for the per-client cap
    # Chosen before the bytes came (an import answers them at once): the file's uid, and the
    # hash of the delete token already given out.
    uid: str | None = None
    delete_token_hash: str | None = None


@dataclass(frozen=True, slots=True)
class StoredUpload:
    record: FileRecord
    delete_token: str


@dataclass(frozen=True, slots=True)
class _Received:
    file: ReceivedFile
    name: str | None
    declared_type: str | None
    metadata: dict[str, Any] | None = None  # given in the body (a form's metadata field)


# Called after the row is committed (e.g. to enqueue the cloud push); must not raise.
AfterCommit = Callable[[FileRecord], Awaitable[None]]
# Fills the sink from the chunks; what was received.
_Receive = Callable[[AsyncIterable[bytes], FileSink, int], Awaitable[_Received]]


class Ingestor:
    def __init__(
        self,
        config: IngestConfig,
        store: LocalStore,
        db: Database,
        after_commit: AfterCommit | None = None,
    ) -> None:
        self.config = config
        self._store = store
        self._db = db
        self._after_commit = after_commit
        self.admission = UploadAdmission(
            max_in_flight=config.max_uploads_in_flight,
            max_per_client=config.max_uploads_per_client,
            retry_after_s=config.upload_retry_after_s,
        )
        self.buffers = BufferPool(
            buffer_bytes=config.io_chunk_size_bytes,
            budget_bytes=config.upload_buffer_budget_bytes,
        )
        self.body_reader = BodyReader(
            idle_timeout_s=config.body_idle_timeout_s,
            min_rate_bytes_per_s=config.body_min_rate_bytes_per_s,
            window_s=config.body_min_rate_window_s,
        )

    async def ingest(
        self, chunks: AsyncIterable[bytes], facts: UploadFacts, options: UploadOptions
    ) -> StoredUpload:
        """The chunks are the file."""

        async def receive(
            chunks: AsyncIterable[bytes], sink: FileSink, max_body_bytes: int
        ) -> _Received:
            await self._pump(chunks, sink, sink.write, max_body_bytes)
            file = await anyio.to_thread.run_sync(sink.finish)
            return _Received(file, facts.name, facts.declared_type)

        return await self._ingest(chunks, facts, options, receive, allowance_bytes=0)

    async def ingest_form(
        self, chunks: AsyncIterable[bytes], facts: UploadFacts, options: UploadOptions
    ) -> StoredUpload:
        """The chunks are a multipart/form-data body (``facts.declared_type`` names its
        boundary) whose part named ``file`` is the file, with its own name and type."""

        async def receive(
            chunks: AsyncIterable[bytes], sink: FileSink, max_body_bytes: int
        ) -> _Received:
            reader = MultipartFileReader(
                facts.declared_type,
                sink,
                max_parts=self.config.multipart_max_parts,
                max_part_header_bytes=self.config.multipart_max_part_header_bytes,
            )
            await self._pump(chunks, sink, reader.process, max_body_bytes)
            reader.check_complete()
            metadata = parse_metadata(reader.metadata)
            if metadata is not None and options.metadata is not None:
                raise InvalidMetadata("give metadata once: as the form field or X-Metadata")
            file = await anyio.to_thread.run_sync(sink.finish)
            return _Received(file, reader.filename, reader.content_type, metadata)

        return await self._ingest(
            chunks, facts, options, receive, allowance_bytes=FRAMING_ALLOWANCE_BYTES
        )

    async def _ingest(
        self,
        chunks: AsyncIterable[bytes],
        facts: UploadFacts,
        options: UploadOptions,
        receive: _Receive,
        *,
        allowance_bytes: int,
    ) -> StoredUpload:
        limit = self.config.max_upload_size_bytes
        max_body_bytes = limit + allowance_bytes if limit else 0
        length = facts.declared_length
        if length is not None and max_body_bytes and length > max_body_bytes:
            raise PayloadTooLarge(f"the body is {length} bytes; files may be at most {limit} bytes")
        with self.admission.admit(facts.client):  # before a body byte is read: 503/429
            # statvfs may block (a slow or network mount): off the event loop.
            await anyio.to_thread.run_sync(self._store.ensure_room_for, length or 0)
            return await self._admitted(chunks, facts, options, receive, max_body_bytes)

    async def _admitted(
        self,
        chunks: AsyncIterable[bytes],
        facts: UploadFacts,
        options: UploadOptions,
        receive: _Receive,
        max_body_bytes: int,
    ) -> StoredUpload:
        part = await anyio.to_thread.run_sync(self._store.create_part, facts.uid or new_uid())
        sink = FileSink(part, max_size_bytes=self.config.max_upload_size_bytes)
        try:
            if facts.declared_length:
                await anyio.to_thread.run_sync(part.reserve, facts.declared_length)
            received = await receive(chunks, sink, max_body_bytes)
            checksum.verify(facts.expected_sha256, received.file.sha256)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(part.discard)
            raise

        return await self.commit_file(
            part,
            sha256=received.file.sha256,
            name=received.name,
            declared_type=received.declared_type,
            head=received.file.head,
            options=replace(options, metadata=received.metadata or options.metadata),
            delete_token_hash=facts.delete_token_hash,
        )

    async def commit_file(
        self,
        part: PartFile,
        *,
        sha256: str,
        name: str | None,
        declared_type: str | None,
        head: bytes,
        options: UploadOptions,
        completes_upload: UploadCompletion | None = None,
        delete_token_hash: str | None = None,
    ) -> StoredUpload:
        """A finished part file becomes a file: its row (with a new delete token, unless the
        hash of one given out earlier is passed), the rename, then the jobs every new file
        gets. A resumable upload ends here too."""
        try:
            volume = await anyio.to_thread.run_sync(lambda: self._store.volume_id)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(part.discard)
            raise
        delete_token = new_delete_token()
        now = datetime.now(UTC)
        expires_in = timedelta(seconds=options.expires_in_s) if options.expires_in_s else None
        record = new_record(
            part,
            sha256=sha256,
            created_at=now,
            original_name=name,
            extension=extension_of(name),
            media_type=choose_format(declared_type, head),
            expires_at=now + expires_in if expires_in else None,
            max_downloads=options.max_downloads,
            owner=options.owner,
            delete_token_hash=delete_token_hash or hash_token(delete_token),
            volume=volume,
            caller_metadata=options.metadata,
        )
        await commit_part(self._db, part, record, completes_upload=completes_upload)
        if self._after_commit is not None:
            await self._after_commit(record)
        return StoredUpload(record=record, delete_token=delete_token)

    async def _pump(
        self,
        chunks: AsyncIterable[bytes],
        sink: FileSink,
        process: Callable[[memoryview], Future[None]],
        max_body_bytes: int,
    ) -> None:
        """Read the body through ``process`` in this upload's worker thread, batch by batch."""
        feeder = BatchingFeeder(process, pool=self.buffers, on_idle=sink.park)
        try:
            await self.body_reader.read(
                chunks, feeder.feed, max_bytes=max_body_bytes, on_quiet=feeder.release
            )
            await feeder.close()
        finally:
            await feeder.drain()
