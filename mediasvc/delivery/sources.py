"""Where a response's bytes come from: one protocol, a local file and a cloud object.

A source knows its size and modification time and reads a range. It hands a chunk out as a
list of parts of at most ``part_bytes``: the response sends them one by one and drops each once
the server took it, so a client that stops reading pins at most one chunk (the parts not yet
sent), never one chunk per message queued behind it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import anyio

from mediasvc.storage.cloud import CloudStore


class ByteSource(Protocol):
    name: str  # for logs
    size: int
    mtime: datetime  # aware UTC

    async def read(
        self, position: int, size: int, *, part_bytes: int, range_end: int
    ) -> list[bytes]:
        """Up to ``size`` bytes from ``position``, as parts of at most ``part_bytes``.

        ``range_end``: where the range being sent ends (a source may fetch ahead up to it).
        ``[]`` only at the end of the source.
        """
        ...

    async def aclose(self) -> None:
        """Release what the source holds; idempotent."""
        ...

    def descriptor(self) -> int | None:
        """An open OS file the server may send from itself (zero copy); None if there is none."""
        ...


class LocalFile:
    """An open descriptor: a file deleted after ``open`` is still read whole (as nginx does)."""

    def __init__(self, fd: int, stat_result: os.stat_result, name: str) -> None:
        self._fd: int | None = fd
        self.size = stat_result.st_size
        self.mtime = datetime.fromtimestamp(stat_result.st_mtime, UTC)
        self.name = name

    @classmethod
    async def open(cls, path: Path) -> LocalFile:
        """Raises FileNotFoundError (or another OSError) before any header is sent.

        On the loop, as nginx opens files: two system calls on a cached directory entry take
        microseconds, less than a thread hop (much less on a busy machine), and every request
        pays it on its way to the first byte."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat_result = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, stat_result, str(path))

    async def read(
        self, position: int, size: int, *, part_bytes: int, range_end: int
    ) -> list[bytes]:
        fd = self._fd
        if fd is None:
            raise ValueError("read from a closed LocalFile")

        def read_parts() -> list[bytes]:
            # One thread hop per chunk; each part is its own object so it can be freed once sent.
            parts: list[bytes] = []
            offset, left = position, size
            while left > 0:
                data = os.pread(fd, min(part_bytes, left), offset)
                if not data:
                    break
                parts.append(data)
                offset += len(data)
                left -= len(data)
            return parts

        return await anyio.to_thread.run_sync(read_parts)

    async def aclose(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def descriptor(self) -> int | None:
        return self._fd


class CloudObject:
    """Ranged GETs on a cloud object; a read that does not follow the last one opens a new GET.

    Each GET runs up to the end of the range it starts in, so a Range request fetches only
    those bytes. Store chunks are re-cut into parts; at most one read's worth is held. Size and
    time come from whoever located the object (the row, or a stat), not from a request here.
    """

    def __init__(self, cloud: CloudStore, key: str, *, size: int, mtime: datetime) -> None:
        self._cloud = cloud
        self._key = key
        self.name = key
        self.size = size
        self.mtime = mtime
        self._stream: AsyncIterator[bytes] | None = None
        self._position = 0
        self._pending = b""

    async def read(
        self, position: int, size: int, *, part_bytes: int, range_end: int
    ) -> list[bytes]:
        if self._stream is None or position != self._position:
            await self._close_stream()
            self._position = position
            if position >= range_end:
                return []
            self._stream = aiter(self._cloud.open_range(self._key, position, range_end))
        parts: list[bytes] = []
        got = 0
        buffer = self._pending
        self._pending = b""
        while got < size:
            if not buffer:
                try:
                    buffer = await anext(self._stream)
                except StopAsyncIteration:
                    break
            take = min(part_bytes, size - got, len(buffer))
            parts.append(buffer[:take])
            buffer = buffer[take:]
            got += take
        self._pending = buffer
        self._position += got
        return parts

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        self._pending = b""
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()

    async def aclose(self) -> None:
        await self._close_stream()

    def descriptor(self) -> int | None:
        return None  # its bytes come over the network, through us
