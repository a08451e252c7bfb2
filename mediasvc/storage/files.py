"""File helpers shared by the local store, the local bucket and the jobs (no imports of ours)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO


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
