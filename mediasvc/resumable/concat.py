"""Joining finished partial uploads into a final upload's file, and the final SHA-256.

The bytes go from each partial's file into the final one with ``copy_file_range`` (in the
kernel, never through our memory; a filesystem that shares extents makes it a reflink).

The hash walks the parts in order with a running state, fresh at first. A partial whose hashing
started from exactly that state (its ``hash_start``; the engine starts a partial's hash where the
owner's last finished partial ended, engine.py ``_chain_start``) ends in its own ``hash_state``:
the running state jumps there and nothing is reread. Any other partial is reread from its file
into the running state. So:

- parts sent one after another, in order (each one's first byte after the previous one's last):
  no reread at all;
- parts sent at the same time (tus-js-client's ``parallelUploads``, ``mediasvc upload
  --parallel``): the first part never, each later part that did not chain once, here, while the
  final request waits (the bytes are read once anyway: the copy of a chained part costs the
  kernel's copy only).

Blocking: runs in a worker thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from mediasvc.db.models import UploadRecord
from mediasvc.errors import BadRequest
from mediasvc.resumable.hashing import ResumableSha256
from mediasvc.storage.local import LocalStore
from mediasvc.storage.part import disk_errors


@dataclass(frozen=True, slots=True)
class Assembled:
    hasher: ResumableSha256  # the whole file's hash
    reread: list[str]  # the parts whose bytes had to be hashed again (logged; tests count)


def assemble(
    store: LocalStore, uid: str, parts: Sequence[UploadRecord], chunk_bytes: int
) -> Assembled:
    """Append the parts' bytes to upload ``uid``'s (empty) file, durably."""
    hasher, reread = ResumableSha256(), []
    with disk_errors():
        out = os.open(store.upload_path_for(uid), os.O_WRONLY)
        try:
            for part in parts:
                try:
                    source = os.open(store.upload_path_for(part.uid), os.O_RDONLY)
                except FileNotFoundError as exc:  # a concurrent final or DELETE took it
                    raise BadRequest(f"partial upload {part.uid} is gone") from exc
                try:
                    if part.hash_start == hasher.state():
                        _copy(source, out, part.offset)
                        hasher = ResumableSha256(part.hash_state)
                    else:
                        _copy_hashing(source, out, part.offset, hasher, chunk_bytes)
                        reread.append(part.uid)
                finally:
                    os.close(source)
            if store.fsync:
                os.fsync(out)
        finally:
            os.close(out)
    return Assembled(hasher, reread)


def _copy(source: int, out: int, size: int) -> None:
    left = size
    while left:
        try:
            copied = os.copy_file_range(source, out, left)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            _copy_hashing(source, out, left, None, 1024 * 1024)
            return
        if copied == 0:
            raise OSError(errno.EIO, "a partial upload's file is shorter than its offset")
        left -= copied


def _copy_hashing(
    source: int, out: int, size: int, hasher: ResumableSha256 | None, chunk_bytes: int
) -> None:
    left = size
    while left:
        data = os.read(source, min(chunk_bytes, left))
        if not data:
            raise OSError(errno.EIO, "a partial upload's file is shorter than its offset")
        if hasher is not None:
            hasher.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(out, view) :]
        left -= len(data)
