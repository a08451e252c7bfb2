"""One new file on its way into the media root: ``.incoming/<uid>.part`` until ``commit()``.

The local store hands these out (``LocalStore.create_part``); whoever fills one (an upload, a
remux, later a resumable upload's PATCHes) never touches paths, fsync, renames or errnos:

- ``reserve(n)``: allocate ``n`` bytes up front (real blocks, so two uploads can't both count on
  the same free space). Bytes appended beyond the reservation are checked against the headroom
  before each write, so a body of unknown length stops at the headroom instead of filling the
  disk (507).
- ``append(data)``: write ``data`` at the end, through O_DIRECT where the filesystem allows
  (storage/direct.py). The write runs in this file's writer thread, at most ``WRITES_BEHIND``
  behind the caller, so the caller (which hashes) and the disk overlap; the returned future says
  when ``data`` may be reused.
- ``checkpoint()``: every byte appended so far is durable (fsync); appends go on. A resumable
  upload records its offset only after this, and reopens its part later with ``resume_at``
  (what a crash left past the recorded offset is cut off).
- ``finish()``: the bytes are durable (flush, fsync) and the file is closed.
- ``commit()``: atomic rename into ``<root>/<uid[:2]>/<uid>``, directories fsynced. A resumable
  upload's file (``link_on_commit``) is linked there instead, and ``forget_source()`` removes its
  own name once the row is committed (storage/local.py ``link_into_place``).
- ``discard()``: whatever of it is on disk goes, before or after ``commit()``; safe to repeat.
  A resumable upload's file is its upload's, not the part's: only the link ``commit()`` made
  goes, the ``.upload`` file stays (a completion that failed in the database is completed
  again from it; the upload's own removal deletes it, resumable/expiry.py).

ENOSPC and EDQUOT, from any of these (a disk out of inodes fails at create), are 507. Methods
block: call them from a worker thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from mediasvc.errors import InsufficientStorage
from mediasvc.storage.direct import AppendOnlyFile
from mediasvc.storage.files import preallocate

if TYPE_CHECKING:
    from mediasvc.storage.local import LocalStore

# Without O_DIRECT (and with fsync on), flush this often so the disk's flush overlaps receiving.
FLUSH_EVERY_BYTES = 64 * 1024 * 1024
# Writes still running when append() returns: the caller hashes the batch while it is written.
WRITES_BEHIND = 1


class PartFile:
    def __init__(
        self,
        path: Path,
        *,
        fsync: bool,
        direct_io: bool = True,
        store: LocalStore | None = None,
        uid: str | None = None,
        written_by_tool: bool = False,
        resume_at: int | None = None,
        link_on_commit: bool = False,
    ) -> None:
        """Create ``path`` (never overwriting a file), or with ``resume_at``, reopen it to append
        at that offset (a resumable upload's next request). ``store`` and ``uid``: where it is
        committed, and whose free space it keeps (without them, a scratch file that only
        ``finish()`` and ``discard()`` apply to). ``written_by_tool``: another program (ffmpeg)
        writes it by its path; there are no appends, ``finish()`` makes what it wrote durable.
        ``link_on_commit``: ``commit()`` links rather than renames (``forget_source()``).
        """
        self.path = path
        self.uid = uid
        self.size = resume_at or 0  # the file's bytes: appended, and before, resumed from
        self._fsync = fsync
        self._store = store
        self._link_on_commit = link_on_commit
        self._reserved = 0
        self._unflushed = 0
        self._writer: ThreadPoolExecutor | None = None
        self._pending: deque[Future[None]] = deque()
        self._write_error: BaseException | None = None
        self._committed: Path | None = None
        self._file: AppendOnlyFile | None = None
        try:
            if written_by_tool:
                path.touch(mode=0o640, exist_ok=False)
            else:
                self._file = AppendOnlyFile(path, direct=direct_io, resume_at=resume_at)
        except OSError as exc:  # a disk out of inodes fails here with ENOSPC: 507, not 500
            raise translate_os_error(exc) from exc

    def reserve(self, size_bytes: int) -> None:
        """Allocate the file's first ``size_bytes`` up front beside the headroom, or refuse
        (507). Where the filesystem cannot allocate ahead, only the free space is checked.

        Allocated blocks leave the free space at once, so the next upload's check sees them, in
        other processes too (only check-and-allocate is not atomic across them)."""
        assert self._file is not None and self._store is not None
        if not size_bytes:
            return
        with self._store.reserving:  # check-then-allocate is one step for this process
            self._store.ensure_room_for(size_bytes - self.size)  # a reopened file has its bytes
            try:
                allocated = preallocate(self._file.fd, size_bytes)
            except OSError as exc:
                raise translate_os_error(exc) from exc
        if allocated:
            self._reserved = size_bytes

    def append(self, data: memoryview | bytes) -> Future[None]:
        """Queue ``data``'s write at the end; ``data`` must stay intact until the future is done.

        Returns once at most ``WRITES_BEHIND`` writes (this one included) are still running, and
        raises the error of any earlier write (after one fails, none other runs: the file would
        have a hole)."""
        if self._write_error is not None:
            raise self._write_error
        self.size += len(data)
        if self._store is not None and self.size > self._reserved:
            # Not reserved: keep the headroom. The write still in flight is not on the disk
            # yet, so the disk can end at most one batch below the headroom.
            self._store.ensure_room_for(len(data))
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mediasvc-write")
        written = self._writer.submit(self._write, data)
        self._pending.append(written)
        while len(self._pending) > WRITES_BEHIND:
            self._pending.popleft().result()
        return written

    def park(self) -> None:
        """Wait for queued writes and end the writer thread (the body idles); never raises.

        A failed write stays recorded: the next ``append()`` or ``finish()`` raises it."""
        while self._pending:
            with contextlib.suppress(BaseException):
                self._pending.popleft().result()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.shutdown(wait=True)

    def checkpoint(self) -> None:
        """Make every byte appended so far durable; appends may go on afterwards. Call from the
        thread that appends (no append may run meanwhile)."""
        assert self._file is not None
        with disk_errors():
            while self._pending:
                self._pending.popleft().result()
            if self._write_error is not None:
                raise self._write_error
            self._file.sync(fsync=self._fsync)

    def finish(self) -> int:
        """Make the bytes durable and close the file; its size."""
        try:
            with disk_errors():
                if self._file is None:  # written by a tool: what it wrote is the file
                    return self._finish_tool_output()
                while self._pending:
                    self._pending.popleft().result()
                if self._write_error is not None:  # raised once already, to append(): again
                    raise self._write_error
                self._file.flush()
                if self._reserved > self.size:  # the reservation covered multipart framing too
                    os.ftruncate(self._file.fd, self.size)
                if self._fsync:
                    os.fsync(self._file.fd)
        finally:
            self._close()
        return self.size

    def commit(self) -> Path:
        """Rename (or link) the finished file into place (atomic, durable); its final path."""
        assert self._store is not None and self.uid is not None
        if self._link_on_commit:
            self._committed = self._store.link_into_place(self.path, self.uid)
        else:
            self._committed = self._store.commit(self.path, self.uid)
        return self._committed

    def forget_source(self) -> None:
        """The row of the committed file is committed too: a file linked into place drops its
        own name (a crash before this leaves that name to the cleanup, storage/local.py)."""
        if self._link_on_commit and self._committed is not None:
            with contextlib.suppress(OSError):  # the file is committed whatever happens here
                self.path.unlink(missing_ok=True)

    def discard(self) -> None:
        """Close and delete what is on disk: the ``.part`` file, or the committed file; of a
        resumable upload's file (``link_on_commit``), only the committed link."""
        self._close()
        if not self._link_on_commit:
            self.path.unlink(missing_ok=True)
        if self._committed is not None:
            self._committed.unlink(missing_ok=True)
            self._committed = None

    def cut_back(self, size: int) -> None:
        """Close and cut the file back to ``size`` bytes (a resumable upload's last
        checkpoint): what came after it does not count."""
        self._close()
        with contextlib.suppress(FileNotFoundError):  # already gone: nothing to keep
            os.truncate(self.path, size)
        self.size = size

    def _finish_tool_output(self) -> int:
        with self.path.open("rb") as file:
            if self._fsync:
                os.fsync(file.fileno())
            self.size = os.fstat(file.fileno()).st_size
        return self.size

    def _write(self, data: memoryview | bytes) -> None:
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
            self._write_error = error = translate_os_error(exc) if isinstance(exc, OSError) else exc
            if error is exc:
                raise
            raise error from exc

    def _close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.shutdown(wait=True)
        if self._file is not None:
            file, self._file = self._file, None
            file.close()


@contextlib.contextmanager
def disk_errors() -> Iterator[None]:
    """Disk-full errors raised inside become 507; anything else passes as it is."""
    try:
        yield
    except OSError as exc:
        error = translate_os_error(exc)
        if error is exc:
            raise
        raise error from exc


def translate_os_error(exc: OSError) -> Exception:
    """Map disk-full errors to 507; anything else stays what it is."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage("the media disk is full")
    return exc
