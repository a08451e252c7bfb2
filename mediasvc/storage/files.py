"""File helpers shared by the local store, the local bucket and the jobs."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from mediasvc import libc


def size_and_sha256(file: BinaryIO, chunk_bytes: int) -> tuple[int, str]:
    """Size and sha256 of an open file from its position on, read in bounded chunks."""
    digest = hashlib.sha256()
    size = 0
    while chunk := file.read(chunk_bytes):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def preallocate(fd: int, size_bytes: int) -> bool:
    """Allocate blocks for the file's first ``size_bytes`` (its size grows to that, filled with
    zeros); False where the filesystem cannot. Raises OSError (ENOSPC) when they don't fit.

    Linux's fallocate(2), not os.posix_fallocate: where the filesystem has no fallocate, glibc
    emulates it by writing a byte per block, which for a multi-GB upload is its own slow write.
    """
    fallocate = libc.fallocate()
    if fallocate is None:
        return False
    if fallocate(fd, 0, 0, size_bytes) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err))
