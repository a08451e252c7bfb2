"""The ``.part`` file of one upload: written, hashed and counted in one pass.

Its methods block (they write and hash), so they run in the upload's worker thread, never on the
event loop. Each batch is hashed in that thread while a second thread writes it, one batch
behind at most: hashlib and os.write both release the GIL, so the two overlap fully (waiting for
each batch's write before hashing the next left the hashing thread idle ~20 % of the time, by
py-spy). ``write()`` returns the write's future: the caller may reuse the batch's buffer only
once it is done. Writes bypass
the page cache where the filesystem allows (storage/direct.py says why), so the final fsync has
little left to do. Where they cannot, the writer flushes every ``FLUSH_EVERY_BYTES`` with fsync
on, so that the disk flush overlaps with receiving instead of following it.

Disk space: a body of known length is reserved up front (``reserve()``: real blocks, so two
uploads can't both count on the same free space; issue 12). Bytes beyond the reservation (a
chunked body) are checked against the headroom before each write, so that a chunked upload
stops at the headroom instead of filling the disk.

The writer thread exists while batches come: ``park()`` (the feeder calls it when the body
idles) ends it, and the next write starts another.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mediasvc.errors import PayloadTooLarge
from mediasvc.storage.direct import AppendOnlyFile
from mediasvc.storage.local import translate_os_error

SNIFF_HEAD_BYTES = 8 * 1024
FLUSH_EVERY_BYTES = 64 * 1024 * 1024
# Writes still in flight when write() returns: memory is this many batches on top of the caller's.
WRITES_BEHIND = 1


class DiskSpace(Protocol):
    """The media disk as an upload sees it (storage/local.py's LocalStore)."""

    def reserve(self, fd: int, size_bytes: int) -> bool:
        """Allocate ``size_bytes`` to ``fd``'s file (507 if they don't fit); False: unsupported."""
        ...

    def ensure_room_for(self, size_bytes: int) -> None:
        """507 unless ``size_bytes`` more fit beside the headroom."""
        ...


@dataclass(frozen=True, slots=True)
class WrittenBlob:
    size: int
    sha256: str
    head: bytes


class BlobFile:
    def __init__(
        self,
        path: Path,
        *,
        max_size_bytes: int,
        fsync: bool,
        direct_io: bool = True,
        space: DiskSpace | None = None,
    ) -> None:
        self.path = path
        self._max_size = max_size_bytes
        self._fsync = fsync
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self.size = 0
        self._unflushed = 0
        self._space = space
        self._reserved = 0  # bytes allocated to the file up front
        self._writer: ThreadPoolExecutor | None = None
        self._pending: deque[Future[None]] = deque()
        self._write_error: BaseException | None = None
        try:
            self._file: AppendOnlyFile | None = AppendOnlyFile(path, direct=direct_io)
        except OSError as exc:  # a disk out of inodes fails here with ENOSPC: 507, not 500
            raise translate_os_error(exc) from exc

    def reserve(self, size_bytes: int) -> None:
        """Allocate the declared size up front (blocking); 507 if it does not fit."""
        assert self._file is not None and self._space is not None
        if size_bytes and self._space.reserve(self._file.fd, size_bytes):
            self._reserved = size_bytes

    def write(self, data: memoryview | bytes) -> Future[None]:
        """Hash ``data`` and queue its write; ``data`` must stay intact until the future is done."""
        if self._write_error is not None:
            raise self._write_error
        self.size += len(data)
        if self._max_size and self.size > self._max_size:
            raise PayloadTooLarge(f"the file is larger than the {self._max_size}-byte limit")
        if self._space is not None and self.size > self._reserved:
            # Not reserved: keep the headroom. The write still in flight (WRITES_BEHIND) is not
            # on the disk yet, so the disk can end at most one batch below the headroom.
            self._space.ensure_room_for(len(data))
        if len(self._head) < SNIFF_HEAD_BYTES:
            self._head += data[: SNIFF_HEAD_BYTES - len(self._head)]
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mediasvc-write")
        written = self._writer.submit(self._write_all, data)
        self._hash.update(data)
        self._pending.append(written)
        while len(self._pending) > WRITES_BEHIND:
            self._pending.popleft().result()
        return written

    def _write_all(self, data: memoryview | bytes) -> None:
        assert self._file is not None
        if self._write_error is not None:
            return  # never write past a failed write: the file would have a hole
        try:
            self._file.write(data)
            if self._file.direct:
                return
            self._unflushed += len(data)
            if self._fsync and self._unflushed >= FLUSH_EVERY_BYTES:
                os.fdatasync(self._file.fd)
                self._unflushed = 0
        except BaseException as exc:
            # Whatever it is, no later write may run (a hole), nor read a buffer the caller
            # already got back because this error surfaced first.
            self._write_error = error = _translated(exc)
            if error is exc:
                raise
            raise error from exc

    def park(self) -> None:
        """Wait for queued writes and end the writer thread (the body idles); never raises."""
        while self._pending:
            # A failed write is kept in _write_error and raised by the next write() or finish().
            with contextlib.suppress(BaseException):
                self._pending.popleft().result()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.shutdown(wait=True)

    def finish(self) -> WrittenBlob:
        """Make the bytes durable and close the file."""
        assert self._file is not None
        try:
            while self._pending:
                self._pending.popleft().result()
            if self._write_error is not None:  # raised once already, to write(): again here
                raise self._write_error
            self._file.flush()
            if self._reserved > self.size:  # the reservation covered multipart framing too
                os.ftruncate(self._file.fd, self.size)
            if self._fsync:
                os.fsync(self._file.fd)
        except OSError as exc:
            error = _translated(exc)
            if error is exc:
                raise
            raise error from exc
        finally:
            self._close()
        return WrittenBlob(size=self.size, sha256=self._hash.hexdigest(), head=bytes(self._head))

    def discard(self) -> None:
        """Close and delete the ``.part`` file; safe to call more than once."""
        self._close()
        self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        if self._file is not None:
            file, self._file = self._file, None
            file.close()


def _translated(exc: BaseException) -> BaseException:
    return translate_os_error(exc) if isinstance(exc, OSError) else exc
