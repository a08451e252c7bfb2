"""Request latency seen by a light client beside the load: samples and percentiles."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import httpx


def percentile(samples_ms: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0-100); NaN when there is no sample."""
    ordered = sorted(samples_ms) or [float("nan")]
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def percentiles_text(
    samples_ms: Sequence[float],
    ps: Sequence[int] = (50, 99),
    *,
    digits: int = 1,
    with_max: bool = False,
    sep: str = "  ",
) -> str:
    """``p50 1.2 ms  p99 3.4 ms`` (and ``max``): how the scripts print a latency sample."""
    parts = [f"p{p} {percentile(samples_ms, p):.{digits}f} ms" for p in ps]
    if with_max:
        parts.append(f"max {max(samples_ms, default=float('nan')):.{digits}f} ms")
    return sep.join(parts)


def timed_get_ms(client: httpx.Client, url: str) -> float | None:
    """Milliseconds of one GET answered 200; None for any other answer or a transport error."""
    started = time.perf_counter()
    try:
        ok = client.get(url).status_code == 200
    except httpx.HTTPError:
        ok = False
    return (time.perf_counter() - started) * 1000 if ok else None


def sample_ms(url: str, count: int, *, pause_s: float = 0.0) -> list[float]:
    """``count`` GETs one after the other on one keep-alive connection; each must answer 200."""
    samples: list[float] = []
    with httpx.Client(timeout=30) as client:
        while len(samples) < count:
            took_ms = timed_get_ms(client, url)
            if took_ms is None:
                raise RuntimeError(f"GET {url} failed")
            samples.append(took_ms)
            time.sleep(pause_s)
    return samples


class LatencyProbe(threading.Thread):
    """GET one URL every ``interval_s`` on one keep-alive connection, recording latencies.

    A second, light client beside the load: a load generator's own figures include the time its
    requests wait for its own (busy) process, this one mostly the server's. Subclasses sample
    more on each tick (see ``tick``).
    """

    def __init__(self, url: str, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self._url = url
        self._interval_s = interval_s
        self._halt = threading.Event()
        self.latencies_ms: list[float] = []
        self.failures = 0

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._halt.wait(self._interval_s):
                took_ms = timed_get_ms(client, self._url)
                if took_ms is None:
                    self.failures += 1
                else:
                    self.latencies_ms.append(took_ms)
                self.tick()

    def tick(self) -> None:
        """Called after every GET, on the probe's thread."""

    def wait_running(self) -> None:
        """Block until the first GET is answered, then forget it: what follows is measured."""
        while not self.latencies_ms and self.is_alive():
            time.sleep(0.01)
        self.latencies_ms.clear()

    def stop(self) -> tuple[float, float, float]:
        """Stop and join; (p50, p95, p99) in ms."""
        self._halt.set()
        self.join()
        return tuple(percentile(self.latencies_ms, p) for p in (50, 95, 99))  # type: ignore[return-value]
