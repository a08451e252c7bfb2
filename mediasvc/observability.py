"""What an operator watches: Prometheus metrics, JSON logs with a request id.

``ObservabilityMiddleware`` is pure ASGI (no BaseHTTPMiddleware around streaming bodies): it
counts body bytes as they pass, times uploads and downloads, keeps the in-flight gauge, gives
every request an id (``X-Request-ID``, taken from the client when it is sane) and writes one
JSON access line per request. Metrics live in a registry per app; with several uvicorn workers
``mediasvc serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` merges them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mediasvc.server import ZEROCOPY_EXTENSION, zerocopy_descriptor

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
access_logger = logging.getLogger("mediasvc.access")

COUNTER_FLUSH_BYTES = 8 * 1024 * 1024
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_DOWNLOAD_PATH = re.compile(r"^/api/v1/files/[a-z2-7]{26}$")
_UPLOAD_PATHS = re.compile(r"^/api/v1/files(/stream(/[^/]*)?)?$")
# Seconds: a metadata read to a multi-GB transfer.
_DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.bytes_in = Counter("mediasvc_bytes_received", "Upload body bytes received", registry=r)
        self.bytes_out = Counter("mediasvc_bytes_sent", "Download body bytes sent", registry=r)
        self.bytes_out_zerocopy = Counter(
            "mediasvc_bytes_sent_zerocopy",
            "Download body bytes of the above the server sent from the file itself (zero copy)",
            registry=r,
        )
        self.uploads = Counter("mediasvc_uploads", "Uploads by status", ["status"], registry=r)
        self.downloads = Counter(
            "mediasvc_downloads", "Downloads by status", ["status"], registry=r
        )
        self.upload_seconds = Histogram(
            "mediasvc_upload_duration_seconds",
            "Upload duration by status",
            ["status"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.download_seconds = Histogram(
            "mediasvc_download_duration_seconds",
            "Download duration by status",
            ["status"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.uploads_in_flight = Gauge(
            "mediasvc_uploads_in_flight",
            "Uploads being received",
            registry=r,
            multiprocess_mode="livesum",
        )
        # Read at scrape time from the queue, the database and the disk (see api/metrics.py).
        self.push_queue_depth = Gauge(
            "mediasvc_push_queue_depth",
            "Jobs waiting in the queue",
            registry=r,
            multiprocess_mode="max",
        )
        self.push_failed_files = Gauge(
            "mediasvc_push_failed_files",
            "Files whose cloud push failed for good",
            registry=r,
            multiprocess_mode="max",
        )
        # Resumable uploads (mediasvc/resumable/): this class is the engine's Observer.
        self.resumable_writing = Gauge(
            "mediasvc_resumable_uploads_in_progress",
            "Requests writing a resumable upload right now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.resumable_bytes = Counter(
            "mediasvc_resumable_bytes_received",
            "Bytes kept by resumable upload requests",
            registry=r,
        )
        self.resumptions = Counter(
            "mediasvc_resumable_resumptions",
            "Requests that continued a resumable upload past its first byte",
            registry=r,
        )
        self.resumable_uploads = Gauge(
            "mediasvc_resumable_uploads",
            "Unfinished resumable uploads: open, or expired and waiting for cleanup",
            ["state"],
            registry=r,
            multiprocess_mode="max",
        )
        self.webhook_deliveries = Gauge(
            "mediasvc_webhook_deliveries",
            "Webhook deliveries by outcome (pending, delivered, dead)",
            ["status"],
            registry=r,
            multiprocess_mode="max",
        )
        self.oldest_undelivered_event_age = Gauge(
            "mediasvc_oldest_undelivered_event_age_seconds",
            "Age of the oldest event still owed to an endpoint; 0 when none is",
            registry=r,
            multiprocess_mode="max",
        )
        self.disk_bytes = Gauge(
            "mediasvc_local_disk_bytes",
            "Media disk usage",
            ["kind"],
            registry=r,
            multiprocess_mode="max",
        )

    def writing(self, delta: int) -> None:
        self.resumable_writing.inc(delta)

    def received(self, n_bytes: int) -> None:
        self.resumable_bytes.inc(n_bytes)

    def resumed(self) -> None:
        self.resumptions.inc()


BODY_MESSAGES = frozenset({"http.response.body", ZEROCOPY_EXTENSION})


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        method, path = scope["method"], scope["path"]
        kind = _classify(method, path)
        metrics = self.metrics
        status = 500
        sent = 0
        received = 0
        started = time.perf_counter()

        # Byte counters are published every few MiB, not per chunk: a locked increment per
        # 64 KiB chunk was a measured share of the event loop's time on fast uploads.
        counted_in = counted_out = 0

        async def counting_receive() -> Message:
            nonlocal received, counted_in
            message = await receive()
            if message["type"] == "http.request" and kind == "upload":
                received += len(message.get("body", b""))
                if received - counted_in >= COUNTER_FLUSH_BYTES:
                    metrics.bytes_in.inc(received - counted_in)
                    counted_in = received
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal status, sent, counted_out
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            elif kind == "download" and status < 300 and message["type"] in BODY_MESSAGES:
                if message["type"] == ZEROCOPY_EXTENSION:
                    # A whole range per message: count what the server took (the file's
                    # position moved), not what was asked, which a client that went away cut
                    # short.
                    start = _file_position(message)
                    try:
                        await send(message)
                    finally:
                        took = _taken(message, start)
                        sent += took
                        metrics.bytes_out_zerocopy.inc(took)
                else:
                    await send(message)
                    sent += len(message.get("body", b""))
                if sent - counted_out >= COUNTER_FLUSH_BYTES:
                    metrics.bytes_out.inc(sent - counted_out)
                    counted_out = sent
                return
            await send(message)

        if kind == "upload":
            metrics.uploads_in_flight.inc()
        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            metrics.bytes_in.inc(received - counted_in)
            metrics.bytes_out.inc(sent - counted_out)
            elapsed_s = time.perf_counter() - started
            if kind == "upload":
                metrics.uploads_in_flight.dec()
                metrics.uploads.labels(str(status)).inc()
                metrics.upload_seconds.labels(str(status)).observe(elapsed_s)
            elif kind == "download":
                metrics.downloads.labels(str(status)).inc()
                metrics.download_seconds.labels(str(status)).observe(elapsed_s)
            access_logger.info(
                "%s %s %s",
                method,
                path,
                status,
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(elapsed_s * 1000, 2),
                    "bytes_in": received,
                    "bytes_out": sent,
                },
            )
            request_id_var.reset(token)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _SANE_REQUEST_ID.match(candidate) else None
    return None


def _classify(method: str, path: str) -> str | None:
    if method in ("POST", "PUT") and _UPLOAD_PATHS.match(path):
        return "upload"
    if method == "GET" and _DOWNLOAD_PATH.match(path):
        return "download"
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and any extras."""

    # uvicorn adds color_message (ANSI codes) to its records: not for a JSON log.
    _STANDARD = frozenset({*vars(logging.makeLogRecord({})), "message", "asctime", "color_message"})
    converter = time.gmtime  # type: ignore[assignment]  # typeshed picks the 0-arg overload

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (request_id := request_id_var.get()) is not None:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's log_config: everything as JSON lines on stderr (uvicorn's own access log off)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"level": level.upper()},
            "uvicorn.access": {"level": "WARNING"},
            "alembic": {"level": "WARNING"},  # the start-up schema check is not news
        },
    }


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def _file_position(message: Message) -> int | None:
    """A zero-copy message's file position before it is sent (None when it gives an offset)."""
    if message.get("offset") is not None:
        return None
    return os.lseek(zerocopy_descriptor(message), 0, os.SEEK_CUR)


def _taken(message: Message, start: int | None) -> int:
    """What the server took of a zero-copy message: how far the file's position moved, or, sent
    from an offset (which says nothing of a cut), what was asked."""
    if start is None:
        return int(message.get("count") or 0)
    try:
        return os.lseek(zerocopy_descriptor(message), 0, os.SEEK_CUR) - start
    except (OSError, ValueError):  # closed on an error path: the error is what matters
        return 0
