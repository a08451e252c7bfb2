"""Hand freed heap memory back to the system (glibc ``malloc_trim``).

``mediasvc serve`` raises glibc's trim threshold so body buffers stay in the heap instead of
being faulted in again for every chunk (see cli.py). The price is that memory freed after a
burst (200 stalled downloads closing) stayed with the process. A periodic ``malloc_trim(0)``
returns free pages of every arena: one walk of the heap, far rarer than per-chunk faults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

import anyio

logger = logging.getLogger(__name__)


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_MALLOC_TRIM = _load_malloc_trim()


def trim() -> bool:
    """Return free heap pages to the system; False where glibc is not the allocator."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


async def trim_every(interval_s: float) -> None:
    if _MALLOC_TRIM is None:
        logger.info("malloc_trim is not available: freed memory stays with the allocator")
        return
    while True:
        await anyio.sleep(interval_s)
        # In a thread: a trim of a large heap takes milliseconds the event loop should not wait.
        await anyio.to_thread.run_sync(trim)
