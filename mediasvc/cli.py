"""mediasvc serve | worker | migrate | upload | download | hash-key: the service and its client.

Every failure a user can cause (a bad setting, a port in use, a server that is down, a file that
does not match) ends with one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from mediasvc.config import Settings

# glibc's malloc hands body-sized buffers back to the kernel and faults them in again for every
# chunk; these thresholds keep them in the heap (docs/facts.md: ~1.4 M page faults per 4 GiB upload
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

    from mediasvc import preflight
    from mediasvc.config import Settings
    from mediasvc.media.config import MediaConfig
    from mediasvc.media.tools import missing_tools_warning
    from mediasvc.observability import log_config
    from mediasvc.server.uvicorn_protocol import limits_from, protocol_factory

    settings = Settings()  # a bad or unknown setting stops here, in one line (main)
    if args.graceful_shutdown_s is None:
        args.graceful_shutdown_s = settings.graceful_shutdown_s
    preflight.check_port(args.host, args.port)
    preflight.check_database(settings)
    if warning := missing_tools_warning(MediaConfig.from_settings(settings)):
        _warn(warning)
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker process keeps its own counters; in this directory /metrics merges them.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mediasvc-metrics-")
    if args.server == "granian":
        _serve_granian(args, settings)
        return
    uvicorn.run(
        "mediasvc.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        # uvicorn's httptools protocol, but refusing a header block at max_header_bytes before
        # reading more of it, and timing it out after header_timeout_s (see the module).
        http=protocol_factory(limits_from(settings)),
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


def _serve_granian(args: argparse.Namespace, settings: Settings) -> None:
    """The alternative server. uvicorn stays the default: measured side by side (`make bench`,
    README: Performance), granian uploaded at 0.98x uvicorn's speed and downloaded at 0.68x
    (full) and 0.91x (Range)."""
    try:
        from granian import Granian
        from granian.constants import Interfaces, Loops
        from granian.http import HTTP1Settings
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
        # granian (hyper) bounds a header block itself (README: Configuration); only its time
        # limit is ours to pass, max_header_bytes is enforced by HeaderLimitMiddleware.
        http1_settings=HTTP1Settings(header_read_timeout=round(settings.header_timeout_s * 1000)),
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
    from arq.constants import default_queue_name, health_check_key_suffix
    from arq.worker import run_worker
    from redis.exceptions import RedisError

    from mediasvc import preflight
    from mediasvc.config import Settings
    from mediasvc.jobs.worker import worker_settings
    from mediasvc.media.config import MediaConfig
    from mediasvc.media.tools import missing_tools_warning

    settings = Settings()
    if not settings.redis_url:
        raise preflight.StartupError(
            "MEDIASVC_REDIS_URL is not set: the worker takes its jobs from Redis, e.g. "
            "redis://127.0.0.1:6379/0 (without it the server runs the jobs itself)"
        )
    preflight.check_redis(settings.redis_url)
    settings_cls = worker_settings(settings)
    if args.check:
        queue: str = getattr(settings_cls, "queue_name", default_queue_name)
        health = preflight.worker_health(
            settings.redis_url,
            key=getattr(settings_cls, "health_check_key", None) or queue + health_check_key_suffix,
            interval_s=settings_cls.health_check_interval,  # type: ignore[attr-defined]
        )
        print(f"worker is running: {health}")
        return
    if warning := missing_tools_warning(MediaConfig.from_settings(settings)):
        _warn(warning)
    try:
        run_worker(settings_cls)
    except (RedisError, OSError) as exc:  # Redis went away while arq was starting
        raise preflight.StartupError(f"the worker lost Redis: {exc}") from exc


def _upload(args: argparse.Namespace) -> None:
    from mediasvc.client import ClientError, upload

    if args.protocol == "ietf":
        _upload_ietf(args)
        return
    if args.interop_version is not None:
        raise SystemExit("mediasvc: --interop-version goes with --protocol ietf")
    try:
        uploaded = upload(
            args.file,
            url=args.url,
            api_key=args.api_key,
            max_downloads=args.max_downloads,
            expires_in_s=args.expires_in,
            parallel=args.parallel,
            chunk_bytes=args.chunk_size,
        )
    except (ClientError, OSError) as exc:
        raise SystemExit(f"mediasvc: upload failed: {exc}") from None
    print(f"uid:          {uploaded.uid}")
    print(f"download_url: {uploaded.download_url}")
    print(f"sha256:       {uploaded.sha256} (verified)")
    print(f"delete_token: {uploaded.delete_token or '(given to the run that finished it)'}")


def _upload_ietf(args: argparse.Namespace) -> None:
    """The IETF resumable upload draft (interop 9, or 8 when told): a break is resumed with
    HEAD + PATCH."""
    from mediasvc import ietf_client
    from mediasvc.progress import Progress

    path: Path = args.file
    if args.max_downloads is not None or args.expires_in is not None:
        raise SystemExit("mediasvc: --max-downloads and --expires-in go with --protocol tus")
    version: int = args.interop_version or ietf_client.INTEROP_VERSION
    try:
        expected = ietf_client.sha256_of(path)
        with Progress(path.name, path.stat().st_size) as bar:

            def progress(done: int) -> None:
                bar.update(done - bar.done_bytes)

            result = ietf_client.upload(
                path, url=args.url, api_key=args.api_key, on_progress=progress, version=version
            )
    except (ietf_client.IetfUploadError, OSError) as exc:
        raise SystemExit(f"mediasvc: upload failed: {exc}") from None
    file = result.file
    if file["sha256"] != expected:
        raise SystemExit(f"mediasvc: the server stored sha256 {file['sha256']}, not {expected}")
    print(f"uid:          {file['uid']}")
    print(f"download_url: {file['download_url']}")
    print(f"sha256:       {file['sha256']} (verified)")
    print(f"delete_token: {file['delete_token']}")
    print(f"resumed:      {result.resumes} time(s), upload {result.upload_url}")
    print(f"interop:      {version}")


def _download(args: argparse.Namespace) -> None:
    from mediasvc.client import ClientError, download

    try:
        path = download(
            args.uid, args.output, url=args.url, api_key=args.api_key, restart=args.restart
        )
    except (ClientError, OSError) as exc:
        raise SystemExit(f"mediasvc: download failed: {exc}") from None
    print(f"{path} (sha256 verified)")


def _hash_key(args: argparse.Namespace) -> None:
    from mediasvc.ids import hash_token

    print(hash_token(args.key))


def _migrate(_args: argparse.Namespace) -> None:
    from mediasvc import preflight
    from mediasvc.config import Settings

    settings = Settings()
    preflight.migrate(settings)
    print(f"database at head: {preflight.database_where(settings)}")


def _warn(message: str) -> None:
    print(f"mediasvc: warning: {message}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse, but a refused command line is one line too (not the usage, then the error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mediasvc: {message} (`{self.prog} --help` lists the options)\n")


def _port(text: str) -> int:
    """A TCP port for --port; 0 lets the system pick a free one."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port: use 1 to {MAX_PORT}")
    return port


MAX_PORT = 65535
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024  # mediasvc.tus_client's, without importing httpx here
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def _size(text: str) -> int:
    """A byte count with an optional binary unit: 1048576, 512K, 8M, 1G."""
    number, unit = text.upper().removesuffix("IB").removesuffix("B"), ""
    if number and number[-1] in _UNITS:
        number, unit = number[:-1], number[-1]
    if not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 1048576, 512K or 8M")
    return int(number) * _UNITS[unit]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mediasvc",
        description="Media ingest and delivery: the service (serve, worker, migrate) and its "
        "command-line client (upload, download). Settings come from MEDIASVC_* environment "
        "variables or a .env file (README.md, Configuration).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the HTTP API (uvicorn, or granian)", description="Run the HTTP API."
    )
    serve.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        default="uvicorn",
        help="the ASGI server; uvicorn measured faster here (README.md, Performance) "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 for every interface (default: %(default)s)",
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=8000,
        help="TCP port to listen on, 1 to 65535; 0 picks a free one (default: %(default)s)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes; each uses every core it can (default: %(default)s)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="proxies whose X-Forwarded-* headers are trusted, comma-separated "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--graceful-shutdown-s",
        type=int,
        default=None,
        metavar="SECONDS",
        help="how long in-flight requests may finish after SIGTERM "
        "(default: MEDIASVC_GRACEFUL_SHUTDOWN_S, else 30)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug", "trace"),
        help="the least severe log line written (default: %(default)s)",
    )
    serve.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="don't set GLIBC_TUNABLES (which keeps upload buffers in the heap)",
    )
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser(
        "worker",
        help="run the arq worker (push, probe, cleanup, reconcile)",
        description="Run the background jobs from Redis (MEDIASVC_REDIS_URL).",
    )
    worker.add_argument(
        "--check", action="store_true", help="health check of a running worker, then exit"
    )
    worker.set_defaults(handler=_worker)

    migrate = commands.add_parser(
        "migrate",
        help="bring the database schema to the latest",
        description="Bring the database (MEDIASVC_DATABASE_URL) to the latest schema.",
    )
    migrate.set_defaults(handler=_migrate)

    default_url = os.environ.get("MEDIASVC_URL", "http://127.0.0.1:8000")
    default_key = os.environ.get("MEDIASVC_API_KEY")
    url_help = "the service's base URL (env MEDIASVC_URL; default: %(default)s)"
    key_help = "API key, when the service needs one (env MEDIASVC_API_KEY)"

    up = commands.add_parser(
        "upload",
        help="upload a file, resumable (tus), with a progress bar",
        description="Upload a file (streamed, any size, with tus) and check the sha256 the "
        "service computed against the file's. Network errors are retried; a run that was "
        "stopped or killed continues where it stopped when run again with the same file "
        "(the upload's URL is kept in ~/.cache/mediasvc/uploads until it is verified).",
    )
    up.add_argument("file", type=Path, help="the file to upload")
    up.add_argument("--url", default=default_url, help=url_help)
    up.add_argument("--api-key", default=default_key, help=key_help)
    up.add_argument(
        "--max-downloads", type=int, metavar="N", help="allow N full downloads (default: no limit)"
    )
    up.add_argument(
        "--expires-in",
        type=int,
        metavar="SECONDS",
        help="delete the file this long after the upload (default: never)",
    )
    up.add_argument(
        "--parallel",
        type=_positive,
        default=1,
        metavar="N",
        help="send N parts at once and join them on the server (default: %(default)s)",
    )
    up.add_argument(
        "--chunk-size",
        type=_size,
        default=DEFAULT_CHUNK_BYTES,
        metavar="BYTES",
        help="at most this much per request, e.g. 8M or 1G: a cut costs at most one (default: 64M)",
    )
    up.add_argument(
        "--protocol",
        choices=("tus", "ietf"),
        default="tus",
        help="tus: tus 1.0.0 (resumable, --parallel, --chunk-size); ietf: the IETF resumable "
        "upload draft (interop 9), resumed by HEAD + PATCH after a break (default: %(default)s)",
    )
    up.add_argument(
        "--interop-version",
        type=int,
        choices=(8, 9),
        help="with --protocol ietf: the draft's interop version to speak (default: 9; 8 for a "
        "server that does not know 9 yet)",
    )
    up.set_defaults(handler=_upload)

    down = commands.add_parser(
        "download",
        help="download a file; resumes a partial one",
        description="Download a file and check its sha256. A partial file from an earlier run "
        "is resumed; if the result does not match, it is downloaded again from the start once.",
    )
    down.add_argument("uid", help="the file's UID (from the upload)")
    down.add_argument(
        "-o", "--output", type=Path, help="where to write it (default: the original name)"
    )
    down.add_argument("--url", default=default_url, help=url_help)
    down.add_argument("--api-key", default=default_key, help=key_help)
    down.add_argument(
        "--restart",
        action="store_true",
        help="ignore a partial file from an earlier run and download from the start",
    )
    down.set_defaults(handler=_download)

    hashed = commands.add_parser(
        "hash-key",
        help="print the sha256 to configure an API key",
        description="Print the sha256 of KEY, for MEDIASVC_API_KEYS.",
    )
    hashed.add_argument("key", help="the API key clients will send")
    hashed.set_defaults(handler=_hash_key)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from mediasvc.config import SETTINGS_ERRORS, describe_error
    from mediasvc.preflight import StartupError

    try:
        args.handler(args)
    except SETTINGS_ERRORS as exc:
        raise SystemExit(f"mediasvc: {describe_error(exc)}") from None
    except StartupError as exc:
        raise SystemExit(f"mediasvc: {exc}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
