"""Serve a file from the cloud store when this node has no local copy.

Starlette's FileResponse already does everything a download needs (single and multiple ranges,
``If-Range``, HEAD, disconnects) through one seam: ``_open_file()`` gives an object with
``seek`` and ``read``. We hand it one backed by ranged GETs on the store, so the cloud path has
exactly the local path's semantics, and a Range request becomes a ranged GET of just those bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from starlette.types import Receive, Scope, Send

from mediasvc.delivery.ranges import LocalFileResponse
from mediasvc.storage.cloud import CloudStore


class _RangedObjectReader:
    """``seek`` + ``read`` over a cloud object; each seek opens a ranged GET up to the range's end.

    FileResponse expects ``read(n)`` to return exactly ``n`` bytes until the range is done, so
    store chunks are re-cut; at most one read's worth is held.
    """

    def __init__(self, cloud: CloudStore, key: str, size: int, ranges: Sequence[tuple[int, int]]):
        self._cloud = cloud
        self._key = key
        self._size = size
        self._ranges = ranges
        self._stream: AsyncIterator[bytes] | None = None
        self._position = 0
        self._pending = b""

    def _end_for(self, position: int) -> int:
        for start, end in self._ranges:
            if start <= position < end:
                return end
        return self._size

    async def seek(self, position: int) -> None:
        await self._close_stream()
        self._position = position

    async def read(self, size: int) -> bytes:
        if self._stream is None:
            end = self._end_for(self._position)
            if self._position >= end:
                return b""
            self._stream = aiter(self._cloud.open_range(self._key, self._position, end))
        buffer = bytearray(self._pending)
        self._pending = b""
        while len(buffer) < size:
            try:
                buffer += await anext(self._stream)
            except StopAsyncIteration:
                break
        data, self._pending = bytes(buffer[:size]), bytes(buffer[size:])
        self._position += len(data)
        return data

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        self._pending = b""
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()

    async def aclose(self) -> None:
        await self._close_stream()


class CloudFileResponse(LocalFileResponse):
    """A LocalFileResponse whose bytes come from ranged GETs on the cloud store."""

    def __init__(
        self,
        *,
        cloud: CloudStore,
        key: str,
        size: int,
        last_modified: datetime,
        **kwargs: Any,
    ) -> None:
        # FileResponse takes size and mtime from a stat result; the object has no local inode.
        mtime = last_modified.timestamp()
        fields = (stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, size, mtime, mtime, mtime)
        stat_result = os.stat_result(fields)
        super().__init__(key, stat_result=stat_result, **kwargs)
        self._cloud = cloud
        self._key = key
        self._size = size
        # The ranges FileResponse decided to send; none means the whole object.
        self._ranges: list[tuple[int, int]] = []

    def _parse_range_header(  # type: ignore[override]
        self, http_range: str, file_size: int
    ) -> list[tuple[int, int]]:
        self._ranges = super()._parse_range_header(http_range, file_size)
        return self._ranges

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Never let a server's pathsend extension be offered a path: there is no local file.
        extensions = {k: v for k, v in scope.get("extensions", {}).items() if "pathsend" not in k}
        await super().__call__({**scope, "extensions": extensions}, receive, send)

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[Any]:
        reader = _RangedObjectReader(self._cloud, self._key, self._size, self._ranges)
        try:
            yield reader
        finally:
            await reader.aclose()
