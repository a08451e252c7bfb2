"""Does a big upload stall other requests? Metadata GET latency, idle vs during a 2 GiB `curl -T`.

Starts `mediasvc serve` on its embedded defaults (SQLite, fsync on) in a temporary directory,
measures metadata GETs on an idle server, then again while curl uploads a 2 GiB file, and prints
the percentiles and the upload's throughput. Timing lives here, never in the test suite.

    .venv/bin/python benchmarks/loop_latency.py [--size-mib 2048]
"""

from __future__ import annotations

import argparse
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


def percentiles(samples_ms: list[float]) -> str:
    q = statistics.quantiles(samples_ms, n=100)
    return (
        f"p50 {q[49]:.2f} ms  p95 {q[94]:.2f} ms  p99 {q[98]:.2f} ms  max {max(samples_ms):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--port", type=int, default=8791)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASVC_")}
        subprocess.run([sys.executable, "-m", "mediasvc", "migrate"], cwd=work, env=env, check=True)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mediasvc",
                "serve",
                "--port",
                str(args.port),
                "--log-level",
                "warning",
            ],
            cwd=work,
            env=env,
        )
        base = f"http://127.0.0.1:{args.port}"
        try:
            for _ in range(100):
                try:
                    httpx.get(f"{base}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            big = work / "big.bin"
            block = os.urandom(MiB)
            with big.open("wb") as out:
                for _ in range(args.size_mib):
                    out.write(block)
            with httpx.Client(base_url=base) as client:
                uid = client.post("/api/v1/files/stream", content=b"probe").json()["uid"]

                def sample(stop: threading.Event | None, count: int) -> list[float]:
                    samples: list[float] = []
                    while (stop is None and len(samples) < count) or (stop and not stop.is_set()):
                        start = time.perf_counter()
                        client.get(f"/api/v1/files/{uid}/metadata").raise_for_status()
                        samples.append((time.perf_counter() - start) * 1000)
                        time.sleep(0.005)
                    return samples

                idle = sample(None, 300)
                done = threading.Event()
                result: dict[str, float] = {}

                def upload() -> None:
                    start = time.perf_counter()
                    subprocess.run(
                        [
                            "curl",
                            "-sS",
                            "-o",
                            "/dev/null",
                            "-T",
                            str(big),
                            f"{base}/api/v1/files/stream/",
                        ],
                        check=True,
                    )
                    result["seconds"] = time.perf_counter() - start
                    done.set()

                thread = threading.Thread(target=upload)
                thread.start()
                busy = sample(done, 0)
                thread.join()
        finally:
            server.terminate()
            server.wait()

    print(f"metadata GET, idle server         ({len(idle)} requests): {percentiles(idle)}")
    print(
        f"metadata GET, during a {args.size_mib} MiB upload ({len(busy)} requests): "
        f"{percentiles(busy)}"
    )
    print(
        f"upload: {args.size_mib} MiB in {result['seconds']:.2f} s = "
        f"{args.size_mib * MiB / result['seconds'] / 1e6:.0f} MB/s"
    )


if __name__ == "__main__":
    main()
