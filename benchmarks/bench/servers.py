"""The contenders as servers: discard, the uvicorn peers, nginx, s3rver, mediasvc (uvicorn,
granian), their configs, and which process of each to watch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

from bench.base import BENCH, BUCKET, S3RVER_BIN, BenchError, log
from bench.children import free_port, run, wait_http
from bench.context import Run
from bench.procfs import children_of
from bench.services import pick_redis_dbs
from mediasvc.cli import MALLOC_TUNABLES


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


def rss_pid(r: Run, server: str | None) -> int | None:
    if server is None:
        return None
    if server == "nginx":
        return int(r.meta["nginx_worker_pid"])
    if server == "mediasvc_granian":  # granian serves from a worker process
        return int(r.meta["granian_worker_pid"])
    return r.servers[server].pid
