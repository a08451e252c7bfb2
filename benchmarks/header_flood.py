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
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

MiB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


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


def healthz_while(port: int, stop: threading.Event, samples_ms: list[float]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
        while not stop.is_set():
            began = time.perf_counter()
            http.get("/healthz")
            samples_ms.append((time.perf_counter() - began) * 1000)
            time.sleep(0.01)


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
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASVC_")}
        env["MEDIASVC_HEADER_TIMEOUT_S"] = str(args.header_timeout_s)
        subprocess.run([sys.executable, "-m", "mediasvc", "migrate"], cwd=work, env=env, check=True)
        command = ["serve", "--port", str(args.port), "--log-level", "error"]
        server = subprocess.Popen([sys.executable, "-m", "mediasvc", *command], cwd=work, env=env)
        try:
            for _ in range(100):
                try:
                    httpx.get(f"http://127.0.0.1:{args.port}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            shapes = {
                "one huge header": (b"GET / HTTP/1.1\r\nX-Huge: ", b"a" * 65536),
                "many tiny headers": (b"GET / HTTP/1.1\r\n", b"X-A: b\r\n" * 8192),
            }
            for name, (start, filler) in shapes.items():
                rss_before = rss_bytes(server.pid)
                samples_ms: list[float] = []
                stop = threading.Event()
                sampler = threading.Thread(target=healthz_while, args=(args.port, stop, samples_ms))
                sampler.start()
                while not samples_ms:  # the sampler is up before the flood starts
                    time.sleep(0.01)
                samples_ms.clear()
                sent, took_s, status = flood(args.port, start, filler, args.flood_mib * MiB)
                stop.set()
                sampler.join()
                growth = (rss_bytes(server.pid) - rss_before) / MiB
                print(
                    f"{args.flood_mib} MiB, {name}: {status.decode()!r} after {took_s:.3f} s, "
                    f"client sent {sent / MiB:.1f} MiB, server RSS {growth:+.1f} MiB, "
                    f"/healthz meanwhile: {len(samples_ms)} GETs, the slowest "
                    f"{max(samples_ms, default=0):.1f} ms"
                )
            left, took_s = slowloris(args.port, args.slow, bound_s=10 * args.header_timeout_s)
            print(
                f"{args.slow} slowloris connections (a header line every 0.5 s, header timeout "
                f"{args.header_timeout_s:g} s): {args.slow - left} closed by the server, "
                f"{left} still open after {took_s:.1f} s"
            )
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
