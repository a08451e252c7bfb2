"""The zero-copy send timeout watches the file's position: a send that keeps moving it runs as
long as it needs, one that stops moving it for the timeout ends with Stalled."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from mediasvc.delivery.stall import Stalled, send_while_moving


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "file.bin"
    path.write_bytes(b"x" * 10_000)
    descriptor = os.open(path, os.O_RDONLY)
    yield descriptor
    os.close(descriptor)


async def sending(fd: int, steps: int, pause_s: float) -> None:
    """A server's send: moves the position by 100 bytes every ``pause_s``."""
    for _ in range(steps):
        await anyio.sleep(pause_s)
        os.lseek(fd, 100, os.SEEK_CUR)


async def test_a_send_that_keeps_moving_outlasts_the_timeout(fd: int) -> None:
    started = time.monotonic()
    await send_while_moving(lambda: sending(fd, steps=20, pause_s=0.05), fd, timeout_s=0.2)
    assert time.monotonic() - started >= 1.0  # five timeouts long, never stalled
    assert os.lseek(fd, 0, os.SEEK_CUR) == 2000


async def test_a_send_that_stops_moving_ends_after_the_timeout(fd: int) -> None:
    started = time.monotonic()
    with pytest.raises(Stalled):
        await send_while_moving(lambda: sending(fd, steps=1, pause_s=60), fd, timeout_s=0.2)
    waited = time.monotonic() - started
    assert 0.2 <= waited < 30  # at the timeout (a quarter more at most on a quiet machine)


async def test_a_send_that_moves_then_stalls_ends_a_timeout_after_its_last_move(fd: int) -> None:
    async def moves_then_stalls() -> None:
        await sending(fd, steps=5, pause_s=0.1)
        await anyio.sleep(60)

    started = time.monotonic()
    with pytest.raises(Stalled):
        await send_while_moving(moves_then_stalls, fd, timeout_s=0.3)
    assert time.monotonic() - started >= 0.5 + 0.3
    assert os.lseek(fd, 0, os.SEEK_CUR) == 500
