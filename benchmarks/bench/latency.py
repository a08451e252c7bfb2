"""Request latency seen by a light client beside the load: samples and percentiles."""

from __future__ import annotations

import threading
import time

import httpx


class LatencyProbe(threading.Thread):
    """GET one URL every ``interval_s`` on one keep-alive connection, recording latencies.

    A second, light client beside locust: locust's own figures include the time its greenlets
    wait for its (busy, single-threaded) process, this one mostly the server's.
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
                t0 = time.perf_counter()
                try:
                    ok = client.get(self._url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    self.failures += 1

    def stop(self) -> tuple[float, float, float]:
        self._halt.set()
        self.join()
        ordered = sorted(self.latencies_ms) or [float("nan")]

        def q(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

        return q(0.5), q(0.95), q(0.99)
