"""Does a big upload stall other requests? Metadata GET latency, idle vs during a 2 GiB `curl -T`.

Starts `mediasvc serve` on its embedded defaults (SQLite, fsync on) in a temporary directory,
measures metadata GETs on an idle server, then again while curl uploads a 2 GiB file, and prints
the percentiles and the upload's throughput. Timing lives here, never in the test suite.

    .venv/bin/python benchmarks/loop_latency.py [--size-mib 2048]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import httpx
from bench.base import MB, MiB
from bench.curl import curl
from bench.latency import LatencyProbe, percentiles_text, sample_ms
from bench.standalone import serve_env, serve_mediasvc
from bench.testfiles import write_repeating


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--port", type=int, default=8791)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as tmp:
        work = Path(tmp)
        with serve_mediasvc(work, port=args.port, env=serve_env()) as server:
            big = work / "big.bin"
            write_repeating(big, args.size_mib * MiB, os.urandom(MiB))
            with httpx.Client(base_url=server.base) as client:
                uid = client.post("/api/v1/files/stream", content=b"probe").json()["uid"]
            metadata_url = f"{server.base}/api/v1/files/{uid}/metadata"
            idle = sample_ms(metadata_url, 300, pause_s=0.005)
            probe = LatencyProbe(metadata_url, interval_s=0.005)
            probe.start()
            info = curl(["-T", str(big), f"{server.base}/api/v1/files/stream/"], timeout=1800)
            probe.stop()
            busy = probe.latencies_ms

    def text(samples: list[float]) -> str:
        return percentiles_text(samples, (50, 95, 99), digits=2, with_max=True)

    print(f"metadata GET, idle server         ({len(idle)} requests): {text(idle)}")
    print(
        f"metadata GET, during a {args.size_mib} MiB upload ({len(busy)} requests, "
        f"{probe.failures} failed): {text(busy)}"
    )
    seconds = float(info["time_total"])
    print(
        f"upload: {args.size_mib} MiB in {seconds:.2f} s = "
        f"{args.size_mib * MiB / seconds / MB:.0f} MB/s"
    )


if __name__ == "__main__":
    main()
