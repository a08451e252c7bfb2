"""Section locust: a realistic mix and the /healthz ceiling against the full stack."""

from __future__ import annotations

import contextlib
import csv
import json
import random
import resource
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.base import BENCH, BIN, MB, log
from bench.children import Child, free_port, run, wait_http
from bench.context import Run
from bench.latency import LatencyProbe
from bench.mediasvc_ops import mediasvc_delete, start_worker
from bench.procfs import children_of, machine_busy, pids_named, total_cpu_seconds
from bench.servers import cloud_env
from bench.services import psql
from bench.stats import round_order


def read_locust_stats(path: Path) -> dict[str, dict[str, float]]:
    out = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            out[row["Name"]] = {
                "count": float(row["Request Count"]),
                "failures": float(row["Failure Count"]),
                "rps": float(row["Requests/s"]),
                "p50": float(row["50%"] or 0),
                "p95": float(row["95%"] or 0),
                "p99": float(row["99%"] or 0),
            }
    return out


def section_locust(r: Run) -> None:
    cfg = r.cfg
    stack = r.tmp / "stack"
    stack.mkdir()
    db_name = f"mediasvc_bench_{secrets.token_hex(4)}"
    psql(f"CREATE DATABASE {db_name}")
    env = {
        **{k: v for k, v in r.env_single.items() if not k.startswith("MEDIASVC_")},
        "MEDIASVC_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db_name}",
        "MEDIASVC_MEDIA_ROOT": str(stack / "media"),
        **cloud_env(r, r.redis_dbs[1]),
    }
    started: list[Child] = []
    title = (
        f"locust, {cfg.locust_users} users, full stack "
        "(2 API workers, PostgreSQL, Redis, arq worker)"
    )
    try:
        run([sys.executable, "-m", "mediasvc", "migrate"], env=env, cwd=stack)
        port = free_port()
        api = r.children.start(
            "stack-api",
            [
                *(sys.executable, "-m", "mediasvc", "serve", "--workers", "2"),
                *("--port", str(port), "--log-level", "warning"),
            ],
            env=env,
            cwd=stack,
            port=port,
        )
        started.append(api)
        worker = start_worker(r, env, stack, "stack-worker")
        started.append(worker)
        wait_http(api, "/readyz", ok=300)
        # Read targets before the first upload of the run lands.
        seed = []
        rng = random.Random(7)
        with r.files["small"].open("rb") as fh:
            block = fh.read(50 * MB)
        with httpx.Client(base_url=api.base, timeout=120) as client:
            for _ in range(cfg.locust_seed_files):
                size = rng.randint(1 * MB, 50 * MB)
                response = client.post("/api/v1/files/stream", content=block[:size])
                response.raise_for_status()
                seed.append({"uid": response.json()["uid"], "size": size})
        del block
        seed_path = stack / "seed.json"
        seed_path.write_text(json.dumps(seed))
        users = [
            ("mix", "MixUser", cfg.locust_mix_s),
            ("ceiling", "HealthzUser", cfg.locust_ceiling_s),
        ]
        for rnd in range(cfg.rounds):
            for key, user, seconds in round_order(users, rnd):
                prefix = stack / f"locust-{key}-{rnd}"
                uploads_out = stack / f"uploads-{key}-{rnd}.json"
                argv = [
                    str(BIN / "locust"),
                    "-f",
                    str(BENCH / "locustfile.py"),
                    "--headless",
                    "-u",
                    str(cfg.locust_users),
                    "-r",
                    str(cfg.locust_users),
                    "-t",
                    f"{seconds}s",
                    "-H",
                    api.base,
                    "--csv",
                    str(prefix),
                    "--only-summary",
                    "--stop-timeout",
                    "10",
                    "--loglevel",
                    "WARNING",
                    user,
                ]
                locust_env = {
                    **env,
                    "BENCH_SEED": str(seed_path),
                    "BENCH_UPLOADS_OUT": str(uploads_out),
                }
                usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                busy0, total0 = machine_busy()
                groups = {
                    "api": children_of(api.pid),
                    "worker": [worker.pid, *children_of(worker.pid)],
                    "s3rver": [r.servers["s3rver"].pid],
                    "postgres": pids_named("postgres"),
                }
                cpu0 = {name: total_cpu_seconds(pids) for name, pids in groups.items()}
                probe = LatencyProbe(f"{api.base}/api/v1/files/{seed[0]['uid']}/metadata")
                t0 = time.perf_counter()
                if key == "mix":
                    probe.start()
                with (r.children.logs / f"locust-{key}-{rnd}.log").open("wb") as out:
                    subprocess.run(
                        argv,
                        env=locust_env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        timeout=seconds + 120,
                    )
                wall = time.perf_counter() - t0
                if key == "mix":
                    r.samples.put("lprobe", rnd, probe.stop())
                    if probe.failures:
                        r.errors.append(f"latency probe round {rnd + 1}: {probe.failures} failed")
                    r.samples.put(
                        "lcpu.mix.stack",
                        rnd,
                        tuple(
                            (total_cpu_seconds(pids) - cpu0[name]) / wall * 100
                            for name, pids in groups.items()
                        ),
                    )
                usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                busy1, total1 = machine_busy()
                locust_cpu = (
                    usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
                ) / wall
                r.samples.put(
                    f"lcpu.{key}",
                    rnd,
                    (locust_cpu * 100, (busy1 - busy0) / (total1 - total0) * 100),
                )
                stats = read_locust_stats(Path(f"{prefix}_stats.csv"))
                failures_csv = Path(f"{prefix}_failures.csv")
                with contextlib.suppress(OSError), failures_csv.open() as fh:
                    for row in csv.DictReader(fh):
                        r.errors.append(
                            f"locust {key} round {rnd + 1}: {row['Occurrences']} × "
                            f"{row['Method']} {row['Name']}: {row['Error']}"
                        )
                # An exception in a task is no request, so no failure in the stats: count it.
                exceptions = 0
                with contextlib.suppress(OSError), Path(f"{prefix}_exceptions.csv").open() as fh:
                    for row in csv.DictReader(fh):
                        exceptions += int(row["Count"])
                        r.errors.append(
                            f"locust {key} round {rnd + 1}: {row['Count']} × exception "
                            f"{row['Message'][:200]}"
                        )
                if "Aggregated" in stats:
                    stats["Aggregated"]["failures"] += exceptions
                for name, s in stats.items():
                    r.samples.put(f"lc.{key}.{name}", rnd, s)
                agg = stats.get("Aggregated", {})
                log(
                    f"locust r{rnd + 1} {user}: {agg.get('rps', 0):,.0f} req/s, "
                    f"p99 {agg.get('p99', 0):.0f} ms, {agg.get('failures', 0):.0f} failures"
                )
                if uploads_out.exists():
                    for meta in json.loads(uploads_out.read_text()):
                        mediasvc_delete(api.base, meta)
    finally:
        for child in reversed(started):
            r.children.stop(child)
        with contextlib.suppress(Exception):
            psql(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
    locust_rows(r, title)


def locust_rows(r: Run, title: str) -> None:
    names = sorted(
        {key.split(".", 2)[2] for key in r.samples.values if key.startswith("lc.mix.")}
        - {"Aggregated"}
    )
    for key, names_ in (("mix", [*names, "Aggregated"]), ("ceiling", ["healthz"])):
        r.metric(
            title,
            f"{key}: CPU of the locust client (of one core) / machine busy",
            f"lcpu.{key}",
            "% / %",
        )
        for name in names_:
            k = f"lc.{key}.{name}"
            shown = "all requests" if name == "Aggregated" else name
            if not r.samples.get(k):
                continue
            r.derived(
                title,
                f"{key}: {shown} req/s",
                lambda rnd, k=k: r.v(k, rnd)["rps"],
                "req/s",
                digits=1,
            )
            r.derived(
                title,
                f"{key}: {shown} p50 / p95 / p99",
                lambda rnd, k=k: (r.v(k, rnd)["p50"], r.v(k, rnd)["p95"], r.v(k, rnd)["p99"]),
                "ms",
                digits=0,
            )
    r.metric(
        title,
        "mix: CPU of API workers / arq worker / s3rver / PostgreSQL (of one core)",
        "lcpu.mix.stack",
        "%",
    )
    r.metric(
        title,
        "mix: metadata p50 / p95 / p99 seen by a second, light client (one keep-alive "
        "connection, every 50 ms)",
        "lprobe",
        "ms",
    )
    r.derived(
        title,
        "mix: metadata p99",
        lambda rnd: r.v("lc.mix.metadata", rnd)["p99"],
        "ms",
        digits=0,
        target="< 50 ms",
        check=lambda x: x < 50,
    )
    r.derived(
        title,
        "failures, all requests (mix + ceiling)",
        lambda rnd: (
            r.v("lc.mix.Aggregated", rnd)["failures"]
            + r.v("lc.ceiling.Aggregated", rnd)["failures"]
        ),
        "",
        digits=0,
        target="0 (every round)",
        check=lambda x: x == 0,
        worst="max",
    )
