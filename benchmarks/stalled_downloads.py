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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MiB = 1024 * 1024


def stats(pid: int) -> dict[str, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        "rss_mib": int(fields["VmRSS"].split()[0]) // 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def healthz_ms(base: str, count: int = 50) -> str:
    samples = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(count):
            start = time.perf_counter()
            client.get("/healthz").raise_for_status()
            samples.append((time.perf_counter() - start) * 1000)
    q = statistics.quantiles(samples, n=100)
    return f"healthz p50 {q[49]:.2f} ms p99 {q[98]:.2f} ms"


def report(label: str, pid: int, base: str) -> None:
    figures = stats(pid)
    print(
        f"{label:<34} RSS {figures['rss_mib']:>5} MiB  threads {figures['threads']:>3}  "
        f"fds {figures['fds']:>4}  {healthz_ms(base)}",
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
        rss = stats(pid)["rss_mib"]
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
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASVC_")}
        env.pop("GLIBC_TUNABLES", None)
        env["MEDIASVC_DOWNLOAD_SEND_TIMEOUT_S"] = str(args.send_timeout_s)
        env["MEDIASVC_MALLOC_TRIM_EVERY_S"] = "5"
        subprocess.run([sys.executable, "-m", "mediasvc", "migrate"], cwd=work, env=env, check=True)
        command = [sys.executable, "-m", "mediasvc", "serve", "--port", str(args.port)]
        command += ["--log-level", "warning"]
        if args.no_malloc_tuning:
            command.append("--no-malloc-tuning")
        log = (work / "server.log").open("wb")
        server = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=log)
        base = f"http://127.0.0.1:{args.port}"
        readers: list[socket.socket] = []
        try:
            for _ in range(100):
                try:
                    httpx.get(f"{base}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            data = os.urandom(MiB) * args.size_mib
            with httpx.Client(base_url=base, timeout=300) as client:
                uid = client.post("/api/v1/files/stream", content=data).json()["uid"]
            del data
            report("idle", server.pid, base)
            started = time.monotonic()
            readers = [stalled_reader(args.port, uid) for _ in range(args.readers)]
            settle(server.pid)
            report(f"{args.readers} stalled Range readers", server.pid, base)
            time.sleep(max(0.0, args.close_after_s - (time.monotonic() - started)))
            report("just before the clients close", server.pid, base)
            for sock in readers:
                sock.close()
            readers = []
            time.sleep(12)  # two trim periods
            report("after the clients closed", server.pid, base)
        finally:
            for sock in readers:
                sock.close()
            server.terminate()
            server.wait()
            log.close()
            dropped = (work / "server.log").read_text().count("the client read nothing")
            print(f"downloads dropped by the send timeout: {dropped}")


if __name__ == "__main__":
    main()
