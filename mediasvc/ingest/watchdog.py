"""One timer per process over every upload body being received: idle timeout, minimum rate,
and buffers given back when a body idles.

A per-chunk timer cost a measured share of the event loop, so the pump only notes, per chunk,
when it was ready for more and how much it had; a single task looks at all bodies every
``tick_s`` and ends the ones that break a rule by expiring their ``asyncio.timeout``:

- idle: nothing for ``idle_timeout_s`` (408);
- slow: less than ``min_rate_bytes_per_s`` on average over a window of ``window_s`` (408). The
  idle timeout alone is reset by any byte, so one byte every 40 s held an upload forever
  (issue 11); the rate is taken per window, not since the start (Apache's ``MinRate`` is), so
  a fast start buys no hours of trickling. The first window is the grace period;
- quiet for ``release_after_s``: the body's partly filled buffer goes back to the pool
  (``BatchingFeeder.release``).

Time the pump spends waiting for us (a buffer, the disk) is not held against the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from mediasvc.ingest.feeder import BatchingFeeder

RELEASE_AFTER_S = 1.0
MAX_TICK_S = 0.5


class BodyWatch:
    """What the watchdog knows of one body; the pump updates it around each chunk."""

    __slots__ = (
        "busy",
        "deadline",
        "feeder",
        "last_s",
        "received",
        "verdict",
        "window_received",
        "window_start_s",
    )

    def __init__(self, deadline: asyncio.Timeout, feeder: BatchingFeeder, now_s: float) -> None:
        self.deadline = deadline
        self.feeder = feeder
        self.last_s = now_s  # when we were last ready for more
        self.received = 0
        self.window_start_s = now_s
        self.window_received = 0
        self.busy = False  # inside feed(): waiting for us, not for the client
        self.verdict: str | None = None

    def fed(self, n_bytes: int, arrived_s: float, now_s: float) -> None:
        self.received += n_bytes
        self.window_start_s += now_s - arrived_s  # our own wait does not count
        self.last_s = now_s
        self.busy = False


class BodyWatchdog:
    def __init__(
        self,
        *,
        idle_timeout_s: float,
        min_rate_bytes_per_s: int,
        window_s: float,
        release_after_s: float = RELEASE_AFTER_S,
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.min_rate_bytes_per_s = min_rate_bytes_per_s
        self.window_s = window_s
        self.release_after_s = release_after_s
        self.tick_s = min(MAX_TICK_S, idle_timeout_s / 4, window_s / 4, release_after_s / 2)
        self._watches: set[BodyWatch] = set()
        self._task: asyncio.Task[None] | None = None

    @contextmanager
    def watch(self, deadline: asyncio.Timeout, feeder: BatchingFeeder) -> Iterator[BodyWatch]:
        """Watch one body while the block runs (inside ``deadline``'s ``asyncio.timeout``)."""
        loop = asyncio.get_running_loop()
        watch = BodyWatch(deadline, feeder, loop.time())
        self._watches.add(watch)
        if self._task is None:
            self._task = loop.create_task(self._run(), name="mediasvc-body-watchdog")
        try:
            yield watch
        finally:
            self._watches.discard(watch)
            if not self._watches and self._task is not None:
                self._task.cancel()  # nothing to watch: no timer while the server idles
                self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            for watch in list(self._watches):
                if not watch.busy:
                    self._check(watch, now)

    def _check(self, watch: BodyWatch, now: float) -> None:
        idle_s = now - watch.last_s
        if idle_s >= self.idle_timeout_s:
            self._end(watch, f"the body sent nothing for {self.idle_timeout_s:g} s")
            return
        window_s = now - watch.window_start_s
        if self.min_rate_bytes_per_s and window_s >= self.window_s:
            rate = (watch.received - watch.window_received) / window_s
            if rate < self.min_rate_bytes_per_s:
                self._end(
                    watch,
                    f"the body arrived at {rate:.0f} bytes/s over {window_s:.0f} s; "
                    f"at least {self.min_rate_bytes_per_s} bytes/s are needed",
                )
                return
            watch.window_start_s, watch.window_received = now, watch.received
        if idle_s >= self.release_after_s:
            watch.feeder.release()

    def _end(self, watch: BodyWatch, verdict: str) -> None:
        self._watches.discard(watch)
        watch.verdict = verdict
        watch.deadline.reschedule(asyncio.get_running_loop().time())
