"""Events and imports: how soon a webhook follows its change, and what an import costs against
a plain upload of the same file.

Starts `mediasvc serve` on its embedded defaults (SQLite, in-process jobs, fsync on) in a
temporary directory with a webhook receiver in this process (it verifies every request with
the standardwebhooks library) and a file source on loopback.

1. Event latency: ``--events`` uploads, one after the other; the receiver subscribes to
   ``file.created`` and records, per event, its arrival minus the event's ``timestamp`` (taken in
   the transaction of the change). The pushes and probes of those uploads run meanwhile.
2. Import vs upload: ``--rounds`` rounds of a ``--size-mib`` file, once by ``curl -T`` and once
   by ``POST /api/v1/files/import`` from a Python file server on 127.0.0.1 (allowlisted),
   polled until done; the median of the ratios of the two throughputs.

    .venv/bin/python benchmarks/events_imports.py [--events 1000] [--size-mib 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import secrets
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from bench.base import MB, MiB, log
from bench.curl import curl
from bench.latency import percentiles_text
from bench.standalone import serve_env, serve_mediasvc
from bench.stats import median_ratio
from bench.testfiles import write_repeating
from standardwebhooks.webhooks import Webhook


class Receiver(ThreadingHTTPServer):
    """Webhooks on 127.0.0.1: each verified, its latency (arrival − event timestamp) kept."""

    def __init__(self, secret: str) -> None:
        self.hook = Webhook(secret)
        self.latencies_ms: list[float] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                arrived = time.time()
                event = receiver.hook.verify(body, dict(self.headers))
                changed = datetime.fromisoformat(event["timestamp"]).timestamp()
                with receiver.lock:
                    receiver.latencies_ms.append((arrived - changed) * 1000)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks"


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def file_server(root: Path) -> ThreadingHTTPServer:
    """The import's source: Python's file server (sends with sendfile), on 127.0.0.1."""
    handler = functools.partial(QuietFiles, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    return server


def event_latencies(base: str, receiver: Receiver, count: int) -> list[float]:
    with httpx.Client(base_url=base, timeout=60) as client:
        for i in range(count):
            response = client.post("/api/v1/files/stream", content=f"event {i}".encode())
            response.raise_for_status()
    deadline = time.monotonic() + 120
    while len(receiver.latencies_ms) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(receiver.latencies_ms)} of {count} events arrived")
        time.sleep(0.05)
    return receiver.latencies_ms[:count]


def import_seconds(base: str, url: str) -> float:
    with httpx.Client(base_url=base, timeout=60) as client:
        started = time.perf_counter()
        uid = client.post("/api/v1/files/import", json={"url": url}).json()["uid"]
        while (state := client.get(f"/api/v1/imports/{uid}").json())["status"] == "importing":
            time.sleep(0.01)
        took = time.perf_counter() - started
        if state["status"] != "done":
            raise RuntimeError(f"import failed: {state}")
        return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8793)
    args = parser.parse_args()

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    receiver = Receiver(secret)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as tmp:
        work = Path(tmp)
        (work / "source").mkdir()
        big = work / "source" / "big.bin"
        write_repeating(big, args.size_mib * MiB, os.urandom(MiB))
        source = file_server(work / "source")
        threading.Thread(target=source.serve_forever, daemon=True).start()
        settings = {
            "MEDIASVC_WEBHOOKS": json.dumps(
                [{"url": receiver.url, "secret": secret, "events": ["file.created"]}]
            ),
            "MEDIASVC_IMPORT_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
        }
        with serve_mediasvc(work, port=args.port, env=serve_env(settings)) as server:
            log(f"{args.events} uploads, one file.created each")
            latencies = event_latencies(server.base, receiver, args.events)
            uploads: list[float] = []
            imports: list[float] = []
            for rnd in range(args.rounds):
                log(f"round {rnd + 1}: upload and import of {args.size_mib} MiB")
                info = curl(["-T", str(big), f"{server.base}/api/v1/files/stream/"])
                uploads.append(float(info["time_total"]))
                imports.append(
                    import_seconds(
                        server.base, f"http://127.0.0.1:{source.server_address[1]}/big.bin"
                    )
                )
        source.shutdown()
    receiver.shutdown()

    print(
        f"event latency, change → receiver ({len(latencies)} file.created events): "
        f"{percentiles_text(latencies, (50, 99), digits=1, with_max=True)}"
    )
    size = args.size_mib * MiB
    for name, seconds in (("upload (curl -T)", uploads), ("import (URL)", imports)):
        rates = ", ".join(f"{size / s / MB:.0f}" for s in seconds)
        print(f"{name:18s} {args.size_mib} MiB: {rates} MB/s")
    ratio = median_ratio([size / s for s in imports], [size / s for s in uploads])
    print(f"import / upload throughput, median of {args.rounds} rounds: {ratio:.2f}")


if __name__ == "__main__":
    main()
