"""Letting an operation clean up after itself when its caller is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


async def finish_or_wind_down(
    operation: asyncio.Future[T], wind_down: Callable[[], None], *, grace_s: float
) -> T:
    """Await ``operation``; if we are cancelled, call ``wind_down`` and let it fail cleanly.

    A multipart upload cancelled from outside would be dropped mid-flight and leave its parts in
    the bucket. Instead the operation is shielded, ``wind_down`` makes it fail (so the client
    aborts the upload), and we wait up to ``grace_s`` for that before passing the cancellation on.
    """
    try:
        return await asyncio.shield(operation)
    except asyncio.CancelledError:
        wind_down()
        operation.add_done_callback(_consume)
        with anyio.CancelScope(shield=True):
            await asyncio.wait({operation}, timeout=grace_s)
        raise


def _consume(operation: asyncio.Future[Any]) -> None:
    # The caller is gone; retrieve the outcome so asyncio does not log it as never retrieved.
    if not operation.cancelled():
        operation.exception()
