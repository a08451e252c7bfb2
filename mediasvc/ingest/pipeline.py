"""One upload, start to finish: limits → ``.part`` file (hash + size) → fsync → rename → row.

A 201 means the bytes are durable and the row is committed. Any failure before that removes what
was written: the ``.part`` file, or the renamed file when the row could not be committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
from starlette.requests import Request

from mediasvc.config import Settings
from mediasvc.db import repository
from mediasvc.db.models import CloudStatus, FileRecord
from mediasvc.db.session import Database
from mediasvc.errors import PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from mediasvc.ids import hash_token, new_delete_token, new_uid
from mediasvc.ingest import checksum
from mediasvc.ingest.admission import UploadAdmission
from mediasvc.ingest.blob import BlobFile, WrittenBlob
from mediasvc.ingest.buffers import BufferPool
from mediasvc.ingest.feeder import BatchingFeeder
from mediasvc.ingest.multipart import MultipartFileReader
from mediasvc.ingest.names import extension_of, name_from_request
from mediasvc.ingest.sniff import choose_format, is_multipart
from mediasvc.ingest.watchdog import BodyWatchdog
from mediasvc.storage.local import LocalStore

# Room for the multipart framing around the file: boundaries, part headers, small fields.
MULTIPART_FRAMING_ALLOWANCE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class UploadOptions:
    max_downloads: int | None = None
    expires_in_s: int | None = None
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class StoredUpload:
    record: FileRecord
    delete_token: str


@dataclass(frozen=True, slots=True)
class _Received:
    blob: WrittenBlob
    name: str | None
    declared_type: str | None


# Called after the row is committed (e.g. to enqueue the cloud push); must not raise.
AfterCommit = Callable[[FileRecord], Awaitable[None]]


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        store: LocalStore,
        db: Database,
        after_commit: AfterCommit | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._db = db
        self._after_commit = after_commit
        self.admission = UploadAdmission(
            max_in_flight=settings.max_uploads_in_flight,
            max_per_client=settings.max_uploads_per_client,
            retry_after_s=settings.upload_retry_after_s,
        )
        self.buffers = BufferPool(
            buffer_bytes=settings.io_chunk_size_bytes,
            budget_bytes=settings.upload_buffer_budget_bytes,
        )
        self._watchdog = BodyWatchdog(
            idle_timeout_s=settings.body_idle_timeout_s,
            min_rate_bytes_per_s=settings.body_min_rate_bytes_per_s,
            window_s=settings.body_min_rate_window_s,
        )

    async def ingest_raw(
        self, request: Request, *, raw_path: bytes | None, options: UploadOptions
    ) -> StoredUpload:
        """A raw body (``--data-binary``, ``-T``): the bytes are the file.

        ``raw_path`` is the request's raw path when its last segment names the file (PUT).
        """
        content_type = request.headers.get("content-type")
        if is_multipart(content_type):
            raise UnsupportedMediaType(
                "this endpoint takes the raw file as the body; send multipart/form-data "
                "to POST /api/v1/files"
            )
        name = name_from_request(request.headers, request.scope.get("query_string", b""), raw_path)
        declared = self._check_declared_length(request, allowance_bytes=0)

        async def receive(blob: BlobFile) -> _Received:
            await self._pump(request, blob, blob.write)
            return _Received(await anyio.to_thread.run_sync(blob.finish), name, content_type)

        return await self._ingest(request, declared, receive, options)

    async def ingest_multipart(self, request: Request, *, options: UploadOptions) -> StoredUpload:
        """A multipart/form-data body whose part named ``file`` is the file."""
        if not is_multipart(request.headers.get("content-type")):
            raise UnsupportedMediaType(
                "this endpoint takes multipart/form-data; send raw bodies to /api/v1/files/stream"
            )
        declared = self._check_declared_length(
            request, allowance_bytes=MULTIPART_FRAMING_ALLOWANCE_BYTES
        )

        async def receive(blob: BlobFile) -> _Received:
            reader = MultipartFileReader(
                request.headers.get("content-type"),
                blob,
                max_parts=self._settings.multipart_max_parts,
                max_part_header_bytes=self._settings.multipart_max_part_header_bytes,
            )
            await self._pump(request, blob, reader.process)
            reader.check_complete()
            written = await anyio.to_thread.run_sync(blob.finish)
            return _Received(written, reader.filename, reader.content_type)

        return await self._ingest(request, declared, receive, options)

    async def _pump(
        self,
        request: Request,
        blob: BlobFile,
        process: Callable[[memoryview], Future[None] | None],
    ) -> None:
        """Stream the body through ``process`` in a worker thread, one batch at a time."""
        feeder = BatchingFeeder(process, pool=self.buffers, on_idle=blob.park)
        loop = asyncio.get_running_loop()
        try:
            # A client that stops sending, or trickles, holds a connection, a slot and a .part
            # file: the watchdog drops it (408) by expiring this timeout, and it is cleaned up.
            async with asyncio.timeout(None) as deadline:
                with self._watchdog.watch(deadline, feeder) as watch:
                    async for chunk in request.stream():
                        arrived = loop.time()
                        watch.busy = True
                        await feeder.feed(chunk)
                        watch.fed(len(chunk), arrived, loop.time())
            await feeder.close()
        except TimeoutError as exc:
            # RFC 9110 §15.5.9: a 408 SHOULD close the connection. Without it uvicorn kept the
            # socket open, and once the client sent any more body bytes (which it discards) no
            # timer closed it at all (tests/test_hostile_input.py).
            raise RequestTimeout(
                watch.verdict or "the body was too slow", headers={"Connection": "close"}
            ) from exc
        finally:
            await feeder.drain()

    def _check_declared_length(self, request: Request, *, allowance_bytes: int) -> int | None:
        declared = request.headers.get("content-length")
        length = int(declared) if declared and declared.isdigit() else None
        limit = self._settings.max_upload_size_bytes
        if length is not None and limit and length > limit + allowance_bytes:
            raise PayloadTooLarge(f"the body is {length} bytes; files may be at most {limit} bytes")
        self._store.ensure_room_for(length or 0)
        return length

    async def _ingest(
        self,
        request: Request,
        declared_bytes: int | None,
        receive: Callable[[BlobFile], Awaitable[_Received]],
        options: UploadOptions,
    ) -> StoredUpload:
        expected_sha256 = checksum.expected_sha256(request.headers)
        client = request.client.host if request.client else None
        with self.admission.admit(client):  # before a body byte is read: 503/429
            return await self._admitted(request, declared_bytes, receive, options, expected_sha256)

    async def _admitted(
        self,
        request: Request,
        declared_bytes: int | None,
        receive: Callable[[BlobFile], Awaitable[_Received]],
        options: UploadOptions,
        expected_sha256: list[str],
    ) -> StoredUpload:
        uid = new_uid()
        part_path = self._store.part_path_for(uid)
        blob = BlobFile(
            part_path,
            max_size_bytes=self._settings.max_upload_size_bytes,
            fsync=self._settings.fsync,
            direct_io=self._settings.direct_io,
            space=self._store,
        )
        try:
            if declared_bytes:
                await anyio.to_thread.run_sync(blob.reserve, declared_bytes)
            received = await receive(blob)
            checksum.verify(expected_sha256, received.blob.sha256)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(blob.discard)
            raise

        delete_token = new_delete_token()
        record = self._new_record(uid, received, options, delete_token)
        record.volume = await anyio.to_thread.run_sync(lambda: self._store.volume_id)
        await self._commit(uid, part_path, blob, record)
        if self._after_commit is not None:
            await self._after_commit(record)
        return StoredUpload(record=record, delete_token=delete_token)

    async def _commit(self, uid: str, part_path: Path, blob: BlobFile, record: FileRecord) -> None:
        """Rename the file into place and commit its row, inside the uid's commit window.

        The window's lock is taken before the rename and held until the row's transaction
        ends, so the sweep of rowless files never takes a file whose row is still on its way,
        however long the INSERT waits (db/commit_window.py). If this process dies in between,
        the file has no row and the sweep removes it.
        """
        renamed = False
        try:
            async with (
                self._db.session() as session,
                self._db.commit_window.committing(session, uid),
            ):
                await anyio.to_thread.run_sync(self._store.commit, part_path, uid)
                renamed = True
                await repository.add(session, record)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if renamed:
                    await anyio.to_thread.run_sync(self._store.remove, uid)
                else:
                    await anyio.to_thread.run_sync(blob.discard)
            raise

    @staticmethod
    def _new_record(
        uid: str, received: _Received, options: UploadOptions, delete_token: str
    ) -> FileRecord:
        now = datetime.now(UTC)
        return FileRecord(
            uid=uid,
            original_name=received.name,
            extension=extension_of(received.name),
            format=choose_format(received.declared_type, received.blob.head),
            size=received.blob.size,
            sha256=received.blob.sha256,
            created_at=now,
            expires_at=(
                now + timedelta(seconds=options.expires_in_s) if options.expires_in_s else None
            ),
            max_downloads=options.max_downloads,
            bytes_served=0,
            local=True,
            cloud_status=CloudStatus.PENDING.value,
            cloud_updated_at=now,
            cloud_attempts=0,
            delete_token_hash=hash_token(delete_token),
            owner=options.owner,
        )
