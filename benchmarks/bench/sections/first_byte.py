"""Section first_byte: the time to the first byte of a Range (issue 18: < 1 ms median on SQLite
and PostgreSQL for a file without a download budget; a budgeted file pays one UPDATE).

Interleaved in each round, on one keep-alive connection per contender from a raw socket
(bench/ttfb.py: request sent → first response byte), Ranges of 64 KiB and 1 MiB at random
offsets of the same 512 MiB file: nginx serving it from disk (the baseline), mediasvc on SQLite
(the run's node) and on PostgreSQL (a node of this section's own), each with the file
unbudgeted and budgeted (``max_downloads``: a reservation, one UPDATE, per GET)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.base import BenchError, KiB, MiB, log
from bench.children import Child, free_port, run, wait_http
from bench.context import Run
from bench.curl import curl
from bench.services import psql
from bench.stats import round_order
from bench.ttfb import range_ttfb_ms

REQUESTS_PER_ROUND = 400  # per contender and Range size
WARM_UP_REQUESTS = 100
RANGES = ((64 * KiB, "64 KiB"), (MiB, "1 MiB"))
BUDGET_DOWNLOADS = 1_000_000  # never used up here: each GET reserves and settles its bytes
TARGET_MS = 1.0


def section_first_byte(r: Run) -> None:
    path = r.files["small"]
    size = path.stat().st_size
    served = r.tmp / "www" / "first-byte.bin"
    if not served.exists():
        os.link(path, served)
    with postgres_node(r) as pg_node:
        nginx_url = f"{r.servers['nginx'].base}/files/{served.name}"
        contenders = [("nginx", "nginx (sendfile)", nginx_url)]
        for db, node in (("sqlite", r.servers["mediasvc"]), ("pg", pg_node)):
            name = "SQLite" if db == "sqlite" else "PostgreSQL"
            for budget in (False, True):
                uid = upload(node, path, budget=budget, jobs_in_process=db == "pg")
                key, label = (f"{db}-budget", f"mediasvc, {name}, budgeted") if budget else (
                    db, f"mediasvc, {name}")  # fmt: skip
                contenders.append((key, label, f"{node.base}/api/v1/files/{uid}"))
        for _, _, url in contenders:  # the page cache, the connections, the statement caches
            range_ttfb_ms(url, size, count=WARM_UP_REQUESTS, range_bytes=64 * KiB)
        for rnd in range(r.cfg.rounds):
            for range_bytes, range_label in RANGES:
                for key, label, url in round_order(contenders, rnd):
                    samples = range_ttfb_ms(
                        url, size, count=REQUESTS_PER_ROUND, range_bytes=range_bytes, seed=rnd
                    )
                    median = statistics.median(samples)
                    r.samples.put(f"fb.{range_label}.{key}", rnd, median)
                    log(f"first byte, {range_label} Range r{rnd + 1} {label}: {median:.3f} ms")
    report(r, contenders)


def report(r: Run, contenders: list[tuple[str, str, str]]) -> None:
    for _, range_label in RANGES:
        section = (
            f"first byte of a {range_label} Range at a random offset of 512 MiB "
            f"(median of {REQUESTS_PER_ROUND} per round, one keep-alive connection)"
        )
        for key, label, _ in contenders:
            target = {} if "budget" in key or key == "nginx" else {
                "target": f"< {TARGET_MS:g} ms", "check": lambda x: x < TARGET_MS}  # fmt: skip
            r.metric(section, label, f"fb.{range_label}.{key}", "ms", digits=3, **target)
        for db in ("sqlite", "pg"):
            r.derived(
                section,
                f"{'SQLite' if db == 'sqlite' else 'PostgreSQL'}: mediasvc − nginx",
                lambda rnd, db=db, rl=range_label: (
                    r.v(f"fb.{rl}.{db}", rnd) - r.v(f"fb.{rl}.nginx", rnd)
                ),
                "ms",
                digits=3,
            )


@contextlib.contextmanager
def postgres_node(r: Run) -> Iterator[Child]:
    """The run's mediasvc once more, on a PostgreSQL database of its own (jobs in-process: the
    probe and the push, to a local bucket, of the one upload are over before measuring)."""
    home = r.tmp / "first-byte-pg"
    home.mkdir(exist_ok=True)
    db_name = f"mediasvc_bench_fb_{secrets.token_hex(4)}"
    psql(f"CREATE DATABASE {db_name}")
    env = {
        **{k: v for k, v in r.env_single.items() if not k.startswith("MEDIASVC_")},
        "MEDIASVC_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db_name}",
        "MEDIASVC_MEDIA_ROOT": str(home / "media"),
        "MEDIASVC_CLOUD_ROOT": str(home / "bucket"),
    }
    node = None
    try:
        run([sys.executable, "-m", "mediasvc", "migrate"], env=env, cwd=home)
        port = free_port()
        argv = [sys.executable, "-m", "mediasvc", "serve", "--port", str(port)]
        node = r.children.start("first-byte-pg", [*argv, "--log-level", "warning"], env=env,
                                cwd=home, port=port)  # fmt: skip
        wait_http(node, "/readyz", ok=300)
        yield node
    finally:
        if node is not None:
            r.children.stop(node)
        with contextlib.suppress(Exception):
            psql(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")


def upload(node: Child, path: Path, *, budget: bool, jobs_in_process: bool) -> str:
    """Upload ``path`` to ``node``: its uid, once the node's own jobs for it are done when it
    runs them itself (the run's node queues them in Redis for no worker)."""
    query = f"?max_downloads={BUDGET_DOWNLOADS}" if budget else ""
    body = path.with_name(f"first-byte-{secrets.token_hex(4)}.json")
    curl(["-X", "POST", "-T", str(path), "-H", "X-Filename: first-byte.bin",
          f"{node.base}/api/v1/files/stream{query}"], body_out=str(body))  # fmt: skip
    uid = str(json.loads(body.read_text())["uid"])
    body.unlink()
    deadline = time.monotonic() + 120
    while jobs_in_process:
        meta = httpx.get(f"{node.base}/api/v1/files/{uid}/metadata", timeout=10).json()
        if meta["probe_status"] != "pending" and meta["cloud_status"] in ("uploaded", "failed"):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"the jobs for {uid} on {node.name} did not finish: {meta}")
        time.sleep(0.2)
    return uid
