"""What do downloads that stop reading cost? RSS, threads, fds and /healthz latency.

Starts `mediasvc serve` on its embedded defaults (SQLite) in a temporary directory, uploads one
file, then opens N connections that each ask for `Range: bytes=0-` and never read (a small
receive buffer, like a paused player). Prints the server's figures idle, with the readers
stalled, and after they are gone: either closed by the clients (`--close-after-s`) or dropped
by the server's send timeout (`--send-timeout-s` shorter than `--close-after-s`).

    .venv/bin/python benchmarks/stalled_downloads.py [--readers 200] [--size-mib 256]
        [--send-timeout-s 60] [--close-after-s 20] [--no-malloc-tuning]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import httpx
from bench.base import MiB
from bench.latency import percentiles_text, sample_ms
from bench.procfs import figures
from bench.standalone import serve_env, serve_mediasvc


def report(label: str, pid: int, base: str) -> None:
    rss_bytes, threads, fds = figures(pid)
    healthz = percentiles_text(sample_ms(f"{base}/healthz", 50), digits=2, sep=" ")
    print(
        f"{label:<34} RSS {rss_bytes // MiB:>5} MiB  threads {threads:>3}  "
        f"fds {fds:>4}  healthz {healthz}",
        flush=True,
    )


def stalled_reader(port: int, uid: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", port))
    request = f"GET /api/v1/files/{uid} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-\r\n\r\n"
    sock.sendall(request.encode())
    return sock


def settle(pid: int, rounds: int = 5) -> None:
    """Wait until RSS stops growing (the server filled what it will fill)."""
    last = -1
    for _ in range(60):
        time.sleep(1)
        rss = figures(pid).rss_bytes // MiB
        if abs(rss - last) <= 2:
            rounds -= 1
            if rounds == 0:
                return
        last = rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readers", type=int, default=200)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--send-timeout-s", type=float, default=60)
    parser.add_argument("--close-after-s", type=float, default=20)
    parser.add_argument("--port", type=int, default=8793)
    parser.add_argument("--no-malloc-tuning", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as tmp:
        work = Path(tmp)
        env = serve_env(
            {
                "MEDIASVC_DOWNLOAD_SEND_TIMEOUT_S": str(args.send_timeout_s),
                "MEDIASVC_MALLOC_TRIM_EVERY_S": "5",
            }
        )
        serve_args = ["--log-level", "warning"]
        if args.no_malloc_tuning:
            serve_args.append("--no-malloc-tuning")
        log = work / "server.log"
        readers: list[socket.socket] = []
        try:
            with serve_mediasvc(work, port=args.port, env=env, args=serve_args) as server:
                data = os.urandom(MiB) * args.size_mib
                with httpx.Client(base_url=server.base, timeout=300) as client:
                    uid = client.post("/api/v1/files/stream", content=data).json()["uid"]
                del data
                report("idle", server.pid, server.base)
                started = time.monotonic()
                readers = [stalled_reader(args.port, uid) for _ in range(args.readers)]
                settle(server.pid)
                report(f"{args.readers} stalled Range readers", server.pid, server.base)
                time.sleep(max(0.0, args.close_after_s - (time.monotonic() - started)))
                report("just before the clients close", server.pid, server.base)
                for sock in readers:
                    sock.close()
                readers = []
                time.sleep(12)  # two trim periods
                report("after the clients closed", server.pid, server.base)
        finally:
            for sock in readers:
                sock.close()
            if log.exists():
                dropped = log.read_text().count("the client read nothing")
                print(f"downloads dropped by the send timeout: {dropped}")


if __name__ == "__main__":
    main()
