"""1,000 trickling uploads (issue 11, item 2): what they cost the server, and /healthz meanwhile.

Starts `mediasvc serve` on its embedded defaults (SQLite, one process) in a temporary directory.
Then `--connections` clients each send the head of an upload (`Content-Length` 8 MiB) and ~4 MiB
of body, then one byte every `--trickle-every-s`, for `--duration-s`. Meanwhile /healthz is asked
every 50 ms on its own connection, and the server's RSS, threads and open fds are sampled.
Prints the answers the clients got (503 before the body for those over `max_uploads_in_flight`,
408 for the admitted ones once their rate falls below `body_min_rate_bytes_per_s`), the peak and
last figures, and the /healthz latency percentiles. Timing lives here, never in the tests.

    .venv/bin/python benchmarks/trickle_uploads.py [--connections 1000] [--duration-s 90]

Extra `MEDIASVC_*` settings can be given in the environment (e.g. MEDIASVC_MAX_UPLOADS_IN_FLIGHT).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

MiB = 1024 * 1024
SEND_PIECE_BYTES = 256 * 1024


def figures(pid: int) -> tuple[int, int, int]:
    """(RSS bytes, threads, open fds) of the server."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads, len(os.listdir(f"/proc/{pid}/fd"))


class Sampler(threading.Thread):
    """/healthz latency every 50 ms, and the server's figures every 0.5 s."""

    def __init__(self, base: str, pid: int) -> None:
        super().__init__(daemon=True)
        self.base, self.pid = base, pid
        self.latencies_ms: list[float] = []
        self.health_failures = 0
        self.peak = (0, 0, 0)
        self.stopping = threading.Event()

    def run(self) -> None:
        next_figures = 0.0
        with httpx.Client(timeout=30) as http:
            while not self.stopping.is_set():
                started = time.perf_counter()
                try:
                    ok = http.get(f"{self.base}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
                self.health_failures += not ok
                if time.monotonic() >= next_figures:
                    now = figures(self.pid)
                    self.peak = (
                        max(self.peak[0], now[0]),
                        max(self.peak[1], now[1]),
                        max(self.peak[2], now[2]),
                    )
                    next_figures = time.monotonic() + 0.5
                self.stopping.wait(0.05)


async def one_client(
    port: int, body: bytes, args: argparse.Namespace, outcomes: collections.Counter[str]
) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        outcomes["connect failed"] += 1
        return
    head = (
        "PUT /api/v1/files/stream/trickle.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Length: {8 * MiB}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()

    async def send() -> None:
        for start in range(0, len(body), SEND_PIECE_BYTES):
            writer.write(body[start : start + SEND_PIECE_BYTES])
            await writer.drain()
        while True:
            await asyncio.sleep(args.trickle_every_s)
            writer.write(b"x")
            await writer.drain()

    # As curl does for large bodies: the head, then the body once the server says 100 Continue
    # (a refusal comes instead, before any body byte).
    sender: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(args.duration_s):
            writer.write(head)
            status_line = await reader.readline()
            if status_line.startswith(b"HTTP/1.1 100"):
                await reader.readline()  # the blank line after the interim response
                sender = asyncio.create_task(send())
                status_line = await reader.readline()
        outcomes[status_line.split(b" ")[1].decode() if status_line else "closed"] += 1
    except TimeoutError:
        outcomes["still open"] += 1
    except OSError as exc:
        outcomes[type(exc).__name__] += 1
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
        writer.close()


async def clients(port: int, args: argparse.Namespace) -> collections.Counter[str]:
    body = os.urandom(4 * MiB - 4096)
    outcomes: collections.Counter[str] = collections.Counter()
    tasks = []
    for _ in range(args.connections):
        tasks.append(asyncio.create_task(one_client(port, body, args, outcomes)))
        await asyncio.sleep(0.002)  # 500 new connections/s: no SYN backlog overflow
    await asyncio.gather(*tasks)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--duration-s", type=float, default=90.0)
    parser.add_argument("--trickle-every-s", type=float, default=40.0)
    parser.add_argument("--port", type=int, default=8798)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as tmp:
        work = Path(tmp)
        env = dict(os.environ)
        subprocess.run(
            [sys.executable, "-m", "mediasvc", "migrate"],
            cwd=work,
            env=env,
            check=True,
            capture_output=True,
        )
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "mediasvc", "serve", "--port", str(args.port)),
                *("--log-level", "warning", "--graceful-shutdown-s", "1"),
            ],
            cwd=work,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{args.port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            idle = figures(server.pid)
            sampler = Sampler(base, server.pid)
            sampler.start()
            outcomes = asyncio.run(clients(args.port, args))
            sampler.stopping.set()
            sampler.join()
            last = figures(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)

    q = statistics.quantiles(sampler.latencies_ms, n=100)
    print(f"{args.connections} connections, ~4 MiB then 1 byte / {args.trickle_every_s:g} s,")
    print(f"  {args.duration_s:g} s; answers: {dict(sorted(outcomes.items()))}")
    for label, (rss, threads, fds) in (("idle", idle), ("peak", sampler.peak), ("end", last)):
        print(f"{label:>5}: RSS {rss / MiB:7.1f} MiB  threads {threads:5d}  fds {fds:5d}")
    print(
        f"/healthz ({len(sampler.latencies_ms)} requests, {sampler.health_failures} failed): "
        f"p50 {q[49]:.1f} ms  p99 {q[98]:.1f} ms  max {max(sampler.latencies_ms):.1f} ms"
    )


if __name__ == "__main__":
    main()
