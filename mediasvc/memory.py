"""Hand freed heap memory back to the system (glibc ``malloc_trim``).

``mediasvc serve`` raises glibc's trim threshold so body buffers stay in the heap instead of
being faulted in again for every chunk (see cli.py). The price is that memory freed after a
burst (200 stalled downloads closing) stayed with the process. A periodic ``malloc_trim(0)``
returns free pages of every arena: one walk of the heap, far rarer than per-chunk faults.
"""

from __future__ import annotations

import logging

import anyio

from mediasvc import libc

logger = logging.getLogger(__name__)


def trim() -> bool:
    """Return free heap pages to the system; False where glibc is not the allocator."""
    malloc_trim = libc.malloc_trim()
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


async def trim_every(interval_s: float) -> None:
    if libc.malloc_trim() is None:
        logger.info("malloc_trim is not available: freed memory stays with the allocator")
        return
    while True:
        await anyio.sleep(interval_s)
        # In a thread: a trim of a large heap takes milliseconds the event loop should not wait.
        await anyio.to_thread.run_sync(trim)
