"""Batch buffers shared by every upload of a process, within a memory budget.

An upload takes a buffer when body bytes arrive and gives it back once the batch is processed,
or when its body idles (ingest/body.py): a thousand slow uploads hold next to nothing
(docs/performance.md has the figure from when each kept a full set). When
the budget is used up, an upload waits for a buffer (and so stops reading its socket) instead of
taking more memory. Buffers are page-aligned (storage/direct.py writes them with O_DIRECT as they
are). A few free ones are kept warm so that a fast upload reuses touched pages; the rest are
unmapped when given back, so the resident memory falls once a burst is over.

Loop-only: call ``take`` and ``give`` on the event loop (threads hand buffers back through
``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import mmap
from collections import deque

from mediasvc.storage.direct import aligned_buffer

# Free buffers kept mapped: two uploads' worth of the feeder's depth (ingest/feeder.py).
KEEP_FREE_BUFFERS = 6

Buffer = mmap.mmap


class BufferPool:
    def __init__(self, *, buffer_bytes: int, budget_bytes: int) -> None:
        self.buffer_bytes = buffer_bytes
        self.max_buffers = max(1, budget_bytes // buffer_bytes)
        self._free: list[Buffer] = []
        self._mapped = 0
        self._waiters: deque[asyncio.Future[Buffer]] = deque()

    @property
    def in_use(self) -> int:
        """Buffers held by uploads right now."""
        return self._mapped - len(self._free)

    async def take(self) -> Buffer:
        if self._free:
            return self._free.pop()  # LIFO: the most recently touched pages
        if self._mapped < self.max_buffers:
            self._mapped += 1
            return aligned_buffer(self.buffer_bytes)
        waiter: asyncio.Future[Buffer] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed over, then cancelled
                self.give(waiter.result())
            raise

    def give(self, buffer: Buffer) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(buffer)
                return
        if len(self._free) < KEEP_FREE_BUFFERS:
            self._free.append(buffer)
        else:
            # Dropped, not mmap.close()d: a view may still be alive somewhere (close() would
            # raise BufferError); the mapping goes with the last reference.
            self._mapped -= 1
