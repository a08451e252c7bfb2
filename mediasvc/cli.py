"""``mediasvc serve | worker | migrate | upload | download | hash-key``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

# glibc's malloc hands body-sized buffers back to the kernel and faults them in again for every
# chunk; these thresholds keep them in the heap (FIELD-NOTES: ~1.4 M page faults per 4 GiB upload
# without, ~0 with; upload throughput roughly doubles). It must be set before the interpreter
# starts, so `serve` re-executes itself once with it. One arena: a worker thread's reads land in
# the same heap as the event loop's, so the periodic malloc_trim (mediasvc.memory) can give all
# of it back; the top of a thread arena is only ever trimmed past trim_threshold, i.e. never.
MALLOC_TUNABLES = (
    "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"
    ":glibc.malloc.arena_max=1"
)


def _serve(args: argparse.Namespace) -> None:
    if "GLIBC_TUNABLES" not in os.environ and not args.no_malloc_tuning:
        os.environ["GLIBC_TUNABLES"] = MALLOC_TUNABLES
        os.execv(sys.executable, [sys.executable, "-m", "mediasvc", *sys.argv[1:]])

    import tempfile

    import uvicorn

    from mediasvc.observability import log_config

    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker process keeps its own counters; in this directory /metrics merges them.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mediasvc-metrics-")
    if args.server == "granian":
        _serve_granian(args)
        return
    uvicorn.run(
        "mediasvc.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        http="httptools",
        loop="uvloop",
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
        # On SIGTERM uvicorn stops accepting, lets in-flight requests (uploads) finish for
        # up to this long, then cancels what is left (whose cleanup removes its .part file).
        timeout_graceful_shutdown=args.graceful_shutdown_s,
        log_level=args.log_level,
        log_config=log_config(args.log_level),
        access_log=False,  # ObservabilityMiddleware writes the access log, with request ids
    )


def _serve_granian(args: argparse.Namespace) -> None:
    """The alternative server. uvicorn stays the default: measured side by side (`make bench`,
    README: Performance), granian uploaded at 0.98x uvicorn's speed and downloaded at 0.68x
    (full) and 0.91x (Range)."""
    try:
        from granian import Granian
        from granian.constants import Interfaces, Loops
        from granian.log import LogLevels
    except ImportError as exc:
        raise SystemExit("--server granian needs granian: pip install 'mediasvc[granian]'") from exc

    from mediasvc.observability import log_config

    os.environ[_TRUSTED_PROXIES_ENV] = args.forwarded_allow_ips
    level = "debug" if args.log_level.lower() == "trace" else args.log_level.lower()
    Granian(
        f"{__name__}:granian_app",
        factory=True,
        address=args.host,
        port=args.port,
        workers=args.workers,
        interface=Interfaces.ASGI,
        loop=Loops.uvloop,
        log_level=LogLevels(level),
        log_dictconfig=log_config(args.log_level),
        log_access=False,  # ObservabilityMiddleware writes the access log, with request ids
        # Not uvicorn's drain-then-cancel: granian kills a worker still busy after this long, so
        # an upload cut there leaves its .part file to the cleanup job's sweep.
        workers_kill_timeout=args.graceful_shutdown_s,
    ).serve()


_TRUSTED_PROXIES_ENV = "MEDIASVC_SERVE_FORWARDED_ALLOW_IPS"


def granian_app() -> object:
    """granian's app factory: ours behind uvicorn's own X-Forwarded-* middleware, so that both
    servers trust the same proxies and read the headers the same way (granian's wrapper takes
    X-Forwarded-Proto only together with X-Forwarded-For)."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from mediasvc.app import create_app

    trusted = os.environ.get(_TRUSTED_PROXIES_ENV, "127.0.0.1")
    app: Any = create_app()  # Starlette's and uvicorn's ASGI type aliases differ, not the protocol
    return ProxyHeadersMiddleware(app, trusted_hosts=trusted)


def _worker(args: argparse.Namespace) -> None:
    from arq.worker import check_health, run_worker

    from mediasvc.config import Settings
    from mediasvc.jobs.worker import worker_settings

    settings_cls = worker_settings(Settings())
    if args.check:
        raise SystemExit(check_health(settings_cls))
    run_worker(settings_cls)


def _upload(args: argparse.Namespace) -> None:
    from mediasvc.client import ClientError, upload

    try:
        uploaded = upload(
            args.file,
            url=args.url,
            api_key=args.api_key,
            max_downloads=args.max_downloads,
            expires_in_s=args.expires_in,
        )
    except (ClientError, OSError) as exc:
        raise SystemExit(f"upload failed: {exc}") from exc
    print(f"uid:          {uploaded.uid}")
    print(f"download_url: {uploaded.download_url}")
    print(f"sha256:       {uploaded.sha256} (verified)")
    print(f"delete_token: {uploaded.delete_token}")


def _download(args: argparse.Namespace) -> None:
    from mediasvc.client import ClientError, download

    try:
        path = download(args.uid, args.output, url=args.url, api_key=args.api_key)
    except (ClientError, OSError) as exc:
        raise SystemExit(f"download failed: {exc}") from exc
    print(f"{path} (sha256 verified)")


def _hash_key(args: argparse.Namespace) -> None:
    from mediasvc.auth import hash_key

    print(hash_key(args.key))


def _migrate(_args: argparse.Namespace) -> None:
    from mediasvc.config import Settings
    from mediasvc.db.migrations import upgrade

    settings = Settings()
    upgrade(settings.database_url)
    print(f"database at head: {settings.database_url.split('@')[-1]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mediasvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API (uvicorn, or granian)")
    serve.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        default="uvicorn",
        help="the ASGI server (uvicorn measured faster here: README, Performance)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--forwarded-allow-ips", default="127.0.0.1")
    serve.add_argument(
        "--graceful-shutdown-s",
        type=int,
        default=int(os.environ.get("MEDIASVC_GRACEFUL_SHUTDOWN_S", "30")),
        help="how long in-flight requests may finish after SIGTERM",
    )
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--no-malloc-tuning", action="store_true", help="don't set GLIBC_TUNABLES (see cli.py)"
    )
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser("worker", help="run the arq worker (push, cleanup, reconcile)")
    worker.add_argument("--check", action="store_true", help="health check of a running worker")
    worker.set_defaults(handler=_worker)

    migrate = commands.add_parser("migrate", help="bring the database schema to the latest")
    migrate.set_defaults(handler=_migrate)

    default_url = os.environ.get("MEDIASVC_URL", "http://127.0.0.1:8000")
    default_key = os.environ.get("MEDIASVC_API_KEY")
    up = commands.add_parser("upload", help="upload a file, streamed, with a progress bar")
    up.add_argument("file", type=Path)
    up.add_argument("--url", default=default_url, help="the service (env MEDIASVC_URL)")
    up.add_argument("--api-key", default=default_key, help="env MEDIASVC_API_KEY")
    up.add_argument("--max-downloads", type=int)
    up.add_argument("--expires-in", type=int, metavar="SECONDS")
    up.set_defaults(handler=_upload)

    down = commands.add_parser("download", help="download a file; resumes a partial one")
    down.add_argument("uid")
    down.add_argument("-o", "--output", type=Path, help="default: the original name")
    down.add_argument("--url", default=default_url, help="the service (env MEDIASVC_URL)")
    down.add_argument("--api-key", default=default_key, help="env MEDIASVC_API_KEY")
    down.set_defaults(handler=_download)

    hashed = commands.add_parser("hash-key", help="print the sha256 to configure an API key")
    hashed.add_argument("key")
    hashed.set_defaults(handler=_hash_key)

    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
