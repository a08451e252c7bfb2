"""The shared services a run uses: PostgreSQL and Redis (scripts/services), their databases."""

from __future__ import annotations

import os
import subprocess

from bench.base import ROOT, BenchError
from bench.children import run


def ensure_services() -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "services")], text=True, capture_output=True
    )
    if proc.returncode != 0:
        raise BenchError(f"scripts/services failed:\n{proc.stdout}\n{proc.stderr}")


def pick_redis_dbs(count: int) -> list[int]:
    """Redis databases nobody uses (the tests use 13), emptied again at the end.

    ``BENCH_REDIS_DBS`` (e.g. ``7,8``) names them instead: a database that is empty when looked
    at may belong to a test run beside this one, whose flushes would take the bench's jobs.
    """
    if named := os.environ.get("BENCH_REDIS_DBS"):
        dbs = [int(db) for db in named.split(",")]
        if len(dbs) != count:
            raise BenchError(f"BENCH_REDIS_DBS names {len(dbs)} databases, the bench needs {count}")
        return dbs
    found = []
    for db in range(1, 16):
        if db == 13:
            continue
        out = run(["redis-cli", "-h", "127.0.0.1", "-n", str(db), "dbsize"]).stdout.strip()
        if out == "0":
            found.append(db)
        if len(found) == count:
            return found
    raise BenchError("no empty Redis database for the benchmark")


def flush_redis(db: int) -> None:
    run(["redis-cli", "-h", "127.0.0.1", "-n", str(db), "flushdb"])


def psql(sql: str) -> None:
    run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]
    )
