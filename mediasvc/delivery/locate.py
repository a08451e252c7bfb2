"""The one rule for where a file's (or a preview's) bytes are read from.

This node's disk when the bytes are there, else the cloud copy. The disk is asked, not the row:
bytes under a UID never change, so whatever is at the path is right, and a row's ``local`` may be
stale either way (evicted since it was read, or written by another node). The file is opened
here, before any header is sent: once open it is sent whole even if it is deleted meanwhile.
Only when the disk has nothing is the caller asked where the cloud copy is; it raises the
status that fits (404, 410, 503) when there is none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mediasvc.delivery.sources import ByteSource, CloudObject, LocalFile
from mediasvc.storage.cloud import CloudStore


@dataclass(frozen=True)
class CloudCopy:
    key: str
    size: int
    mtime: datetime


async def open_source(
    path: Path, cloud: CloudStore, find_cloud_copy: Callable[[], Awaitable[CloudCopy]]
) -> ByteSource:
    try:
        return await LocalFile.open(path)
    except FileNotFoundError:
        pass  # deleted, evicted, or another node's upload
    copy = await find_cloud_copy()
    return CloudObject(cloud, copy.key, size=copy.size, mtime=copy.mtime)
