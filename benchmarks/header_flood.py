"""Hostile header blocks against `mediasvc serve`: how long a huge one takes to refuse, what it
costs the server, whether /healthz stalls meanwhile, and how long slowloris connections live.

Starts `mediasvc serve` on its embedded defaults (SQLite) in a temporary directory, then:
- sends a header block of --flood-mib (one huge header, then many tiny ones) until the server
  closes, timing the refusal and sampling /healthz on another connection meanwhile;
- opens --slow connections that send a header line every 0.5 s and reports when they are closed.
Timing lives here, never in the test suite.

    .venv/bin/python benchmarks/header_flood.py [--flood-mib 200] [--slow 500]
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import tempfile
import time
from pathlib import Path

from bench.base import MiB
from bench.latency import LatencyProbe
from bench.procfs import figures
from bench.standalone import serve_env, serve_mediasvc


def flood(port: int, start: bytes, filler: bytes, limit_bytes: int) -> tuple[int, float, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        began = time.perf_counter()
        sent = 0
        try:
            sock.sendall(start)
            while sent < limit_bytes:
                sock.sendall(filler)
                sent += len(filler)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass
        try:
            answer = sock.recv(200)
        except OSError:
            answer = b""
        return sent, time.perf_counter() - began, answer.split(b"\r\n", 1)[0]


def slowloris(port: int, count: int, bound_s: float) -> tuple[int, float]:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
    began = time.perf_counter()
    open_ = set(socks)
    while open_ and time.perf_counter() - began < bound_s:
        for sock in list(open_):
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                open_.discard(sock)
        readable, _, _ = select.select(list(open_), [], [], 0.5)
        for sock in readable:
            try:
                if not sock.recv(65536):
                    open_.discard(sock)
            except OSError:
                open_.discard(sock)
    for sock in socks:
        sock.close()
    return len(open_), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flood-mib", type=int, default=200)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--header-timeout-s", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=8792)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as tmp:
        env = serve_env({"MEDIASVC_HEADER_TIMEOUT_S": str(args.header_timeout_s)})
        args_ = ("--log-level", "error")
        with serve_mediasvc(Path(tmp), port=args.port, env=env, args=args_) as server:
            shapes = {
                "one huge header": (b"GET / HTTP/1.1\r\nX-Huge: ", b"a" * 65536),
                "many tiny headers": (b"GET / HTTP/1.1\r\n", b"X-A: b\r\n" * 8192),
            }
            for name, (start, filler) in shapes.items():
                rss_before = figures(server.pid).rss_bytes
                probe = LatencyProbe(f"{server.base}/healthz", interval_s=0.01)
                probe.start()
                probe.wait_running()  # the sampler is up before the flood starts
                sent, took_s, status = flood(args.port, start, filler, args.flood_mib * MiB)
                probe.stop()
                growth = (figures(server.pid).rss_bytes - rss_before) / MiB
                print(
                    f"{args.flood_mib} MiB, {name}: {status.decode()!r} after {took_s:.3f} s, "
                    f"client sent {sent / MiB:.1f} MiB, server RSS {growth:+.1f} MiB, "
                    f"/healthz meanwhile: {len(probe.latencies_ms)} GETs "
                    f"({probe.failures} failed), the slowest "
                    f"{max(probe.latencies_ms, default=0):.1f} ms"
                )
            left, took_s = slowloris(args.port, args.slow, bound_s=10 * args.header_timeout_s)
            print(
                f"{args.slow} slowloris connections (a header line every 0.5 s, header timeout "
                f"{args.header_timeout_s:g} s): {args.slow - left} closed by the server, "
                f"{left} still open after {took_s:.1f} s"
            )


if __name__ == "__main__":
    main()
