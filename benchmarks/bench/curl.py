"""curl as the load generator: one transfer, or many in parallel, with its %{json} figures."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.base import BenchError


def curl_argv(args: Sequence[str], body_out: str) -> list[str]:
    return ["curl", "-sS", "-o", body_out, "-w", "%{json}\\n", *args]


def parse_curl(proc_out: str, argv: Sequence[str]) -> list[dict[str, Any]]:
    infos = [json.loads(line) for line in proc_out.splitlines() if line.startswith("{")]
    if not infos:
        raise BenchError(f"curl printed nothing: {' '.join(argv)}")
    for info in infos:
        if not 200 <= int(info.get("http_code", 0)) < 300:
            raise BenchError(f"HTTP {info.get('http_code')} from {info.get('url_effective')}")
    return infos


def curl(
    args: Sequence[str], *, body_out: str = "/dev/null", timeout: float = 900
) -> dict[str, Any]:
    argv = curl_argv(args, body_out)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        body = ""
        if body_out != "/dev/null":
            with contextlib.suppress(OSError):
                body = Path(body_out).read_text(errors="replace")[:500]
        raise BenchError(f"curl failed ({proc.returncode}): {proc.stderr.strip()} {body}")
    info = parse_curl(proc.stdout, argv)[0]
    if body_out != "/dev/null" and not 200 <= int(info["http_code"]) < 300:
        raise BenchError(Path(body_out).read_text(errors="replace")[:500])
    return info


def parallel_curls(
    argvs: list[list[str]], timeout: float = 1800
) -> tuple[float, list[dict[str, Any]]]:
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]
    infos: list[dict[str, Any]] = []
    failures = []
    for argv, proc in zip(argvs, procs, strict=True):
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            failures.append(f"curl {proc.returncode}: {err.strip()}")
            continue
        infos += parse_curl(out, argv)
    elapsed = time.perf_counter() - t0
    if failures:
        raise BenchError("; ".join(failures[:3]))
    return elapsed, infos
