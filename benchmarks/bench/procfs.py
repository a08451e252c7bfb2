"""Process probes read from /proc: RSS and its peak, threads, fds, CPU time, children."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from typing import NamedTuple

from bench.base import MB, BenchError


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    return found


def descendants_of(pid: int) -> list[int]:
    out: list[int] = []
    for child in children_of(pid):
        out += [child, *descendants_of(child)]
    return out


def status_kb(pid: int, field_name: str) -> int:
    """The number on a /proc/<pid>/status line: kB for the Vm* lines, a count for Threads."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field_name} for pid {pid}")


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux: 5 > clear_refs), so peaks are per measurement."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def total_cpu_seconds(pids: Sequence[int]) -> float:
    """cpu_seconds() summed over processes; one that has gone counts nothing."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def pids_named(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm") as fh:
                if fh.read().strip() == name:
                    found.append(int(entry))
    return found


RSS_LABEL = "peak RSS / growth / CPU"
RSS_UNIT = "MB / MB / %"


class RssProbe:
    """Peak RSS (VmHWM), its growth over the RSS just before, and CPU % of one process."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.before_kb = 0
        self.cpu0 = 0.0
        self.t0 = 0.0

    def __enter__(self) -> RssProbe:
        if self.pid:
            reset_peak(self.pid)
            self.before_kb = status_kb(self.pid, "VmRSS")
            self.cpu0 = cpu_seconds(self.pid)
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self) -> tuple[float, float, float] | None:
        if not self.pid:
            return None
        cpu = (cpu_seconds(self.pid) - self.cpu0) / (time.perf_counter() - self.t0) * 100
        peak_kb = status_kb(self.pid, "VmHWM")
        return peak_kb * 1024 / MB, (peak_kb - self.before_kb) * 1024 / MB, cpu


class ProcessFigures(NamedTuple):
    """What a scenario script watches on a server: resident memory, threads, open fds."""

    rss_bytes: int
    threads: int
    fds: int

    def peak(self, other: ProcessFigures) -> ProcessFigures:
        return ProcessFigures(*(max(a, b) for a, b in zip(self, other, strict=True)))


def figures(pid: int) -> ProcessFigures:
    return ProcessFigures(
        rss_bytes=status_kb(pid, "VmRSS") * 1024,
        threads=status_kb(pid, "Threads"),  # a count, on the same "Name: value" line
        fds=len(os.listdir(f"/proc/{pid}/fd")),
    )
