"""The first byte of a Range, and the server's CPU time per request, of source trees side by
side: to measure a change on the delivery path against the code before it (`make bench`'s
section first_byte gives the figure of one tree against nginx).

Each tree runs as its own `mediasvc serve` on each database (SQLite, PostgreSQL: a database of
its own, dropped at the end) with one file uploaded to it; then, interleaved in each round, one
keep-alive connection per server sends Ranges at random offsets one after another from a raw
socket (bench/ttfb.py: request sent → first response byte). Per server and round: the median
TTFB and the server process's CPU time (utime + stime, all threads) per request, which drifts
far less with the machine's load than the TTFB does.

    git archive HEAD~1 mediasvc alembic alembic.ini | tar -x -C /tmp/before
    .venv/bin/python benchmarks/range_first_byte.py --tree before=/tmp/before --tree after=.
        [--dbs sqlite,pg] [--count 1000] [--rounds 4] [--range-kib 64] [--budget]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
from bench.base import MiB
from bench.children import Child, free_port
from bench.procfs import cpu_seconds
from bench.services import psql
from bench.standalone import serve_env, serve_mediasvc
from bench.stats import round_order
from bench.ttfb import range_ttfb_ms

FILE_BYTES = 8 * MiB
WARM_UP_REQUESTS = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=DIR",
                        help="a source tree (mediasvc, alembic, alembic.ini) to run")  # fmt: skip
    parser.add_argument("--dbs", default="sqlite,pg", help="sqlite, pg or both")
    parser.add_argument("--count", type=int, default=1000, help="Ranges per server and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--range-kib", type=int, default=64)
    parser.add_argument("--budget", action="store_true", help="files with a download budget")
    parser.add_argument("--log-level", default="warning", help="the servers' (info: access log)")
    args = parser.parse_args()
    trees = dict(spec.split("=", 1) for spec in args.tree)
    range_bytes = args.range_kib * 1024
    with (
        tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp,
        contextlib.ExitStack() as stack,
    ):
        servers: list[tuple[str, Child, str]] = []
        for tree_name, tree in trees.items():
            for db in args.dbs.split(","):
                name = f"{tree_name}/{db}"
                home = Path(tmp) / name.replace("/", "-")
                home.mkdir()
                settings = {
                    "MEDIASVC_DATABASE_URL": stack.enter_context(database(db, home)),
                    "MEDIASVC_MEDIA_ROOT": str(home / "media"),
                }
                env = serve_env(settings, pythonpath=tree)
                serving = serve_mediasvc(
                    home, port=free_port(), env=env, args=("--log-level", args.log_level)
                )
                server = stack.enter_context(serving)
                servers.append((name, server, upload(server, budget=args.budget)))
        for _, _, url in servers:
            range_ttfb_ms(url, FILE_BYTES, count=WARM_UP_REQUESTS, range_bytes=range_bytes)
        ttfb: dict[str, list[float]] = {name: [] for name, _, _ in servers}
        cpu: dict[str, list[float]] = {name: [] for name, _, _ in servers}
        for rnd in range(args.rounds):
            for name, server, url in round_order(servers, rnd):
                before = cpu_seconds(server.pid)
                samples = range_ttfb_ms(
                    url, FILE_BYTES, count=args.count, range_bytes=range_bytes, seed=rnd
                )
                cpu[name].append((cpu_seconds(server.pid) - before) / args.count * 1000)
                ttfb[name].append(statistics.median(samples))
                print(f"r{rnd + 1} {name:16} TTFB median {ttfb[name][-1]:.3f} ms, "
                      f"CPU {cpu[name][-1]:.3f} ms per request", flush=True)  # fmt: skip
        print(f"{args.range_kib} KiB Ranges, median of {args.rounds} rounds of {args.count}:")
        for name in ttfb:
            print(f"  {name:16} TTFB {statistics.median(ttfb[name]):.3f} ms, "
                  f"CPU {statistics.median(cpu[name]):.3f} ms per request")  # fmt: skip


@contextlib.contextmanager
def database(kind: str, home: Path) -> Iterator[str]:
    """The URL of an empty database of ``kind`` (sqlite or pg) for one server."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{home}/mediasvc.db"
        return
    name = f"mediasvc_bench_rfb_{secrets.token_hex(4)}"
    psql(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def upload(server: Child, *, budget: bool) -> str:
    """A file of random bytes on ``server``; its download URL."""
    query = "?max_downloads=1000000" if budget else ""
    response = httpx.post(f"{server.base}/api/v1/files/stream{query}",
                          content=os.urandom(FILE_BYTES), timeout=120)  # fmt: skip
    response.raise_for_status()
    return f"{server.base}/api/v1/files/{response.json()['uid']}"


if __name__ == "__main__":
    main()
