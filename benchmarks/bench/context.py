"""The state of one run, shared by the sections: config, children, samples, rows."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.children import Child, Children
from bench.config import Config
from bench.stats import Row, Samples


@dataclass
class Run:
    cfg: Config
    tmp: Path
    children: Children
    samples: Samples = field(default_factory=Samples)
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, Child] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    env_single: dict[str, str] = field(default_factory=dict)
    redis_dbs: list[int] = field(default_factory=list)
    uids: dict[str, str] = field(default_factory=dict)

    def metric(
        self, section: str, label: str, key: str, unit: str, *, digits: int = 0, **kw: Any
    ) -> None:
        values = [v for _, v in sorted(self.samples.get(key).items())]
        if values:
            self.rows.append(Row(section, label, unit, values, digits=digits, **kw))

    def derived(
        self,
        section: str,
        label: str,
        fn: Callable[[int], Any],
        unit: str = "×",
        *,
        digits: int = 2,
        **kw: Any,
    ) -> None:
        values = []
        for rnd in range(self.cfg.rounds):
            with contextlib.suppress(KeyError, ZeroDivisionError, TypeError, ValueError):
                values.append(fn(rnd))
        if values:
            self.rows.append(Row(section, label, unit, values, digits=digits, **kw))

    def v(self, key: str, rnd: int) -> Any:
        return self.samples.values[key][rnd]
