"""The resumable upload engine, whatever the protocol speaking to it (tus today: api/tus.py).

An upload is a row (``uploads``: offset, length, the whole file's SHA-256 state, metadata,
owner, expiry) and a file, ``.incoming/<uid>.upload``. Each request that brings bytes:

    take over (resumable/writers.py: one writer per upload) ─▶ reopen the file at the row's
    offset (cutting what a crash left past it) ─▶ BodyReader ─▶ BatchingFeeder ─▶ ResumableSink
    (hash, append; fsync + row at each checkpoint) ─▶ last checkpoint ─▶ complete?

It reuses the plain upload's parts (ingest/pipeline.py's Ingestor): admission (503/429), the
body reader (408, 413), the batch buffers, the disk checks (507), and on completion
``Ingestor.commit_file``: the file gets the same row, delete token and jobs as a plain upload,
and the upload row is marked complete in the same transaction.

Cuts keep what arrived: when the client disconnects, the body times out or a newer request
takes over, the partly filled batch is still written, and the offset recorded, so the next
``state()`` tells the truth. A request that carries a checksum of its body is the exception:
none of its bytes count unless all of them arrived and match.

The uid of an upload is the uid of its file: ``/api/v1/files/{uid}`` once complete.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
from starlette.requests import ClientDisconnect

from mediasvc.config import Settings
from mediasvc.db.models import UploadConcat, UploadRecord
from mediasvc.db.repository import UploadCompletion
from mediasvc.db.session import Database
from mediasvc.errors import (
    BadRequest,
    ChecksumFailed,
    ChecksumMismatch,
    Forbidden,
    Gone,
    InconsistentUploadLength,
    MediaServiceError,
    NotFound,
    OffsetMismatch,
    PayloadTooLarge,
    RequestTimeout,
    UploadTakenOver,
)
from mediasvc.ids import new_uid
from mediasvc.ingest import checksum as declared
from mediasvc.ingest.feeder import BatchingFeeder
from mediasvc.ingest.pipeline import Ingestor, StoredUpload, UploadOptions
from mediasvc.ingest.sink import SNIFF_HEAD_BYTES
from mediasvc.resumable import repository
from mediasvc.resumable.checkpoints import RowSaver
from mediasvc.resumable.concat import assemble
from mediasvc.resumable.expiry import remove_upload
from mediasvc.resumable.hashing import ResumableSha256, fresh_state
from mediasvc.resumable.metadata import FileOptions, file_options, parse_metadata
from mediasvc.resumable.sink import BodyChecksum, Checkpoint, ResumableSink
from mediasvc.resumable.writers import Arrival, Lease, Writers
from mediasvc.storage.local import LocalStore
from mediasvc.storage.part import PartFile

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumableConfig:
    expires_after_s: int = 86400  # an unfinished upload, after its last byte
    checkpoint_every_bytes: int = 64 * 1024 * 1024
    takeover_wait_s: float = 10.0
    lease_check_s: float = 1.0
    node_url: str | None = None  # this node's internal URL, recorded in the uploads it creates

    @classmethod
    def from_settings(cls, settings: Settings) -> ResumableConfig:
        return cls(
            expires_after_s=settings.upload_expires_after_s,
            checkpoint_every_bytes=settings.upload_checkpoint_every_bytes,
            takeover_wait_s=settings.upload_takeover_wait_s,
            lease_check_s=settings.upload_lease_check_s,
            node_url=settings.internal_url,
        )


@dataclass(frozen=True, slots=True)
class UploadState:
    """What a protocol layer tells a client about an upload."""

    uid: str
    offset: int
    length: int | None  # None: deferred
    expires_at: datetime
    metadata_header: str | None
    concat: str | None  # UploadConcat
    parts: tuple[str, ...]
    complete: bool
    hash_state: bytes  # the SHA-256 state after ``offset`` bytes (Repr-Digest of them so far)

    @classmethod
    def of(cls, row: UploadRecord) -> UploadState:
        return cls(
            uid=row.uid,
            offset=row.offset,
            length=row.length,
            expires_at=row.expires_at,
            metadata_header=row.metadata_header,
            concat=row.concat,
            parts=tuple(row.parts or ()),
            complete=row.completed_at is not None,
            hash_state=row.hash_state,
        )


@dataclass(frozen=True, slots=True)
class Appended:
    """After a request that brought bytes: where the upload is, and its file if it is done."""

    upload: UploadState
    stored: StoredUpload | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewUpload:
    length: int | None  # None: deferred, told by a later request
    metadata_header: str | None
    owner: str | None
    partial: bool = False  # a piece of a later concatenation
    parts: tuple[str, ...] = ()  # a final upload: its partials, in order


@dataclass(frozen=True, slots=True, kw_only=True)
class Body:
    """A request's bytes for an upload."""

    chunks: AsyncIterable[bytes]
    offset: int  # where the client says they go
    length: int | None = None  # the body's length, when declared
    upload_length: int | None = None  # the upload's deferred length, when this request tells it
    checksum: BodyChecksum | None = None
    client: str | None = None  # the client's address, for the per-client cap
    # The body ends the upload (IETF ``Upload-Complete: ?1``): once all of it arrived, a length
    # not told before is where it ended.
    last: bool = False


class Observer:
    """What the engine reports to the metrics (observability.Metrics implements it)."""

    def writing(self, delta: int) -> None: ...
    def received(self, n_bytes: int) -> None: ...
    def resumed(self) -> None: ...


class UploadEngine:
    def __init__(
        self,
        config: ResumableConfig,
        ingestor: Ingestor,
        store: LocalStore,
        db: Database,
    ) -> None:
        self.config = config
        self._ingestor = ingestor
        self._store = store
        self._db = db
        self._writers = Writers(db, wait_s=config.takeover_wait_s, check_s=config.lease_check_s)
        self.observer = Observer()

    @property
    def max_size_bytes(self) -> int:
        """The largest upload accepted (0: no limit)."""
        return self._ingestor.config.max_upload_size_bytes

    # --- creating ----------------------------------------------------------------------------

    async def create(self, new: NewUpload) -> UploadState:
        """A new, empty upload; 400 for bad metadata, 413 over the size limit, 507 if its
        declared length does not fit on the disk."""
        options = file_options(parse_metadata(new.metadata_header))
        self._check_length(new.length)
        if options.sha256 and new.partial:
            raise BadRequest("a partial upload has no sha256 of its own: give it to the final one")
        await anyio.to_thread.run_sync(self._store.ensure_room_for, new.length or 0)
        uid = new_uid()
        now = datetime.now(UTC)
        row = UploadRecord(
            uid=uid,
            offset=0,
            length=new.length,
            hash_state=fresh_state(),
            hash_start=fresh_state(),
            metadata_header=new.metadata_header,
            owner=new.owner,
            concat=_concat_of(new),
            parts=list(new.parts) or None,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(seconds=self.config.expires_after_s),
            completed_at=None,
            generation=0,
            node_url=self.config.node_url,
        )
        await anyio.to_thread.run_sync(self._store.create_upload, uid)
        try:
            async with self._db.session() as session:
                await repository.add(session, row, caller_metadata=options.metadata)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._store.remove_upload, uid)
            raise
        return UploadState.of(row)

    async def create_and_append(self, new: NewUpload, body: Body | None) -> Appended:
        """Create, then take the creating request's body (tus creation-with-upload); an upload
        of length 0 is complete at once."""
        state = await self.create(new)
        if body is None and state.length != 0:
            return Appended(state)
        empty = Body(chunks=_nothing(), offset=0)
        try:
            return await self.append(state.uid, new.owner, body or empty)
        except BaseException:
            # The refused request never told its client the upload's URL: nobody can resume it.
            with anyio.CancelScope(shield=True):
                await self._remove(state.uid)
            raise

    # --- reading -----------------------------------------------------------------------------

    async def state(self, uid: str, owner: str | None) -> UploadState:
        """404 for an unknown upload or another owner's, 410 for an expired one.

        An upload whose bytes are all in but that is not complete (its process died between the
        last checkpoint and the commit) is completed here, so what a client reads is true."""
        row = await self._live(uid, owner)
        stranded = row.completed_at is None and row.offset == row.length
        if stranded and row.concat != UploadConcat.FINAL.value:
            return (
                await self.append(uid, owner, Body(chunks=_nothing(), offset=row.offset))
            ).upload
        return UploadState.of(row)

    async def settled_state(self, uid: str, owner: str | None) -> UploadState:
        """The state once no request writes the upload: one still writing it (a client that
        gave up on it) is ended first and its bytes counted, so the offset told is the one the
        next append must use (the IETF draft's offset retrieval, tus's HEAD)."""
        row = await self._live(uid, owner)
        if row.completed_at is not None:
            return UploadState.of(row)
        # A request that came first holds it first (its client may have been cut off already,
        # and a retry asks right away); holding it then ends that writer, whose last checkpoint
        # lands before the lock is ours.
        await self._writers.after_arrivals(uid)
        with contextlib.suppress(NotFound):  # completed meanwhile: its file moved away
            async with self._writers.hold(uid, self._store.upload_path_for(uid)):
                pass
        return await self.state(uid, owner)

    # --- appending ---------------------------------------------------------------------------

    async def append(self, uid: str, owner: str | None, body: Body) -> Appended:
        """Append ``body`` at its offset (409 if the upload is elsewhere); takes the upload over
        from a request still writing it. Completes the upload when its last byte arrives."""
        arrival = self._writers.arrive(uid)  # before any await: a HEAD after it waits for it
        try:
            return await self._append(uid, owner, body, arrival)
        finally:
            arrival.done()

    async def _append(self, uid: str, owner: str | None, body: Body, arrival: Arrival) -> Appended:
        row = await self._live(uid, owner)
        if row.concat == UploadConcat.FINAL.value:
            raise Forbidden("a final (concatenated) upload takes no bytes of its own")
        if row.completed_at is not None:
            return self._complete_already(row, body)
        length = self._new_length(row, body.upload_length)
        # A deferred length is not known yet, but it cannot be past the largest upload allowed.
        limit = length if length is not None else self.max_size_bytes or None
        if body.length is not None and limit is not None and body.offset + body.length > limit:
            raise PayloadTooLarge(
                f"{body.length} bytes at offset {body.offset} go past the upload's "
                f"{'' if length is not None else 'largest '}{limit}-byte length"
            )
        with self._ingestor.admission.admit(body.client):
            try:
                path = self._store.upload_path_for(uid)
                async with self._writers.hold(uid, path, arrival) as lease:
                    return await self._append_held(uid, owner, body, length, lease)
            except NotFound:
                # The request we took over may have completed it (its file moved away).
                row = await self._live(uid, owner)
                if row.completed_at is None:
                    raise
                return self._complete_already(row, body)

    async def _append_held(
        self, uid: str, owner: str | None, body: Body, length: int | None, lease: Lease
    ) -> Appended:
        row = await self._live(uid, owner)  # as the request we took over left it
        if row.completed_at is not None:
            return self._complete_already(row, body)
        if body.offset != row.offset:
            raise OffsetMismatch(expected=row.offset, provided=body.offset)
        if body.upload_length is not None:  # again: a request taken over moved the offset
            length = self._new_length(row, body.upload_length)
        if length is not None and row.length is None:
            async with self._db.session() as session:
                await repository.set_length(session, uid, length)
            row.length = length
        if body.length:
            await anyio.to_thread.run_sync(self._store.ensure_room_for, body.length)
        self.observer.writing(1)
        try:
            return await self._receive(row, lease, body)
        finally:
            self.observer.writing(-1)

    def _complete_already(self, row: UploadRecord, body: Body) -> Appended:
        """A request for an upload that is complete: fine if it brings nothing at its end."""
        if body.offset != row.offset:
            raise OffsetMismatch(expected=row.offset, provided=body.offset, complete=True)
        if body.length:
            raise PayloadTooLarge("the upload is complete: it takes no more bytes")
        return Appended(UploadState.of(row))

    async def _receive(self, row: UploadRecord, lease: Lease, body: Body) -> Appended:
        start = row.offset
        if row.concat == UploadConcat.PARTIAL.value and start == 0:
            row.hash_start = row.hash_state = await self._chain_start(row.owner)
        if start > 0:
            self.observer.resumed()
        part = await anyio.to_thread.run_sync(self._store.open_upload, row.uid, start)
        saver = RowSaver(
            self._db,
            row,
            expires_after_s=self.config.expires_after_s,
            on_generation=functools.partial(self._writers.still_holds, lease),
        )
        limit = row.length if row.length is not None else self.max_size_bytes or None
        sink = ResumableSink(
            part,
            ResumableSha256(row.hash_state),
            limit_bytes=limit,
            checkpoint_every_bytes=self.config.checkpoint_every_bytes,
            on_checkpoint=saver.submit_threadsafe,
            checksum=body.checksum,
        )
        try:
            if body.length:
                await anyio.to_thread.run_sync(part.reserve, start + body.length)
            cut = await self._pump(body, sink, lease, limit - start if limit else 0)
            end = await anyio.to_thread.run_sync(sink.finish)
            if body.checksum is not None and (cut is not None or not sink.checksum_matches()):
                # Not verified, or wrong: none of this request's bytes count.
                await anyio.to_thread.run_sync(part.cut_back, start)
                end = Checkpoint(start, row.hash_state)
                cut = cut or ChecksumFailed(
                    f"the request's body does not have its {body.checksum.algorithm} "
                    "checksum: none of it was kept"
                )
            self.observer.received(end.offset - start)
            await saver.save(end)
        except BaseException:
            with anyio.CancelScope(shield=True):
                # A write failed (507), the body broke a rule (413) or something else: keep
                # what the last checkpoint recorded, give the rest of the disk back. A row
                # update on its way lands first: cutting below what it records loses bytes.
                await saver.settle()
                await anyio.to_thread.run_sync(part.cut_back, saver.saved_offset)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await saver.close()
        row.offset = end.offset
        if body.last and row.length is None:
            async with self._db.session() as session:
                await repository.set_length(session, row.uid, end.offset)
            row.length = end.offset
        if row.length is not None and end.offset == row.length:
            # Complete even after a cut: a client that sees Upload-Offset = Upload-Length is done
            # and never sends the empty request that would finish it.
            if row.concat == UploadConcat.PARTIAL.value:
                return Appended(await self._finish_partial(row, end))
            return await self._complete(row, part, end, sink.sha256())
        if cut is not None:
            raise cut
        return Appended(UploadState.of(row))

    async def _pump(
        self, body: Body, sink: ResumableSink, lease: Lease, max_bytes: int
    ) -> MediaServiceError | None:
        """Read the body into the sink; a cut (the client left, the body timed out, a newer
        request took over) is returned, not raised: what arrived before it is kept."""
        ingestor = self._ingestor
        feeder = BatchingFeeder(sink.write, pool=ingestor.buffers, on_idle=sink.park)
        cut: MediaServiceError | None = None
        try:
            with anyio.CancelScope() as scope:
                lease.on_end(scope.cancel)
                try:
                    await ingestor.body_reader.read(
                        body.chunks, feeder.feed, max_bytes=max_bytes, on_quiet=feeder.release
                    )
                except RequestTimeout as exc:
                    cut = exc
                except ClientDisconnect:
                    cut = BadRequest("the client disconnected before the body ended")
            lease.on_end(None)
            if scope.cancelled_caught:
                cut = UploadTakenOver("a newer request for this upload took it over")
            await feeder.close()
        finally:
            await feeder.drain()
        return cut

    # --- completing --------------------------------------------------------------------------

    async def _complete(
        self, row: UploadRecord, part: PartFile, end: Checkpoint, sha256: str
    ) -> Appended:
        options = file_options(parse_metadata(row.metadata_header))
        try:
            declared.verify([options.sha256] if options.sha256 else [], sha256)
        except ChecksumMismatch:
            await self._remove(row.uid)  # whole and wrong: nothing to resume
            raise
        head = await anyio.to_thread.run_sync(_read_head, part)
        now = datetime.now(UTC)
        # Whole and right: should the commit fail (the database down or failing over, the
        # request cancelled), commit_file removes only the link it made, and the upload stays
        # as its last checkpoint left it, all its bytes in. Its next request (a HEAD too:
        # state()) completes it again; removing it would lose a whole upload to an outage its
        # client is told to retry (503).
        stored = await self._ingestor.commit_file(
            part,
            sha256=sha256,
            name=options.filename,
            declared_type=options.filetype,
            head=head,
            options=_upload_options(options, row.owner),
            completes_upload=UploadCompletion(
                completed_at=now,
                expires_at=now + timedelta(seconds=self.config.expires_after_s),
                hash_state=end.hash_state,
            ),
        )
        async with self._db.session() as session:
            done = await repository.get(session, row.uid)
        assert done is not None
        return Appended(UploadState.of(done), stored)

    async def _finish_partial(self, row: UploadRecord, end: Checkpoint) -> UploadState:
        now = datetime.now(UTC)
        async with self._db.session() as session:
            await repository.checkpoint(
                session,
                row.uid,
                offset=end.offset,
                hash_state=end.hash_state,
                now=now,
                expires_at=row.expires_at,
                completed_at=now,
            )
            done = await repository.get(session, row.uid)
        assert done is not None
        return UploadState.of(done)

    async def _chain_start(self, owner: str | None) -> bytes:
        """Where a partial upload's hash starts: where the owner's last finished partial
        ended, so that parts sent one after another concatenate without a reread
        (resumable/concat.py); a fresh hash when there is none."""
        async with self._db.session() as session:
            previous = await repository.last_finished_partial(session, owner)
        return previous.hash_state if previous is not None else fresh_state()

    # --- concatenating -----------------------------------------------------------------------

    async def concatenate(
        self, parts: list[str], *, metadata_header: str | None, owner: str | None
    ) -> Appended:
        """A final upload made of finished partial uploads, in this order; it completes at
        once (resumable/concat.py says when that rereads the parts)."""
        if not parts:
            raise BadRequest("Upload-Concat: final names no partial upload")
        await self._partials(parts, owner)  # refused before waiting for any lock
        async with contextlib.AsyncExitStack() as stack:
            try:
                held = self._writers.holding_finished(parts, self._store.upload_path_for)
                await stack.enter_async_context(held)
            except NotFound as exc:  # its file went meanwhile (another final, a DELETE)
                raise BadRequest(f"a partial upload is gone: {exc.detail}") from exc
            # Read again under the locks: a final upload naming the same partials that held
            # them before us took them (their rows and bytes are gone), or failed and left them
            # as they were. So of two at once, exactly one joins them; the other is 400.
            rows = await self._partials(parts, owner, again=True)
            return await self._join(rows, metadata_header=metadata_header, owner=owner)
        raise AssertionError("unreachable: the block returns or raises")

    async def _join(
        self, rows: list[UploadRecord], *, metadata_header: str | None, owner: str | None
    ) -> Appended:
        """Make the final upload of these finished partials (held) and remove them."""
        parts = [row.uid for row in rows]
        length = sum(row.offset for row in rows)
        self._check_length(length)
        new = NewUpload(
            length=length, metadata_header=metadata_header, owner=owner, parts=tuple(parts)
        )
        uid = (await self.create(new)).uid
        try:
            async with self._writers.hold(uid, self._store.upload_path_for(uid)):
                await anyio.to_thread.run_sync(self._store.ensure_room_for, length)
                assembled = await anyio.to_thread.run_sync(
                    assemble, self._store, uid, rows, self._ingestor.config.io_chunk_size_bytes
                )
                if assembled.reread:
                    logger.info("upload %s: reread partial uploads %s", uid, assembled.reread)
                sha = assembled.hasher
                part = await anyio.to_thread.run_sync(self._store.open_upload, uid, length)
                await anyio.to_thread.run_sync(part.finish)
                async with self._db.session() as session:
                    row = await repository.get(session, uid)
                assert row is not None
                end = Checkpoint(length, sha.state())
                result = await self._complete(row, part, end, sha.hexdigest())
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._remove(uid)
            raise
        for partial in rows:  # used: their bytes are in the final file now
            await self._remove(partial.uid)
        return result

    async def _partials(
        self, parts: list[str], owner: str | None, *, again: bool = False
    ) -> list[UploadRecord]:
        """The rows of a final upload's partials, in its order; 400 unless each is usable.
        ``again``: they were all there a moment ago (one missing now was taken meanwhile)."""
        async with self._db.session() as session:
            found = await repository.get_many(session, parts)
        for uid in parts:
            if again and uid not in found:
                raise BadRequest(
                    f"partial upload {uid} is gone: another final upload took it, or it was "
                    "terminated"
                )
        return [self._partial(found.get(uid), uid, owner) for uid in parts]

    def _partial(self, row: UploadRecord | None, uid: str, owner: str | None) -> UploadRecord:
        if row is None or row.owner != owner:
            raise BadRequest(f"Upload-Concat names {uid}, which is no upload of yours")
        if row.concat != UploadConcat.PARTIAL.value:
            raise BadRequest(f"Upload-Concat names {uid}, which is not a partial upload")
        if row.completed_at is None:
            raise BadRequest(f"partial upload {uid} is not finished")
        if row.expires_at <= datetime.now(UTC):  # cleanup's now, whatever a final wants
            raise BadRequest(f"partial upload {uid} expired")
        return row

    # --- ending ------------------------------------------------------------------------------

    async def terminate(self, uid: str, owner: str | None) -> None:
        """Remove an upload, bytes and row (tus termination); a request writing it ends first.
        A finished upload is a file by now: only the upload's row goes (its URL is 404 from
        then on); the file is deleted with its delete token, like any file."""
        row = await self._live(uid, owner)
        if row.completed_at is not None and row.concat != UploadConcat.PARTIAL.value:
            async with self._db.session() as session:
                await repository.remove(session, uid)
            return
        async with self._writers.hold(uid, self._store.upload_path_for(uid)):
            await self._remove(uid)

    async def _remove(self, uid: str) -> None:
        await remove_upload(self._db, self._store, uid)

    # --- checks ------------------------------------------------------------------------------

    async def _live(self, uid: str, owner: str | None) -> UploadRecord:
        async with self._db.session() as session:
            row = await repository.get(session, uid)
        # Another key's upload is not found, rather than forbidden: its uid tells nobody else
        # that it exists.
        if row is None or row.owner != owner:
            raise NotFound(f"no upload {uid}")
        if row.expires_at <= datetime.now(UTC):
            raise Gone(f"upload {uid} expired")
        return row

    def _check_length(self, length: int | None) -> None:
        limit = self.max_size_bytes
        if length is not None and limit and length > limit:
            raise PayloadTooLarge(f"the upload is {length} bytes; files may be at most {limit}")

    def _new_length(self, row: UploadRecord, told: int | None) -> int | None:
        if told is None:
            return row.length
        if row.length is not None and told != row.length:
            raise InconsistentUploadLength(
                f"the upload's length is {row.length} already: it cannot change"
            )
        if told < row.offset:
            raise BadRequest(f"the length {told} is below the {row.offset} bytes received")
        self._check_length(told)
        return told


def _concat_of(new: NewUpload) -> str | None:
    if new.parts:
        return UploadConcat.FINAL.value
    return UploadConcat.PARTIAL.value if new.partial else None


def _upload_options(options: FileOptions, owner: str | None) -> UploadOptions:
    return UploadOptions(
        max_downloads=options.max_downloads,
        expires_in_s=options.expires_in_s,
        owner=owner,
        metadata=options.metadata,
    )


def _read_head(part: PartFile) -> bytes:
    with part.path.open("rb") as file:
        return file.read(SNIFF_HEAD_BYTES)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing
