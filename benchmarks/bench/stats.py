"""Statistics of the rounds: samples per round, rows with median/min/max, interleaving."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


class Samples:
    """values[key][round] = a number (or a tuple of numbers)."""

    def __init__(self) -> None:
        self.values: dict[str, dict[int, Any]] = defaultdict(dict)

    def put(self, key: str, rnd: int, value: Any) -> None:
        self.values[key][rnd] = value

    def get(self, key: str) -> dict[int, Any]:
        return self.values.get(key, {})


@dataclass
class Row:
    section: str
    label: str
    unit: str
    values: list[Any]
    target: str = ""
    check: Callable[[float], bool] | None = None
    worst: str = ""  # "max" / "min": judge on the worst round instead of the median
    digits: int = 0
    note: str = ""

    def stats(self) -> tuple[Any, Any, Any] | None:
        if not self.values:
            return None
        if isinstance(self.values[0], tuple | list):
            cols = list(zip(*self.values, strict=True))
            return (
                tuple(statistics.median(c) for c in cols),
                tuple(min(c) for c in cols),
                tuple(max(c) for c in cols),
            )
        return statistics.median(self.values), min(self.values), max(self.values)

    def verdict(self) -> str:
        if self.check is None:
            return ""
        stats = self.stats()
        if stats is None:
            return "n/a"
        med, lo, hi = stats
        judged = {"max": hi, "min": lo}.get(self.worst, med)
        return "PASS" if self.check(judged) else "FAIL"

    def fmt(self, value: Any) -> str:
        if isinstance(value, tuple | list):
            return " / ".join(self.fmt(v) for v in value)
        if self.digits == 0:
            return f"{value:,.0f}"
        return f"{value:,.{self.digits}f}"


def round_order(items: list[Any], rnd: int) -> list[Any]:
    """Interleave: every contender once per round, the order reversed every other round."""
    return list(items) if rnd % 2 == 0 else list(reversed(items))


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median of the per-round ratios: throughput drifts over minutes, a round does not."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))
