"""Sizes and a progress line for the command line, in the units the web page uses.

One unit system everywhere: binary multiples named as such (KiB, MiB, GiB), as in the settings
and the page (web/static/app.js ``formatBytes``). tqdm could not be used for this: it scales
rates by 1000 whatever its divisor, and names 1024-multiples with SI prefixes.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
REDRAW_EVERY_S = 0.2


def format_bytes(n: float) -> str:
    """``1073741824`` → ``1.00 GiB``: two decimals below 10, one above (as the page)."""
    value, unit = float(n), 0
    while value >= 1024 and unit < len(UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{int(n)} B"
    return f"{value:.{2 if value < 10 else 1}f} {UNITS[unit]}"


def format_duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """``name  512.0 MiB of 1.00 GiB · 50 % · 98.3 MiB/s · 0:05 left`` redrawn in place on a
    terminal; silent when ``enabled`` is false (not a terminal, or a library caller)."""

    def __init__(
        self, name: str, total_bytes: int, *, done_bytes: int = 0, stream: TextIO | None = None
    ) -> None:
        self.name = name
        self.total_bytes = total_bytes
        self.done_bytes = done_bytes
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._started = time.monotonic()
        self._start_bytes = done_bytes
        self._drawn = 0.0

    def update(self, n_bytes: int) -> None:
        self.show(self.done_bytes + n_bytes)

    def show(self, done_bytes: int) -> None:
        """Set the count (a resumed upload may step back to the offset the server has)."""
        self.done_bytes = done_bytes
        now = time.monotonic()
        if self.enabled and now - self._drawn >= REDRAW_EVERY_S:
            self._drawn = now
            self.stream.write(f"\r{self.line(now)}\x1b[K")
            self.stream.flush()

    def line(self, now: float) -> str:
        parts = [f"{format_bytes(self.done_bytes)} of {format_bytes(self.total_bytes)}"]
        if self.total_bytes:
            parts.append(f"{100 * self.done_bytes // self.total_bytes} %")
        elapsed_s = now - self._started
        if elapsed_s > 0.5:
            rate = (self.done_bytes - self._start_bytes) / elapsed_s
            parts.append(f"{format_bytes(rate)}/s")
            if rate > 0 and self.done_bytes < self.total_bytes:
                left_s = (self.total_bytes - self.done_bytes) / rate
                parts.append(f"{format_duration(left_s)} left")
        return f"{self.name}  " + " · ".join(parts)

    def close(self) -> None:
        if self.enabled:
            self.stream.write(f"\r{self.line(time.monotonic())}\x1b[K\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
