"""A resumable upload's PATCH through another node (B forwards to the owner A) against the same
PATCH sent to A directly: two `mediasvc serve` nodes on one database, interleaved rounds, ratios
only, and B's peak RSS growth while it forwards (constant memory: it must not grow with the size).

Per round, an upload is created on A (IETF draft, `Upload-Complete: ?0`, its length told), then
its whole body goes in one `curl -X PATCH -T` (`Upload-Complete: ?1`), to A or to B.

    .venv/bin/python benchmarks/upload_forwarding.py [--size-mib 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
from bench.base import MB, MiB
from bench.children import Child
from bench.curl import curl
from bench.procfs import reset_peak, status_kb
from bench.standalone import serve_env, serve_mediasvc
from bench.stats import median_ratio, round_order
from bench.testfiles import write_repeating

V = ["-H", "Upload-Draft-Interop-Version: 8"]


def create(base: str, length: int) -> str:
    response = httpx.post(
        f"{base}/api/v1/uploads",
        headers={
            "Upload-Draft-Interop-Version": "8",
            "Upload-Complete": "?0",
            "Upload-Length": str(length),
        },
        timeout=30,
    )
    response.raise_for_status()
    return str(response.headers["location"])


def patch(url: str, path: Path) -> float:
    """The whole file in one PATCH at offset 0; its seconds."""
    info = curl(
        [*V, "-X", "PATCH", "-T", str(path), "-H", "Upload-Complete: ?1",
         "-H", "Upload-Offset: 0", "-H", "Content-Type: application/partial-upload", url],
        timeout=1800,
    )  # fmt: skip
    if int(info["http_code"]) != 201:
        raise RuntimeError(f"PATCH answered {info['http_code']}")
    return float(info["time_total"])


@contextlib.contextmanager
def node(work: Path, name: str, port: int, database_url: str) -> Iterator[Child]:
    home = work / name
    home.mkdir()
    env = serve_env(
        {
            "MEDIASVC_DATABASE_URL": database_url,
            "MEDIASVC_INTERNAL_URL": f"http://127.0.0.1:{port}",
            "MEDIASVC_INTERNAL_SECRET": "benchmark-internal-secret-0123456789abcdef",
        }
    )
    with serve_mediasvc(home, port=port, env=env, ready_timeout_s=90) as server:
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as tmp:
        work = Path(tmp)
        source = work / "upload.bin"
        write_repeating(source, args.size_mib * MiB, os.urandom(MiB))
        database = f"sqlite+aiosqlite:///{work}/shared.sqlite"
        port_a, port_b = free_port(), free_port()
        with node(work, "a", port_a, database) as a, node(work, "b", port_b, database) as b:
            base_a, base_b = f"http://127.0.0.1:{a.port}", f"http://127.0.0.1:{b.port}"
            seconds: dict[str, list[float]] = {"direct": [], "forwarded": []}
            b_peak_mb: list[float] = []  # growth over its RSS before the PATCH
            b_hwm_mb: list[float] = []  # its peak RSS, all told
            for round_no in range(args.rounds):
                for kind in round_order(list(seconds), round_no):
                    url = create(base_a, source.stat().st_size)
                    if kind == "forwarded":
                        url = url.replace(base_a, base_b)
                        reset_peak(b.pid)
                        before = status_kb(b.pid, "VmRSS")
                        seconds[kind].append(patch(url, source))
                        hwm = status_kb(b.pid, "VmHWM")
                        b_peak_mb.append(max(0, hwm - before) / 1000)
                        b_hwm_mb.append(hwm / 1000)
                    else:
                        seconds[kind].append(patch(url, source))
                    for stored in (work / "a" / "data" / "media").glob("??/*"):
                        stored.unlink()  # keep the disk from filling up
                rates = "  ".join(
                    f"{k} {source.stat().st_size / MB / v[-1]:.0f} MB/s" for k, v in seconds.items()
                )
                print(f"round {round_no + 1}: {rates}")
        ratio = median_ratio(seconds["direct"], seconds["forwarded"])
        print(
            f"forwarded: {ratio:.2f} x direct (speed; target >= 0.7); B while forwarding: "
            f"peak RSS {max(b_hwm_mb):.0f} MB, growth {max(b_peak_mb):.1f} MB (max over rounds)"
        )


if __name__ == "__main__":
    main()
