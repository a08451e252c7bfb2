"""Serve a file from the cloud store when this node has no local copy.

The response is the local path's (``FileBodyResponse``) over a ``CloudObject`` source, so both
paths have the same ranges, conditionals, timeouts and accounting; a Range request becomes a
ranged GET of just those bytes.
"""

from __future__ import annotations

import os
import stat
from datetime import datetime
from typing import Any

from mediasvc.delivery.response import FileBodyResponse
from mediasvc.delivery.sources import CloudObject
from mediasvc.storage.cloud import CloudStore


def cloud_stat(size: int, last_modified: datetime) -> os.stat_result:
    """FileResponse takes size and mtime from a stat result; the object has no local inode."""
    mtime = last_modified.timestamp()
    return os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, size, mtime, mtime, mtime))


def cloud_file_response(
    *, cloud: CloudStore, key: str, size: int, last_modified: datetime, **options: Any
) -> FileBodyResponse:
    return FileBodyResponse(
        CloudObject(cloud, key), stat_result=cloud_stat(size, last_modified), **options
    )
