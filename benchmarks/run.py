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
- cloud push of 1 GiB by `mediasvc worker` to s3rver: MB/s, the worker's peak RSS;
- downloads of SIZE, full and the last 64 MiB: nginx sendfile, Starlette FileResponse defaults,
  mediasvc from disk (under uvicorn and granian), mediasvc from the cloud store (s3rver, the
  local copy evicted);
- concurrency: 8 parallel 512 MiB uploads, 32 parallel Range readers at random offsets;
- locust (benchmarks/locustfile.py): a realistic mix for a bounded time against the full stack
  (`mediasvc serve --workers 2`, PostgreSQL, Redis, `mediasvc worker`, s3rver), and GET /healthz
  of the same app (the framework ceiling).

    .venv/bin/python benchmarks/run.py            # SIZE 4 GiB, 3 rounds (~25 min)
    .venv/bin/python benchmarks/run.py --quick    # SIZE 1 GiB, 1 round, short locust

MB = 10^6 bytes. Python servers run with the GLIBC_TUNABLES that `mediasvc serve` sets itself.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import hashlib
import json
import mmap
import os
import platform
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
BIN = Path(sys.executable).parent
S3RVER_BIN = ROOT / "tests" / "s3rver" / "node_modules" / ".bin" / "s3rver"
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000
BUCKET = "bench"
START = time.monotonic()

sys.path.insert(0, str(ROOT))
from mediasvc.cli import MALLOC_TUNABLES  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.monotonic() - START:7.1f}s] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


# --- configuration ---------------------------------------------------------------------------


@dataclass
class Config:
    quick: bool
    size: int
    rounds: int
    small: int = 512 * MiB
    push_size: int = 1 * GiB
    hostile_size: int = 4 * GiB
    range_tail: int = 64 * MiB
    parallel_uploads: int = 8
    readers: int = 32
    reader_requests: int = 8
    reader_bytes: int = 8 * MiB
    locust_users: int = 100
    locust_mix_s: int = 40
    locust_ceiling_s: int = 15
    locust_seed_files: int = 12
    sections: tuple[str, ...] = ("uploads", "push", "downloads", "concurrency", "locust")

    @property
    def size_label(self) -> str:
        return f"{self.size // GiB} GiB" if self.size % GiB == 0 else f"{self.size // MiB} MiB"


def make_config(args: argparse.Namespace) -> Config:
    if args.quick:
        cfg = Config(quick=True, size=1 * GiB, rounds=1, reader_bytes=4 * MiB)
        cfg.locust_mix_s, cfg.locust_ceiling_s = 20, 8
    else:
        cfg = Config(quick=False, size=4 * GiB, rounds=3)
    if args.size_mib:
        cfg.size = args.size_mib * MiB
    if args.rounds:
        cfg.rounds = args.rounds
    if args.locust_s:
        cfg.locust_mix_s = args.locust_s
    if args.sections:
        cfg.sections = tuple(s.strip() for s in args.sections.split(","))
    cfg.push_size = min(cfg.push_size, cfg.size)
    cfg.hostile_size = min(cfg.hostile_size, cfg.size)
    return cfg


# --- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class LatencyProbe(threading.Thread):
    """GET one URL every ``interval_s`` on one keep-alive connection, recording latencies.

    A second, light client beside locust: locust's own figures include the time its greenlets
    wait for its (busy, single-threaded) process, this one mostly the server's.
    """

    def __init__(self, url: str, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self._url = url
        self._interval_s = interval_s
        self._halt = threading.Event()
        self.latencies_ms: list[float] = []
        self.failures = 0

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._halt.wait(self._interval_s):
                t0 = time.perf_counter()
                try:
                    ok = client.get(self._url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    self.failures += 1

    def stop(self) -> tuple[float, float, float]:
        self._halt.set()
        self.join()
        ordered = sorted(self.latencies_ms) or [float("nan")]

        def q(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

        return q(0.5), q(0.95), q(0.99)


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


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Children:
    """Every server is a child of this process; all of them are stopped by ``stop_all``."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], *, env: dict[str, str], cwd: Path, port: int = 0
    ) -> Child:
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                list(argv), stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd
            )
        child = Child(name, proc, log_path, port)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 20.0) -> None:
        if child in self.children:
            self.children.remove(child)
        if child.proc.poll() is not None:
            return
        family = descendants_of(child.pid)
        child.proc.send_signal(signal.SIGTERM)
        try:
            child.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait(timeout=10)
        for pid in family:  # uvicorn's worker processes, nginx's worker
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            try:
                self.stop(child)
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {child.name}: {exc}")


def wait_http(child: Child, path: str = "/", *, timeout: float = 60.0, ok: int = 500) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise BenchError(f"{child.name} exited ({child.proc.returncode}):\n{child.log_tail()}")
        try:
            response = httpx.get(child.base + path, timeout=2.0)
            if response.status_code < ok:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise BenchError(f"{child.name} did not answer {path}: {last}\n{child.log_tail()}")


def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, text=True, capture_output=True, **kwargs)


# --- curl ------------------------------------------------------------------------------------


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


def curl(args: Sequence[str], *, body_out: str = "/dev/null", timeout: float = 900) -> dict:
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


# --- results ---------------------------------------------------------------------------------


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


def round_order(items: list[Any], rnd: int) -> list[Any]:
    """Interleave: every contender once per round, the order reversed every other round."""
    return list(items) if rnd % 2 == 0 else list(reversed(items))


# --- setup -----------------------------------------------------------------------------------


def ensure_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    log("nginx is missing: installing Debian's nginx package with apt-get")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "--no-install-recommends", "nginx"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        run([*sudo, "apt-get", "update"], env=env)
        run(install, env=env)
    if os.access("/usr/sbin/nginx", os.X_OK):
        return "/usr/sbin/nginx"
    raise BenchError("nginx did not install")


def ensure_services() -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "services")], text=True, capture_output=True
    )
    if proc.returncode != 0:
        raise BenchError(f"scripts/services failed:\n{proc.stdout}\n{proc.stderr}")


def pick_redis_dbs(count: int) -> list[int]:
    """Redis databases nobody uses (the tests use 13), emptied again at the end."""
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


def write_repeating(path: Path, size: int, block: bytes) -> None:
    with path.open("wb", buffering=0) as out:
        written = 0
        view = memoryview(block)
        while written < size:
            n = min(len(block), size - written)
            out.write(view[:n])
            written += n
        os.fsync(out.fileno())


MP_BOUNDARY = "benchboundary7MA4YWxkTrZu0gW"


def write_multipart(path: Path, source: Path, size: int) -> None:
    head = (
        f'--{MP_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="data.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    tail = f"\r\n--{MP_BOUNDARY}--\r\n".encode()
    buf = bytearray(4 * MiB)
    with path.open("wb", buffering=0) as out, source.open("rb", buffering=0) as src:
        out.write(head)
        left = size
        while left:
            n = src.readinto(memoryview(buf)[: min(len(buf), left)])
            if not n:
                raise BenchError("short source file")
            out.write(memoryview(buf)[:n])
            left -= n
        out.write(tail)
        os.fsync(out.fileno())


def make_files(r: Run) -> None:
    cfg = r.cfg
    data_dir = r.tmp / "data"
    data_dir.mkdir()
    block = random.Random(20261).randbytes(64 * MiB)
    files = {
        "data": (cfg.size, block),
        "hostile": (cfg.hostile_size, b"\r\n--" * (MiB // 4)),
        "small": (cfg.small, block),
        "push": (cfg.push_size, block),
    }
    for name, (size, pattern) in files.items():
        if name == "push" and size == cfg.size:
            r.files[name] = r.files["data"]
            continue
        path = data_dir / f"{name}.bin"
        write_repeating(path, size, pattern)
        r.files[name] = path
    r.files["small_mp"] = data_dir / "small.multipart"
    write_multipart(r.files["small_mp"], r.files["small"], cfg.small)
    www = r.tmp / "www"
    www.mkdir()
    os.link(r.files["data"], www / "data.bin")
    log(f"test files ready ({cfg.size_label} random data, hostile data, 512 MiB, multipart body)")


def start_servers(r: Run) -> None:
    cfg_env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASVC_")}
    cfg_env.pop("GLIBC_TUNABLES", None)
    tuned = {**cfg_env, "GLIBC_TUNABLES": MALLOC_TUNABLES}
    children = r.children

    # discarding socket
    port = free_port()
    child = children.start(
        "discard",
        [sys.executable, str(BENCH / "apps.py"), "discard", "--port", str(port)],
        env=cfg_env,
        cwd=r.tmp,
        port=port,
    )
    r.servers["discard"] = child

    # the same uvicorn for the Python peers
    spool = r.tmp / "naive-spool"
    out = r.tmp / "naive-out"
    spool.mkdir()
    out.mkdir()
    apps = {
        "count": ("apps:count_app", {}),
        "naive": ("apps:naive_app", {"TMPDIR": str(spool), "BENCH_UPLOAD_DIR": str(out)}),
        "starlette": ("apps:file_app", {"BENCH_FILE_ROOT": str(r.tmp / "www")}),
    }
    for name, (target, extra) in apps.items():
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            target,
            "--app-dir",
            str(BENCH),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--http",
            "httptools",
            "--loop",
            "uvloop",
            "--log-level",
            "warning",
        ]
        r.servers[name] = children.start(name, argv, env={**tuned, **extra}, cwd=r.tmp, port=port)

    # nginx
    nginx = ensure_nginx()
    prefix = r.tmp / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = (BENCH / "nginx.conf").read_text()
    conf = (
        conf.replace("@PREFIX@", str(prefix))
        .replace("@PORT@", str(port))
        .replace("@WWW@", str(r.tmp / "www"))
        .replace("@USER_LINE@", "user root;" if os.geteuid() == 0 else "")
    )
    (prefix / "nginx.conf").write_text(conf)
    argv = [
        nginx,
        "-p",
        str(prefix),
        "-c",
        str(prefix / "nginx.conf"),
        "-e",
        str(prefix / "error.log"),
    ]
    argv += ["-g", "daemon off;"]
    r.servers["nginx"] = children.start("nginx", argv, env=cfg_env, cwd=prefix, port=port)

    # s3rver
    if not S3RVER_BIN.exists():
        raise BenchError(f"{S3RVER_BIN} is missing: run `npm ci --prefix tests/s3rver`")
    s3dir = r.tmp / "s3rver"
    s3dir.mkdir()
    argv = [str(S3RVER_BIN), "-d", str(s3dir / "store"), "-a", "127.0.0.1", "-p", "0"]
    argv += ["-s", "--configure-bucket", BUCKET]
    s3 = children.start("s3rver", argv, env=cfg_env, cwd=s3dir)
    deadline = time.monotonic() + 60
    while not s3.port:
        if match := re.search(r"listening on [\d.]+:(\d+)", s3.log_tail(100_000)):
            s3.port = int(match.group(1))
        elif s3.proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"s3rver did not start:\n{s3.log_tail()}")
        else:
            time.sleep(0.1)
    r.servers["s3rver"] = s3

    # mediasvc, one node on its embedded defaults (SQLite) with the cloud tier on s3rver and a
    # queue in Redis that no worker reads during the upload sections (pushes run when measured).
    single = r.tmp / "single"
    single.mkdir()
    r.redis_dbs = pick_redis_dbs(2)
    r.env_single = {
        **cfg_env,
        "MEDIASVC_DATABASE_URL": f"sqlite+aiosqlite:///{single}/mediasvc.db",
        "MEDIASVC_MEDIA_ROOT": str(single / "media"),
        **cloud_env(r, r.redis_dbs[0]),
    }
    run([sys.executable, "-m", "mediasvc", "migrate"], env=r.env_single, cwd=single)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "mediasvc",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    r.servers["mediasvc"] = children.start(
        "mediasvc", argv, env=r.env_single, cwd=single, port=port
    )

    # The same node under granian (`mediasvc serve --server granian`): same database and files.
    port = free_port()
    argv = [*argv[:-4], "--server", "granian", "--port", str(port), "--log-level", "warning"]
    r.servers["mediasvc_granian"] = children.start(
        "mediasvc_granian", argv, env=r.env_single, cwd=single, port=port
    )

    for name in ("count", "naive", "starlette", "mediasvc", "mediasvc_granian"):
        wait_http(r.servers[name], "/healthz" if name.startswith("mediasvc") else "/")
    wait_http(r.servers["nginx"], "/done")
    wait_http(r.servers["mediasvc"], "/readyz", ok=300)
    # nginx's body-writing worker is the process to watch, not the master.
    workers = children_of(r.servers["nginx"].pid)
    if len(workers) != 1:
        raise BenchError(f"expected one nginx worker, found {workers}")
    r.meta["nginx_worker_pid"] = workers[0]
    granian_workers = children_of(r.servers["mediasvc_granian"].pid)
    if len(granian_workers) != 1:
        raise BenchError(f"expected one granian worker, found {granian_workers}")
    r.meta["granian_worker_pid"] = granian_workers[0]
    log("servers up: " + ", ".join(f"{n}:{c.port}" for n, c in r.servers.items()))


def cloud_env(r: Run, redis_db: int) -> dict[str, str]:
    return {
        "MEDIASVC_REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "MEDIASVC_CLOUD_BACKEND": "s3",
        "MEDIASVC_S3_ENDPOINT_URL": r.servers["s3rver"].base,
        "MEDIASVC_S3_BUCKET": BUCKET,
        "MEDIASVC_S3_ACCESS_KEY_ID": "S3RVER",
        "MEDIASVC_S3_SECRET_ACCESS_KEY": "S3RVER",
        # The measured push must be the only one: nothing re-enqueued behind our back.
        "MEDIASVC_RECONCILE_STALE_AFTER_S": "86400",
        "MEDIASVC_RECONCILE_FAILED_AFTER_S": "86400",
    }


# --- mediasvc helpers ------------------------------------------------------------------------


def mediasvc_delete(base: str, meta: dict[str, Any]) -> None:
    response = httpx.delete(
        f"{base}/api/v1/files/{meta['uid']}",
        headers={"X-Delete-Token": meta["delete_token"]},
        timeout=120,
    )
    if response.status_code != 204:
        raise BenchError(f"DELETE {meta['uid']}: {response.status_code} {response.text[:300]}")


def mediasvc_upload(r: Run, path: Path, *, name: str = "data.bin") -> dict[str, Any]:
    body = r.tmp / f"resp-{secrets.token_hex(4)}.json"
    curl(
        [
            *("-X", "POST", "-T", str(path), "-H", f"X-Filename: {name}"),
            r.servers["mediasvc"].base + "/api/v1/files/stream",
        ],
        body_out=str(body),
    )
    meta = json.loads(body.read_text())
    body.unlink()
    return meta


# --- section: uploads ------------------------------------------------------------------------


@dataclass
class Upload:
    key: str
    label: str
    server: str | None  # whose RSS to watch
    path: str  # url path
    args: Callable[[Path], list[str]]
    source: str = "data"  # which test file
    after: str = ""  # "mediasvc" | "naive": what to clean up from the response


def copy_fsync(src: Path, dst: Path) -> float:
    buf = bytearray(MiB)
    view = memoryview(buf)
    t0 = time.perf_counter()
    with src.open("rb", buffering=0) as fin, dst.open("wb", buffering=0) as fout:
        while n := fin.readinto(buf):
            fout.write(view[:n])
        os.fsync(fout.fileno())
    elapsed = time.perf_counter() - t0
    dst.unlink()
    return elapsed


def copy_direct_fsync(src: Path, dst: Path) -> float:
    """The same with O_DIRECT (what mediasvc writes with): page-aligned buffer, no page cache."""
    buf = mmap.mmap(-1, MiB)
    view = memoryview(buf)
    t0 = time.perf_counter()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    try:
        with src.open("rb", buffering=0) as fin:
            while n := fin.readinto(buf):
                if n % 4096:  # the unaligned tail goes through the page cache
                    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                os.write(fd, view[:n])
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    view.release()
    dst.unlink()
    return elapsed


def sha256_file(src: Path) -> float:
    buf = bytearray(MiB)
    view = memoryview(buf)
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    with src.open("rb", buffering=0) as fin:
        while n := fin.readinto(buf):
            digest.update(view[:n])
    return time.perf_counter() - t0


def rss_pid(r: Run, server: str | None) -> int | None:
    if server is None:
        return None
    if server == "nginx":
        return int(r.meta["nginx_worker_pid"])
    if server == "mediasvc_granian":  # granian serves from a worker process
        return int(r.meta["granian_worker_pid"])
    return r.servers[server].pid


def upload_contenders(mode: str, hostile_mib: int) -> list[Upload]:
    """mode "T": curl -T (streamed); "D": curl --data-binary (the whole body in curl's memory)."""
    if mode == "T":

        def raw(p: Path) -> list[str]:
            return ["-X", "POST", "-T", str(p)]

        def form(p: Path) -> list[str]:
            return ["-F", f"file=@{p};filename=data.bin;type=application/octet-stream"]

        return [
            Upload("discard", "curl → discarding socket", None, "/", raw),
            Upload("disk", "disk write + fsync (1 MiB writes)", None, "", raw),
            Upload("direct", "disk write, O_DIRECT, + fsync (1 MiB writes)", None, "", raw),
            Upload("sha256", "sha256, hashlib, 1 thread", None, "", raw),
            Upload("count", "uvicorn pure ASGI, count only", "count", "/", raw),
            Upload("nginx", "nginx body → disk", "nginx", "/upload", raw),
            Upload(
                "naive",
                "FastAPI UploadFile + copy (multipart)",
                "naive",
                "/upload",
                form,
                after="naive",
            ),
            Upload(
                "raw",
                "mediasvc raw POST",
                "mediasvc",
                "/api/v1/files/stream",
                raw,
                after="mediasvc",
            ),
            Upload(
                "graw",
                "mediasvc raw POST, under granian",
                "mediasvc_granian",
                "/api/v1/files/stream",
                raw,
                after="mediasvc",
            ),
            Upload(
                "put",
                "mediasvc PUT",
                "mediasvc",
                "/api/v1/files/stream/data.bin",
                lambda p: ["-T", str(p)],
                after="mediasvc",
            ),
            Upload("mp", "mediasvc multipart", "mediasvc", "/api/v1/files", form, after="mediasvc"),
            Upload(
                "hostile",
                f"mediasvc multipart, hostile data (\\r\\n--), {hostile_mib} MiB",
                "mediasvc",
                "/api/v1/files",
                form,
                source="hostile",
                after="mediasvc",
            ),
        ]

    def binary(p: Path) -> list[str]:
        return ["--data-binary", f"@{p}", "-H", "Content-Type: application/octet-stream"]

    def mp_binary(p: Path) -> list[str]:
        ctype = f"Content-Type: multipart/form-data; boundary={MP_BOUNDARY}"
        return ["--data-binary", f"@{p}", "-H", ctype]

    return [
        Upload("discard", "curl → discarding socket", None, "/", binary, source="small"),
        Upload("sha256", "sha256, hashlib, 1 thread", None, "", binary, source="small"),
        Upload("count", "uvicorn pure ASGI, count only", "count", "/", binary, source="small"),
        Upload("nginx", "nginx body → disk", "nginx", "/upload", binary, source="small"),
        Upload(
            "naive",
            "FastAPI UploadFile + copy (multipart)",
            "naive",
            "/upload",
            mp_binary,
            source="small_mp",
            after="naive",
        ),
        Upload(
            "raw",
            "mediasvc raw POST",
            "mediasvc",
            "/api/v1/files/stream",
            binary,
            source="small",
            after="mediasvc",
        ),
        Upload(
            "mp",
            "mediasvc multipart",
            "mediasvc",
            "/api/v1/files",
            mp_binary,
            source="small_mp",
            after="mediasvc",
        ),
    ]


def run_upload(r: Run, up: Upload, prefix: str, rnd: int, size: int) -> None:
    src = r.files[up.source]
    if up.source == "hostile":
        size = r.cfg.hostile_size
    if up.key in ("disk", "direct"):
        copy = copy_fsync if up.key == "disk" else copy_direct_fsync
        elapsed = copy(src, r.tmp / "disk-write.bin")
        r.samples.put(f"{prefix}.{up.key}.mbps", rnd, size / elapsed / MB)
        return
    if up.key == "sha256":
        elapsed = sha256_file(src)
        r.samples.put(f"{prefix}.{up.key}.mbps", rnd, size / elapsed / MB)
        return
    server = "discard" if up.key == "discard" else up.server
    assert server is not None
    url = r.servers[server].base + up.path
    body = r.tmp / "upload-response.json"
    with RssProbe(rss_pid(r, up.server)) as probe:
        info = curl([*up.args(src), url], body_out=str(body), timeout=1800)
        rss = probe.read()
    r.samples.put(f"{prefix}.{up.key}.mbps", rnd, size / float(info["time_total"]) / MB)
    if rss:
        r.samples.put(f"{prefix}.{up.key}.rss", rnd, rss)
    response = json.loads(body.read_text())
    if up.after == "mediasvc":
        if response.get("size") != size:
            raise BenchError(f"mediasvc stored {response.get('size')} bytes, sent {size}")
        mediasvc_delete(r.servers["mediasvc"].base, response)
    elif up.after == "naive":
        Path(response["path"]).unlink()
        if response["size"] != size:
            raise BenchError(f"naive FastAPI stored {response['size']} bytes, sent {size}")
    elif up.key in ("discard", "count") and response.get("size") not in (size, None):
        raise BenchError(f"{up.key} counted {response.get('size')} bytes, sent {size}")


def section_uploads(r: Run) -> None:
    cfg = r.cfg
    for prefix, mode, size, title in (
        ("upT", "T", cfg.size, f"upload {cfg.size_label}, curl -T"),
        ("upD", "D", cfg.small, "upload 512 MiB, curl --data-binary"),
    ):
        contenders = upload_contenders(mode, cfg.hostile_size // MiB)
        for rnd in range(cfg.rounds):
            for up in round_order(contenders, rnd):
                t0 = time.monotonic()
                run_upload(r, up, prefix, rnd, size)
                mbps = r.v(f"{prefix}.{up.key}.mbps", rnd)
                took = time.monotonic() - t0
                log(f"{title} r{rnd + 1} {up.label}: {mbps:,.0f} MB/s ({took:.1f} s)")
        upload_rows(r, prefix, title, contenders)
    # The big hostile file is no longer needed: give its page cache back.
    r.files["hostile"].unlink()


def upload_rows(r: Run, prefix: str, title: str, contenders: list[Upload]) -> None:
    for up in contenders:
        r.metric(title, up.label, f"{prefix}.{up.key}.mbps", "MB/s")
    for up in contenders:
        r.metric(title, f"{up.label}: {RSS_LABEL}", f"{prefix}.{up.key}.rss", RSS_UNIT)

    def v(name: str, rnd: int) -> float:
        return float(r.v(f"{prefix}.{name}.mbps", rnd))

    def ratio(name: str, over: str) -> Callable[[int], float]:
        return lambda rnd: v(name, rnd) / v(over, rnd)

    r.derived(
        title,
        "raw / min(count only, sha256)",
        lambda rnd: v("raw", rnd) / min(v("count", rnd), v("sha256", rnd)),
        target="≥ 0.85",
        check=lambda x: x >= 0.85,
    )
    r.derived(
        title,
        "raw / nginx body → disk",
        ratio("raw", "nginx"),
        target="≥ 0.75",
        check=lambda x: x >= 0.75,
    )
    r.derived(
        title, "raw / naive FastAPI", ratio("raw", "naive"), target="≥ 3", check=lambda x: x >= 3
    )
    r.derived(
        title, "multipart / raw", ratio("mp", "raw"), target="≥ 0.85", check=lambda x: x >= 0.85
    )
    r.derived(
        title,
        "hostile multipart / raw",
        ratio("hostile", "raw"),
        target="≥ 0.25",
        check=lambda x: x >= 0.25,
    )
    r.derived(title, "PUT / raw", ratio("put", "raw"))
    if any(up.key == "graw" for up in contenders):
        r.derived(title, "granian raw / uvicorn raw (serve --server)", ratio("graw", "raw"))
    r.derived(title, "count only / nginx (uvicorn's ceiling vs nginx)", ratio("count", "nginx"))
    r.derived(title, "raw / curl → discarding socket", ratio("raw", "discard"))
    if any(up.key == "direct" for up in contenders):
        r.derived(title, "raw / disk write, O_DIRECT, + fsync", ratio("raw", "direct"))
    if prefix == "upT":
        keys = [k for k in ("raw", "put", "mp", "hostile") if r.samples.get(f"{prefix}.{k}.rss")]
        r.derived(
            title,
            "mediasvc RSS growth, one upload (worst of raw/PUT/multipart/hostile)",
            lambda rnd: max(r.v(f"{prefix}.{k}.rss", rnd)[1] for k in keys),
            "MB",
            digits=0,
            target="< 64 MB (worst round)",
            check=lambda x: x < 64,
            worst="max",
        )


# --- section: cloud push ---------------------------------------------------------------------


def start_worker(r: Run, env: dict[str, str], cwd: Path, name: str) -> Child:
    child = r.children.start(name, [sys.executable, "-m", "mediasvc", "worker"], env=env, cwd=cwd)
    time.sleep(2.0)
    if child.proc.poll() is not None:
        raise BenchError(f"{name} exited:\n{child.log_tail()}")
    return child


def wait_pushed(
    base: str, uid: str, timeout: float, on_start: Callable[[], None] | None = None
) -> tuple[float, float]:
    """Poll the metadata every 20 ms; (uploading seen, uploaded seen) as monotonic times."""
    started = None
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, timeout=10) as client:
        while time.monotonic() < deadline:
            meta = client.get(f"/api/v1/files/{uid}/metadata").json()
            now = time.monotonic()
            status = meta["cloud_status"]
            if status == "uploading" and started is None:
                started = now
                if on_start:
                    on_start()
            elif status == "uploaded":
                return (started or now), now
            elif status == "failed":
                raise BenchError(f"push of {uid} failed: {meta}")
            time.sleep(0.02)
    raise BenchError(f"push of {uid} did not finish in {timeout:.0f} s")


def flush_redis(db: int) -> None:
    run(["redis-cli", "-h", "127.0.0.1", "-n", str(db), "flushdb"])


def section_push(r: Run) -> None:
    cfg = r.cfg
    title = f"cloud push {cfg.push_size // MiB} MiB → s3rver"
    flush_redis(r.redis_dbs[0])  # the upload sections' queued pushes (their files are deleted)
    worker = start_worker(r, r.env_single, r.tmp / "single", "push-worker")
    s3rver = r.servers["s3rver"]
    r.meta["push_worker_rss_idle_mb"] = status_kb(worker.pid, "VmRSS") * 1024 / MB
    try:
        for rnd in range(cfg.rounds):
            reset_peak(worker.pid)
            before = status_kb(worker.pid, "VmRSS")
            meta = mediasvc_upload(r, r.files["push"])
            cpu0: list[float] = []

            def on_start(cpu0: list[float] = cpu0) -> None:
                cpu0.extend((cpu_seconds(worker.pid), cpu_seconds(s3rver.pid)))

            t_start, t_end = wait_pushed(
                r.servers["mediasvc"].base, meta["uid"], timeout=900, on_start=on_start
            )
            peak = status_kb(worker.pid, "VmHWM")
            took = t_end - t_start
            mbps = cfg.push_size / took / MB
            r.samples.put("push.mbps", rnd, mbps)
            r.samples.put("push.rss", rnd, (peak * 1024 / MB, (peak - before) * 1024 / MB))
            if cpu0:
                r.samples.put(
                    "push.cpu",
                    rnd,
                    (
                        (cpu_seconds(worker.pid) - cpu0[0]) / took * 100,
                        (cpu_seconds(s3rver.pid) - cpu0[1]) / took * 100,
                    ),
                )
            log(f"{title} r{rnd + 1}: {mbps:,.0f} MB/s, worker peak {peak / 1024:.0f} MiB")
            mediasvc_delete(r.servers["mediasvc"].base, meta)
        # The download section's cloud copy is pushed by the same worker (not a measured figure).
        meta = mediasvc_upload(r, r.files["data"], name="cloud.bin")
        t_start, t_end = wait_pushed(r.servers["mediasvc"].base, meta["uid"], timeout=1800)
        r.meta["push_of_download_file_mbps"] = cfg.size / (t_end - t_start) / MB
        r.uids["cloud"] = meta["uid"]
        speed = r.meta["push_of_download_file_mbps"]
        log(f"pushed the {cfg.size_label} download file: {speed:,.0f} MB/s")
    finally:
        r.children.stop(worker)
    r.metric(title, "push MB/s (uploading → uploaded)", "push.mbps", "MB/s")
    r.metric(title, "CPU during the push: worker / s3rver", "push.cpu", "% / %")
    r.derived(
        title,
        "worker peak RSS / growth",
        lambda rnd: r.v("push.rss", rnd),
        "MB",
        digits=0,
    )
    r.derived(
        title,
        "worker peak RSS",
        lambda rnd: r.v("push.rss", rnd)[0],
        "MB",
        digits=0,
        target="< 150 MB (worst round)",
        check=lambda x: x < 150,
        worst="max",
    )


def evict(r: Run, uid: str) -> None:
    """What cleanup's eviction does once the cloud copy is confirmed: local = false, then rm."""
    db = Path(r.env_single["MEDIASVC_DATABASE_URL"].split("///", 1)[1])
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE files SET local = 0 WHERE uid = ?", (uid,))
        conn.commit()
    path = Path(r.env_single["MEDIASVC_MEDIA_ROOT"]) / uid[:2] / uid
    path.unlink()


# --- section: downloads ----------------------------------------------------------------------


def ensure_download_files(r: Run) -> None:
    if "cloud" not in r.uids:
        flush_redis(r.redis_dbs[0])
        worker = start_worker(r, r.env_single, r.tmp / "single", "push-worker")
        try:
            meta = mediasvc_upload(r, r.files["data"], name="cloud.bin")
            wait_pushed(r.servers["mediasvc"].base, meta["uid"], timeout=1800)
            r.uids["cloud"] = meta["uid"]
        finally:
            r.children.stop(worker)
    if "disk" not in r.uids:
        r.uids["disk"] = mediasvc_upload(r, r.files["data"], name="disk.bin")["uid"]
        flush_redis(r.redis_dbs[0])  # no worker will push it; drop the job
    meta = httpx.get(f"{r.servers['mediasvc'].base}/api/v1/files/{r.uids['cloud']}/metadata").json()
    if meta["local"]:
        evict(r, r.uids["cloud"])
        meta = httpx.get(
            f"{r.servers['mediasvc'].base}/api/v1/files/{r.uids['cloud']}/metadata"
        ).json()
        if meta["local"] or meta["cloud_status"] != "uploaded":
            raise BenchError(f"eviction did not take: {meta}")


def download_urls(r: Run) -> list[tuple[str, str, str]]:
    ms = r.servers["mediasvc"].base
    return [
        ("nginx", "nginx sendfile", r.servers["nginx"].base + "/files/data.bin"),
        (
            "starlette",
            "Starlette FileResponse defaults",
            r.servers["starlette"].base + "/files/data.bin",
        ),
        ("disk", "mediasvc from disk", f"{ms}/api/v1/files/{r.uids['disk']}"),
        (
            "gdisk",
            "mediasvc from disk, under granian",
            f"{r.servers['mediasvc_granian'].base}/api/v1/files/{r.uids['disk']}",
        ),
        ("cloud", "mediasvc from the cloud (s3rver)", f"{ms}/api/v1/files/{r.uids['cloud']}"),
    ]


def section_downloads(r: Run) -> None:
    cfg = r.cfg
    ensure_download_files(r)
    title = f"download {cfg.size_label}"
    contenders = download_urls(r)
    tail_start = cfg.size - cfg.range_tail
    # Warm-up, not measured: every contender serves from the page cache. nginx's file was just
    # written by this script; mediasvc's was uploaded with O_DIRECT, which leaves nothing cached,
    # so its first read would measure the disk (~0.6-0.7 GB/s cold here) rather than the server.
    for key, _, url in contenders:
        if key != "cloud":
            curl([url], timeout=1800)
    for rnd in range(cfg.rounds):
        for kind, extra, want in (
            ("full", [], cfg.size),
            ("range", ["-r", f"{tail_start}-"], cfg.range_tail),
        ):
            for key, label, url in round_order(contenders, rnd):
                info = curl([*extra, url], timeout=1800)
                got = int(info["size_download"])
                if got != want:
                    raise BenchError(f"{label} {kind}: {got} bytes, wanted {want}")
                mbps = got / float(info["time_total"]) / MB
                ttfb = float(info["time_starttransfer"]) * 1000
                r.samples.put(f"dl.{kind}.{key}.mbps", rnd, mbps)
                r.samples.put(f"dl.{kind}.{key}.ttfb", rnd, ttfb)
                log(f"{title} {kind} r{rnd + 1} {label}: {mbps:,.0f} MB/s, TTFB {ttfb:.2f} ms")
    for kind, sub in (("full", "full"), ("range", "last 64 MiB (Range)")):
        for key, label, _ in contenders:
            r.metric(f"{title}, {sub}", label, f"dl.{kind}.{key}.mbps", "MB/s")
        for key, label, _ in contenders:
            r.metric(
                f"{title}, {sub}",
                f"{label}: time to first byte",
                f"dl.{kind}.{key}.ttfb",
                "ms",
                digits=2,
            )

        def ratio(a: str, b: str, kind: str = kind) -> Callable[[int], float]:
            return lambda rnd: r.v(f"dl.{kind}.{a}.mbps", rnd) / r.v(f"dl.{kind}.{b}.mbps", rnd)

        r.derived(
            f"{title}, {sub}",
            "mediasvc disk / nginx",
            ratio("disk", "nginx"),
            target="≥ 1.0",
            check=lambda x: x >= 1.0,
        )
        r.derived(f"{title}, {sub}", "Starlette defaults / nginx", ratio("starlette", "nginx"))
        r.derived(f"{title}, {sub}", "mediasvc cloud / nginx", ratio("cloud", "nginx"))
        r.derived(
            f"{title}, {sub}", "granian / uvicorn (mediasvc from disk)", ratio("gdisk", "disk")
        )
    r.derived(
        f"{title}, last 64 MiB (Range)",
        f"mediasvc disk: TTFB of a Range at the end of {cfg.size_label}",
        lambda rnd: r.v("dl.range.disk.ttfb", rnd),
        "ms",
        target="< 5 ms",
        check=lambda x: x < 5,
    )


# --- section: concurrency --------------------------------------------------------------------


def parallel_curls(argvs: list[list[str]], timeout: float = 1800) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]
    infos: list[dict] = []
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


def section_concurrency(r: Run) -> None:
    cfg = r.cfg
    ensure_download_files(r)
    n = cfg.parallel_uploads
    up_title = f"concurrency: {n} parallel 512 MiB uploads (curl -T)"
    rd_title = f"concurrency: {cfg.readers} parallel Range readers, random offsets"
    targets = [
        ("nginx", "nginx body → disk", "nginx", "/upload"),
        ("count", "uvicorn pure ASGI, count only", "count", "/"),
        ("raw", "mediasvc raw POST", "mediasvc", "/api/v1/files/stream"),
    ]
    for rnd in range(cfg.rounds):
        for key, label, server, path in round_order(targets, rnd):
            bodies = [r.tmp / f"par-{i}.json" for i in range(n)]
            argvs = [
                curl_argv(
                    ["-X", "POST", "-T", str(r.files["small"]), r.servers[server].base + path],
                    str(b),
                )
                for b in bodies
            ]
            with RssProbe(rss_pid(r, server)) as probe:
                elapsed, _ = parallel_curls(argvs)
                rss = probe.read()
            mbps = n * cfg.small / elapsed / MB
            r.samples.put(f"cu.{key}.mbps", rnd, mbps)
            if rss:
                r.samples.put(f"cu.{key}.rss", rnd, rss)
            for body in bodies:
                response = json.loads(body.read_text())
                body.unlink()
                if key == "raw":
                    mediasvc_delete(r.servers["mediasvc"].base, response)
            log(f"{up_title} r{rnd + 1} {label}: {mbps:,.0f} MB/s aggregate")
    for key, label, _, _ in targets:
        r.metric(up_title, f"{label}: aggregate", f"cu.{key}.mbps", "MB/s")
    for key, label, _, _ in targets:
        r.metric(up_title, f"{label}: {RSS_LABEL}", f"cu.{key}.rss", RSS_UNIT)
    r.derived(
        up_title,
        "mediasvc / nginx",
        lambda rnd: r.v("cu.raw.mbps", rnd) / r.v("cu.nginx.mbps", rnd),
    )
    r.derived(
        up_title,
        "mediasvc RSS growth",
        lambda rnd: r.v("cu.raw.rss", rnd)[1],
        "MB",
        digits=0,
        target="< 256 MB (worst round)",
        check=lambda x: x < 256,
        worst="max",
    )

    ms = r.servers["mediasvc"].base
    readers = [
        ("nginx", "nginx sendfile", r.servers["nginx"].base + "/files/data.bin"),
        ("disk", "mediasvc from disk", f"{ms}/api/v1/files/{r.uids['disk']}"),
        (
            "gdisk",
            "mediasvc from disk, under granian",
            f"{r.servers['mediasvc_granian'].base}/api/v1/files/{r.uids['disk']}",
        ),
    ]
    cfg_dir = r.tmp / "readers"
    cfg_dir.mkdir(exist_ok=True)
    total = cfg.readers * cfg.reader_requests * cfg.reader_bytes
    for rnd in range(cfg.rounds):
        rng = random.Random(1000 + rnd)
        offsets = [
            [rng.randrange(cfg.size - cfg.reader_bytes) for _ in range(cfg.reader_requests)]
            for _ in range(cfg.readers)
        ]
        for key, label, url in round_order(readers, rnd):
            argvs = []
            for i, starts in enumerate(offsets):
                path = cfg_dir / f"{key}-{i}.cfg"
                blocks = [
                    f'url = "{url}"\nrange = "{s}-{s + cfg.reader_bytes - 1}"\n'
                    'output = "/dev/null"\nwrite-out = "%{json}\\n"\n'
                    for s in starts
                ]
                path.write_text("next\n".join(blocks))
                argvs.append(["curl", "-sS", "-K", str(path)])
            server = {"nginx": "nginx", "gdisk": "mediasvc_granian"}.get(key, "mediasvc")
            with RssProbe(rss_pid(r, server)) as probe:
                elapsed, infos = parallel_curls(argvs)
                rss = probe.read()
            got = sum(int(i["size_download"]) for i in infos)
            if got != total:
                raise BenchError(f"{label}: readers got {got} bytes, wanted {total}")
            mbps = total / elapsed / MB
            r.samples.put(f"rd.{key}.mbps", rnd, mbps)
            if rss:
                r.samples.put(f"rd.{key}.rss", rnd, rss)
            log(f"{rd_title} r{rnd + 1} {label}: {mbps:,.0f} MB/s aggregate")
    for key, label, _ in readers:
        r.metric(rd_title, f"{label}: aggregate", f"rd.{key}.mbps", "MB/s")
    for key, label, _ in readers:
        r.metric(rd_title, f"{label}: {RSS_LABEL}", f"rd.{key}.rss", RSS_UNIT)
    r.derived(
        rd_title,
        "mediasvc / nginx",
        lambda rnd: r.v("rd.disk.mbps", rnd) / r.v("rd.nginx.mbps", rnd),
    )


# --- section: locust -------------------------------------------------------------------------


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


# --- report ----------------------------------------------------------------------------------


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


# --- main ------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[Run], None]] = {
    "uploads": section_uploads,
    "push": section_push,
    "downloads": section_downloads,
    "concurrency": section_concurrency,
    "locust": section_locust,
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
