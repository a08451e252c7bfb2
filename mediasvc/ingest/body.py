"""Reading one request body: counting, the size limit, the idle timeout and the minimum rate.

``BodyReader.read`` takes any async iterator of byte chunks (``request.stream()``, a resumable
upload's PATCH body, a URL import's response) and hands each chunk to the caller's ``into``. One
reader serves the whole process: per chunk it only notes when it was ready for more and how much
it had, and a single task looks at all bodies every ``tick_s`` (a timer per chunk cost a
measurable share of the event loop). A body that breaks a rule is ended by expiring its
``asyncio.timeout``:

- idle: nothing for ``idle_timeout_s`` (408);
- slow: less than ``min_rate_bytes_per_s`` on average over a window of ``window_s`` (408). The
  idle timeout alone is reset by any byte, so a byte every 40 s would hold an upload forever;
  the rate is taken per window, not since the start (Apache's ``MinRate`` is), so a fast start
  buys no hours of trickling. The first window is the grace period;
- quiet for ``release_after_s``: ``on_quiet`` runs (the feeder gives its partly filled buffer
  back to the pool), once per quiet spell and again every tick while it lasts.

Time ``into`` spends (waiting for a buffer, the disk) is not held against the client. Bytes past
``max_bytes`` are refused (413) before ``into`` sees them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator
from contextlib import contextmanager

from mediasvc.errors import PayloadTooLarge, RequestTimeout

RELEASE_AFTER_S = 1.0
MAX_TICK_S = 0.5


class _Watch:
    """What the reader knows of one body between two ticks."""

    __slots__ = (
        "busy",
        "deadline",
        "last_s",
        "on_quiet",
        "received",
        "verdict",
        "window_received",
        "window_start_s",
    )

    def __init__(
        self, deadline: asyncio.Timeout, on_quiet: Callable[[], None] | None, now_s: float
    ) -> None:
        self.deadline = deadline
        self.on_quiet = on_quiet
        self.last_s = now_s  # when we were last ready for more
        self.received = 0
        self.window_start_s = now_s
        self.window_received = 0
        self.busy = False  # inside into(): waiting for us, not for the client
        self.verdict: str | None = None

    def fed(self, n_bytes: int, arrived_s: float, now_s: float) -> None:
        self.received += n_bytes
        self.window_start_s += now_s - arrived_s  # our own wait does not count
        self.last_s = now_s
        self.busy = False


class BodyReader:
    def __init__(
        self,
        *,
        idle_timeout_s: float,
        min_rate_bytes_per_s: int,
        window_s: float,
        release_after_s: float = RELEASE_AFTER_S,
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.min_rate_bytes_per_s = min_rate_bytes_per_s  # 0: off
        self.window_s = window_s
        self.release_after_s = release_after_s
        self.tick_s = min(MAX_TICK_S, idle_timeout_s / 4, window_s / 4, release_after_s / 2)
        self._watches: set[_Watch] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def reading(self) -> int:
        """Bodies being read right now."""
        return len(self._watches)

    async def read(
        self,
        chunks: AsyncIterable[bytes],
        into: Callable[[bytes], Awaitable[None]],
        *,
        max_bytes: int = 0,
        on_quiet: Callable[[], None] | None = None,
    ) -> int:
        """Hand every chunk to ``into``, in order; the number of bytes read.

        408 (``RequestTimeout``, with ``Connection: close``) for an idle or too slow body, 413
        (``PayloadTooLarge``) past ``max_bytes`` (0: no limit).
        """
        loop = asyncio.get_running_loop()
        watch: _Watch | None = None
        try:
            async with asyncio.timeout(None) as deadline:
                with self._watching(deadline, on_quiet) as watch:
                    async for chunk in chunks:
                        arrived = loop.time()
                        watch.busy = True
                        if max_bytes and watch.received + len(chunk) > max_bytes:
                            raise PayloadTooLarge(
                                f"the body is larger than the {max_bytes}-byte limit"
                            )
                        await into(chunk)
                        watch.fed(len(chunk), arrived, loop.time())
        except TimeoutError as exc:
            # RFC 9110 §15.5.9: a 408 SHOULD close the connection; an open one would be left
            # with no timer once the client sent more body bytes (which the server discards).
            verdict = watch.verdict if watch is not None else None
            raise RequestTimeout(
                verdict or "the body was too slow", headers={"Connection": "close"}
            ) from exc
        assert watch is not None
        return watch.received

    @contextmanager
    def _watching(
        self, deadline: asyncio.Timeout, on_quiet: Callable[[], None] | None
    ) -> Iterator[_Watch]:
        loop = asyncio.get_running_loop()
        watch = _Watch(deadline, on_quiet, loop.time())
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

    def _check(self, watch: _Watch, now: float) -> None:
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
        if idle_s >= self.release_after_s and watch.on_quiet is not None:
            watch.on_quiet()

    def _end(self, watch: _Watch, verdict: str) -> None:
        self._watches.discard(watch)
        watch.verdict = verdict
        watch.deadline.reschedule(asyncio.get_running_loop().time())
