"""The body reader alone (ingest/body.py): counting, the size limit, idle timeout, minimum rate.

Bodies here are plain async generators; no HTTP, no disk. Assertions are on counts, statuses
and messages, never on how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mediasvc.errors import PayloadTooLarge, RequestTimeout
from mediasvc.ingest.body import BodyReader


def reader(**overrides: float) -> BodyReader:
    values: dict[str, float] = {
        "idle_timeout_s": 60.0,
        "min_rate_bytes_per_s": 0,
        "window_s": 30.0,
        "release_after_s": 1.0,
    }
    values.update(overrides)
    return BodyReader(
        idle_timeout_s=values["idle_timeout_s"],
        min_rate_bytes_per_s=int(values["min_rate_bytes_per_s"]),
        window_s=values["window_s"],
        release_after_s=values["release_after_s"],
    )


async def body(
    *chunks: bytes, pause_s: float = 0.0, stall_after: int | None = None
) -> AsyncIterator[bytes]:
    for i, chunk in enumerate(chunks):
        if stall_after is not None and i == stall_after:
            await asyncio.Event().wait()  # never sends again
        if pause_s:
            await asyncio.sleep(pause_s)
        yield chunk


class Collector:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.chunks: list[bytes] = []
        self.delay_s = delay_s

    async def __call__(self, chunk: bytes) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # our own wait (a buffer, the disk)
        self.chunks.append(chunk)


async def test_every_chunk_arrives_in_order_and_is_counted() -> None:
    chunks = [bytes([i]) * (i + 1) * 100 for i in range(20)]
    into = Collector()
    total = await reader().read(body(*chunks), into)
    assert total == sum(len(c) for c in chunks)
    assert into.chunks == chunks


async def test_an_empty_body_reads_zero_bytes() -> None:
    into = Collector()
    assert await reader().read(body(), into) == 0
    assert into.chunks == []


async def test_bytes_past_the_limit_are_413_before_they_are_handed_on() -> None:
    into = Collector()
    with pytest.raises(PayloadTooLarge) as caught:
        await reader().read(body(b"a" * 600, b"b" * 400, b"c"), into, max_bytes=1000)
    assert "1000-byte limit" in caught.value.detail
    assert into.chunks == [b"a" * 600, b"b" * 400]  # exactly the limit got through


async def test_a_body_of_exactly_the_limit_is_accepted() -> None:
    assert await reader().read(body(b"a" * 999, b"b"), Collector(), max_bytes=1000) == 1000


async def test_a_body_that_stops_sending_is_408_and_asks_to_close() -> None:
    watcher = reader(idle_timeout_s=0.2)
    into = Collector()
    with pytest.raises(RequestTimeout) as caught:
        await watcher.read(body(b"x", b"y", stall_after=1), into)
    assert "sent nothing for 0.2 s" in caught.value.detail
    assert caught.value.headers == {"Connection": "close"}
    assert into.chunks == [b"x"]
    assert watcher.reading == 0  # nothing left watched


async def test_a_trickle_below_the_minimum_rate_is_408_though_never_idle() -> None:
    watcher = reader(idle_timeout_s=5.0, min_rate_bytes_per_s=10_000, window_s=0.2)
    with pytest.raises(RequestTimeout) as caught:
        await watcher.read(body(*[b"t"] * 1000, pause_s=0.02), Collector())
    assert "bytes/s" in caught.value.detail
    assert "at least 10000 bytes/s" in caught.value.detail


async def test_time_spent_handing_chunks_on_is_not_held_against_the_client() -> None:
    # Each chunk takes us far longer than the idle timeout and the rate window allow.
    watcher = reader(idle_timeout_s=0.1, min_rate_bytes_per_s=1_000_000, window_s=0.1)
    into = Collector(delay_s=0.3)
    assert await watcher.read(body(b"1", b"2", b"3"), into) == 3
    assert into.chunks == [b"1", b"2", b"3"]


async def test_a_quiet_body_is_told_so_and_a_busy_one_is_not() -> None:
    watcher = reader(release_after_s=0.1)
    quiet_calls = 0

    def on_quiet() -> None:
        nonlocal quiet_calls
        quiet_calls += 1

    await watcher.read(body(b"a", b"b", pause_s=0.4), Collector(), on_quiet=on_quiet)
    assert quiet_calls >= 1

    busy_calls = 0

    def on_busy_quiet() -> None:
        nonlocal busy_calls
        busy_calls += 1

    await watcher.read(body(*[b"c"] * 50), Collector(), on_quiet=on_busy_quiet)
    assert busy_calls == 0


async def test_one_reader_watches_many_bodies_and_ends_only_the_idle_one() -> None:
    watcher = reader(idle_timeout_s=0.3)
    fast = asyncio.create_task(watcher.read(body(*[b"f"] * 20, pause_s=0.05), Collector()))
    stuck = asyncio.create_task(watcher.read(body(b"s", b"never sent", stall_after=1), Collector()))
    assert await fast == 20
    with pytest.raises(RequestTimeout):
        await stuck
    assert watcher.reading == 0


async def test_an_error_of_the_consumer_is_raised_as_it_is() -> None:
    async def failing(chunk: bytes) -> None:
        raise ValueError("the consumer broke")

    watcher = reader()
    with pytest.raises(ValueError, match="consumer broke"):
        await watcher.read(body(b"a"), failing)
    assert watcher.reading == 0
