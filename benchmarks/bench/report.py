"""The report: the table, results/<date>.md and .json, with the machine and versions."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.base import RESULTS, S3RVER_BIN
from bench.context import Run
from bench.stats import Row


def versions() -> dict[str, str]:
    out: dict[str, str] = {}

    def cmd(name: str, argv: list[str]) -> None:
        with contextlib.suppress(Exception):
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            out[name] = (proc.stdout or proc.stderr).strip().splitlines()[0]

    import importlib.metadata as md

    for pkg in (
        "uvicorn",
        "starlette",
        "fastapi",
        "httptools",
        "uvloop",
        "python-multipart",
        "obstore",
        "arq",
        "locust",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    out["python"] = platform.python_version()
    cmd("nginx", [shutil.which("nginx") or "/usr/sbin/nginx", "-v"])
    cmd("curl", ["curl", "--version"])
    cmd("postgresql", ["psql", "--version"])
    cmd("redis", ["redis-server", "--version"])
    cmd("node", ["node", "--version"])
    cmd("s3rver", [str(S3RVER_BIN), "--version"])
    return out


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "host": socket.gethostname(),
    }


def table(rows: list[Row]) -> str:
    lines = [
        "| section | figure | median | min | max | unit | target | verdict |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    last = None
    for row in rows:
        stats = row.stats()
        if stats is None:
            continue
        med, lo, hi = stats
        section = row.section if row.section != last else ""
        last = row.section
        lines.append(
            f"| {section} | {row.label} | {row.fmt(med)} | {row.fmt(lo)} | {row.fmt(hi)} | "
            f"{row.unit} | {row.target} | {row.verdict()} |"
        )
    return "\n".join(lines)


def write_results(r: Run, elapsed_s: float) -> tuple[Path, Path]:
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    name = f"{stamp}-quick" if r.cfg.quick else stamp
    md_path, json_path = RESULTS / f"{name}.md", RESULTS / f"{name}.json"
    verdicts = [row.verdict() for row in r.rows if row.check]
    summary = f"{verdicts.count('PASS')} of {len(verdicts)} targets hold"
    m = r.meta["machine"]
    lines = [
        f"# mediasvc benchmark, {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}"
        + (" (quick)" if r.cfg.quick else ""),
        "",
        f"`{'make bench-quick' if r.cfg.quick else 'make bench'}` on {m['cpu']}, "
        f"{m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}; loopback; "
        f"{r.cfg.rounds} round(s), contenders "
        f"interleaved (order reversed every other round); ratios taken within a round, then the "
        f"median. MB = 10^6 bytes. Run time {elapsed_s / 60:.1f} min. {summary}.",
        "",
        "Python servers (mediasvc, the count-only app, FastAPI, Starlette) run under the same "
        "uvicorn (httptools, uvloop) with the GLIBC_TUNABLES `mediasvc serve` sets. mediasvc: "
        "one process, SQLite, fsync on, pushes queued in Redis with no worker reading them during "
        "the upload figures. Memory targets are judged on the worst round, the rest on the median. "
        "Load average (1/5/15 min) at the start {} and the end {}: anything above ~0.5 is "
        "someone else's work sharing the 2 cores.".format(
            "/".join(f"{x:.1f}" for x in r.meta["loadavg_start"]),
            "/".join(f"{x:.1f}" for x in r.meta.get("loadavg_end", (0, 0, 0))),
        ),
        "",
        table(r.rows),
        "",
    ]
    if r.errors:
        lines += ["## Errors", "", *[f"- {e}" for e in r.errors], ""]
    lines += [
        "## Versions",
        "",
        *[f"- {k}: {v}" for k, v in r.meta.get("versions", {}).items()],
        "",
    ]
    md_path.write_text("\n".join(lines))
    payload = {
        "config": {k: v for k, v in vars(r.cfg).items()},
        "meta": r.meta,
        "elapsed_s": elapsed_s,
        "summary": summary,
        "errors": r.errors,
        "rows": [
            {
                "section": row.section,
                "figure": row.label,
                "unit": row.unit,
                "median": row.stats()[0] if row.stats() else None,
                "min": row.stats()[1] if row.stats() else None,
                "max": row.stats()[2] if row.stats() else None,
                "rounds": row.values,
                "target": row.target,
                "verdict": row.verdict(),
            }
            for row in r.rows
        ],
        "samples": {k: {str(rnd): v for rnd, v in d.items()} for k, d in r.samples.values.items()},
    }
    json_path.write_text(json.dumps(payload, indent=1, default=str))
    return md_path, json_path
