"""`make bench`: mediasvc against this machine's limits and its peers, side by side, in one run.

Sets up what it needs (nginx from Debian's packages if missing; PostgreSQL and Redis through
`scripts/services`; s3rver from tests/s3rver), starts every server as a child of this process on
loopback, runs the sections below, prints one table and writes benchmarks/results/<date>.md
and .json. Temporary files live in one temp dir that is removed at the end.

Sections (each figure is the median of the rounds, with min and max; within a round every
contender runs once, the order alternating between rounds, and ratios are taken within a round,
then their median reported, because throughput drifts up to 2x over minutes on these VMs):

- uploads, SIZE with `curl -T` and 512 MiB with `curl --data-binary`: curl into a discarding
  socket, disk write + fsync (buffered and O_DIRECT), sha256 (hashlib, one thread), the same
  uvicorn counting the body (benchmarks/apps.py), nginx body to disk, naive FastAPI UploadFile,
  mediasvc raw POST (also under granian: `serve --server granian`), PUT,
  multipart (ordinary and hostile `\\r\\n--` data); MB/s and the server's peak RSS and growth;
- resumable uploads (tus) of SIZE: one PATCH and 64 MiB PATCHes vs the plain raw POST, all
  sent by one client (sendfile); a resume (HEAD + one byte appended) at 100 MiB and at SIZE
  into the upload; the server's peak RSS growth;
- cloud push of 1 GiB by `mediasvc worker` to s3rver: MB/s, the worker's peak RSS;
- downloads of SIZE, full and the last 64 MiB: nginx sendfile, Starlette FileResponse defaults,
  mediasvc from disk (under uvicorn and granian), mediasvc from the cloud store (s3rver, the
  local copy evicted);
- edge (issue 18), interleaved: nginx alone, mediasvc direct (zero-copy send), mediasvc through
  the nginx edge of deploy/nginx with offload (X-Accel-Redirect) and without; SIZE full, the
  last 64 MiB and 1 MiB Ranges at random offsets (TTFB from a raw socket), an upload through
  the edge against one straight to the API;
- first byte (issue 18): the time to the first byte of 64 KiB and 1 MiB Ranges at random offsets
  (raw socket, keep-alive): nginx as the baseline, mediasvc on SQLite and on PostgreSQL, each
  with the file unbudgeted (target < 1 ms) and budgeted (one UPDATE per GET);
- concurrency: 8 parallel 512 MiB uploads, 32 parallel Range readers at random offsets (and the
  server's RSS growth meanwhile);
- locust (benchmarks/locustfile.py): a realistic mix for a bounded time against the full stack
  (`mediasvc serve --workers 2`, PostgreSQL, Redis, `mediasvc worker`, s3rver), and GET /healthz
  of the same app (the framework ceiling);
- processing (bench/sections/processing.py): a 60 s 720p HEVC clip's rendition by `mediasvc worker`
  against the same ffmpeg command by hand, GET /metadata p99 during that transcode against
  idle, the keyframe-only storyboard of an hour of 1080p against a full decode (estimated).

    .venv/bin/python benchmarks/run.py            # SIZE 4 GiB, 3 rounds (~25 min)
    .venv/bin/python benchmarks/run.py --quick    # SIZE 1 GiB, 1 round, short locust

MB = 10^6 bytes. Python servers run with the GLIBC_TUNABLES that `mediasvc serve` sets itself.
Redis: two empty databases are picked, or `BENCH_REDIS_DBS=7,8` names them (beside test runs).

The pieces live in benchmarks/bench/: procfs (process probes), latency, stats, children,
curl, servers, services, testfiles, mediasvc_ops, one module per section under sections/, and
report. This file only wires them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from bench.base import ROOT, START, BenchError, GiB, log
from bench.children import Children
from bench.config import make_config
from bench.context import Run
from bench.report import machine, table, versions, write_results
from bench.sections.concurrency import section_concurrency
from bench.sections.downloads import section_downloads
from bench.sections.edge import section_edge
from bench.sections.first_byte import section_first_byte
from bench.sections.locust import section_locust
from bench.sections.processing import section_processing
from bench.sections.push import section_push
from bench.sections.resumable import section_resumable
from bench.sections.uploads import section_uploads
from bench.servers import start_servers
from bench.services import ensure_services, flush_redis
from bench.testfiles import make_files

SECTIONS: dict[str, Callable[[Run], None]] = {
    "uploads": section_uploads,
    "resumable": section_resumable,
    "push": section_push,
    "downloads": section_downloads,
    "edge": section_edge,
    "first_byte": section_first_byte,
    "concurrency": section_concurrency,
    "locust": section_locust,
    "processing": section_processing,
}


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    def raise_exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 GiB, one round, short locust")
    parser.add_argument("--size-mib", type=int, help="override the big file's size")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--locust-s", type=int, help="override the mix's duration")
    parser.add_argument("--sections", help="comma-separated subset of: " + ", ".join(SECTIONS))
    parser.add_argument("--tmp", default=os.environ.get("BENCH_TMP"), help="parent of the temp dir")
    args = parser.parse_args()
    cfg = make_config(args)
    unknown = set(cfg.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    tmp = Path(tempfile.mkdtemp(prefix="mediasvc-bench-", dir=args.tmp))
    logs = tmp / "logs"
    logs.mkdir()
    r = Run(cfg=cfg, tmp=tmp, children=Children(logs))
    r.meta["machine"] = machine()
    r.meta["loadavg_start"] = os.getloadavg()
    free = shutil.disk_usage(tmp).free
    need = cfg.size * 5
    if free < need:
        log(f"only {free / GiB:.0f} GiB free under {tmp}, want {need / GiB:.0f} GiB")
        return 2
    mode = "quick" if cfg.quick else "full"
    log(f"{mode} run: {cfg.size_label}, {cfg.rounds} round(s), temp {tmp}")
    exit_code = 0
    try:
        with terminate_on_signals():
            ensure_services()
            r.meta["versions"] = versions()
            make_files(r)
            start_servers(r)
            for name in cfg.sections:
                t0 = time.monotonic()
                try:
                    SECTIONS[name](r)
                except (
                    BenchError,
                    subprocess.SubprocessError,
                    OSError,
                    httpx.HTTPError,
                    KeyError,
                ) as exc:
                    exit_code = 1
                    message = f"section {name} failed: {type(exc).__name__}: {exc}"
                    r.errors.append(message)
                    log(message)
                    traceback.print_exc()
                log(f"section {name} took {time.monotonic() - t0:.0f} s")
    except BaseException as exc:
        exit_code = 1
        r.errors.append(f"run aborted: {type(exc).__name__}: {exc}")
        log(r.errors[-1])
        if not isinstance(exc, SystemExit | KeyboardInterrupt):
            traceback.print_exc()
    finally:
        r.children.stop_all()
        for db in r.redis_dbs:
            with contextlib.suppress(Exception):
                flush_redis(db)
        if os.environ.get("BENCH_KEEP_TMP"):
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - START
    r.meta["loadavg_end"] = os.getloadavg()
    if r.rows:
        md_path, json_path = write_results(r, elapsed)
        print(table(r.rows))
        verdicts = [row.verdict() for row in r.rows if row.check]
        print(f"\n{verdicts.count('PASS')} of {len(verdicts)} targets hold; {elapsed / 60:.1f} min")
        print(f"written: {md_path.relative_to(ROOT)}, {json_path.relative_to(ROOT)}")
    for error in r.errors:
        print(f"ERROR: {error}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
