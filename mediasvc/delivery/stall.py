"""The send timeout of a zero-copy message: the client must take something every so often.

A zero-copy message may carry a whole range (no buffer is held for it), so a timeout on the
message would cut a slow client that reads steadily. Our server moves the file's position as
the kernel takes bytes (server/uvicorn_protocol.py), so this watches that position instead and
ends the send once it has not moved for ``timeout_s`` (nginx's ``send_timeout``: the time
between two successful writes). It looks every quarter of the timeout: one ``lseek`` each, on
the event loop, no task of its own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import anyio

CHECKS_PER_TIMEOUT = 4


class Stalled(Exception):
    """The file's position did not move for the timeout."""


async def send_while_moving(
    sending: Callable[[], Awaitable[None]], fd: int, timeout_s: float
) -> None:
    """Await ``sending()`` (a zero-copy send from ``fd``'s position); raise Stalled if the
    position stands still for ``timeout_s`` (between that and a quarter more: it is looked at
    every quarter). A send that moves only in the very loop turn the watch gives up is ended
    all the same: its client took nothing for the timeout."""
    loop = asyncio.get_running_loop()
    with anyio.CancelScope() as scope:
        watch = _Watch(loop, scope, fd, timeout_s)
        try:
            await sending()
        finally:
            watch.stop()
    if scope.cancelled_caught:
        raise Stalled


class _Watch:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, scope: anyio.CancelScope, fd: int, timeout_s: float
    ) -> None:
        self._loop, self._scope, self._fd, self._timeout_s = loop, scope, fd, timeout_s
        self._position = os.lseek(fd, 0, os.SEEK_CUR)
        self._moved_at = loop.time()
        self._handle = loop.call_later(timeout_s / CHECKS_PER_TIMEOUT, self._check)

    def _check(self) -> None:
        position = os.lseek(self._fd, 0, os.SEEK_CUR)
        now = self._loop.time()
        if position != self._position:
            self._position, self._moved_at = position, now
        elif now - self._moved_at >= self._timeout_s:
            self._scope.cancel()
            return
        self._handle = self._loop.call_later(self._timeout_s / CHECKS_PER_TIMEOUT, self._check)

    def stop(self) -> None:
        self._handle.cancel()
