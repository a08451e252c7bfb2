"""Batch body chunks on the event loop and hand each batch to a worker thread.

uvicorn hands the app ~64–256 KiB per ``receive()`` and stops reading the socket while the app
is busy, so anything slow between two receives stalls the upload (FIELD-NOTES). Here the loop only
copies chunks into one of two preallocated buffers; a full buffer goes to a worker thread (hash +
write, or multipart parsing) while the loop fills the other. At most one batch is in flight, so
memory stays at two buffers whatever the body size, and reusing them avoids touching fresh pages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import anyio


class BatchingFeeder:
    def __init__(self, process: Callable[[memoryview], None], *, batch_bytes: int) -> None:
        self._process = process
        self._buffers = (bytearray(batch_bytes), bytearray(batch_bytes))
        self._current = 0
        self._fill = 0
        self._pending: asyncio.Future[None] | None = None

    async def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            buffer = self._buffers[self._current]
            n = min(len(view), len(buffer) - self._fill)
            buffer[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == len(buffer):
                await self._submit()

    async def close(self) -> None:
        """Process what is buffered and wait for the worker; raises what the worker raised."""
        if self._fill:
            await self._submit()
        await self._wait()

    async def drain(self) -> None:
        """Wait, even if cancelled, until no worker uses our buffers or files; ignore its errors."""
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await self._wait()

    async def _submit(self) -> None:
        await self._wait()  # the other buffer is free once its batch is done
        batch = memoryview(self._buffers[self._current])[: self._fill]
        loop = asyncio.get_running_loop()
        self._pending = loop.run_in_executor(None, self._process, batch)
        self._current ^= 1
        self._fill = 0

    async def _wait(self) -> None:
        if self._pending is not None:
            pending = self._pending
            # shield: cancelling us must not cancel the future while its thread still runs.
            await asyncio.shield(pending)
            self._pending = None
