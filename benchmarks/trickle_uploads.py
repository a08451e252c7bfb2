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
import tempfile
import time
from pathlib import Path

from bench.base import MiB
from bench.latency import LatencyProbe, percentiles_text
from bench.procfs import figures
from bench.standalone import serve_env, serve_mediasvc

SEND_PIECE_BYTES = 256 * 1024


class Sampler(LatencyProbe):
    """/healthz latency every 50 ms, and the server's peak figures every 0.5 s."""

    def __init__(self, base: str, pid: int) -> None:
        super().__init__(f"{base}/healthz", interval_s=0.05)
        self.pid = pid
        self.peak = figures(pid)
        self._next_figures_s = 0.0

    def tick(self) -> None:
        if time.monotonic() >= self._next_figures_s:
            self.peak = self.peak.peak(figures(self.pid))
            self._next_figures_s = time.monotonic() + 0.5


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
        env = serve_env(inherit_settings=True)  # MEDIASVC_* given to this script apply
        serve_args = ("--log-level", "warning", "--graceful-shutdown-s", "1")
        with serve_mediasvc(work, port=args.port, env=env, args=serve_args) as server:
            idle = figures(server.pid)
            sampler = Sampler(server.base, server.pid)
            sampler.start()
            outcomes = asyncio.run(clients(args.port, args))
            sampler.stop()
            last = figures(server.pid)

    print(f"{args.connections} connections, ~4 MiB then 1 byte / {args.trickle_every_s:g} s,")
    print(f"  {args.duration_s:g} s; answers: {dict(sorted(outcomes.items()))}")
    for label, (rss, threads, fds) in (("idle", idle), ("peak", sampler.peak), ("end", last)):
        print(f"{label:>5}: RSS {rss / MiB:7.1f} MiB  threads {threads:5d}  fds {fds:5d}")
    print(
        f"/healthz ({len(sampler.latencies_ms)} answered, {sampler.failures} failed): "
        + percentiles_text(sampler.latencies_ms, with_max=True)
    )


if __name__ == "__main__":
    main()
