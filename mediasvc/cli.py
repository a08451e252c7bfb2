"""``mediasvc serve | worker | migrate``."""

from __future__ import annotations

import argparse
import os
import sys

# glibc's malloc hands body-sized buffers back to the kernel and faults them in again for every
# chunk; these thresholds keep them in the heap (FIELD-NOTES: ~1.4 M page faults per 4 GiB upload
# without, ~0 with; upload throughput roughly doubles). It must be set before the interpreter
# starts, so `serve` re-executes itself once with it.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


def _serve(args: argparse.Namespace) -> None:
    if "GLIBC_TUNABLES" not in os.environ and not args.no_malloc_tuning:
        os.environ["GLIBC_TUNABLES"] = MALLOC_TUNABLES
        os.execv(sys.executable, [sys.executable, "-m", "mediasvc", *sys.argv[1:]])

    import uvicorn

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
        timeout_graceful_shutdown=args.graceful_shutdown_s,
        log_level=args.log_level,
    )


def _worker(args: argparse.Namespace) -> None:
    from arq.worker import check_health, run_worker

    from mediasvc.config import Settings
    from mediasvc.jobs.worker import worker_settings

    settings_cls = worker_settings(Settings())
    if args.check:
        raise SystemExit(check_health(settings_cls))
    run_worker(settings_cls)


def _migrate(_args: argparse.Namespace) -> None:
    from mediasvc.config import Settings
    from mediasvc.db.migrations import upgrade

    settings = Settings()
    upgrade(settings.database_url)
    print(f"database at head: {settings.database_url.split('@')[-1]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mediasvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API under uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--forwarded-allow-ips", default="127.0.0.1")
    serve.add_argument("--graceful-shutdown-s", type=int, default=30)
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

    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
