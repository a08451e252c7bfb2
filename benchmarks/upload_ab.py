"""Upload throughput of two source trees side by side: `curl -T` of one file, interleaved rounds.

Each tree is a directory holding a `mediasvc` package (e.g. `git archive <rev> mediasvc | tar -x
-C /tmp/base`). Both servers run `mediasvc serve` on their embedded defaults (SQLite, fsync on,
O_DIRECT) in temporary directories; each round uploads the same file once to each, the order
alternating, and the script prints every round's MB/s and the median ratio B/A. Throughput on a
shared VM drifts, so only the ratio within a round means anything.

    .venv/bin/python benchmarks/upload_ab.py --tree-a /tmp/base --tree-b . [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MiB = 1024 * 1024


def start(tree: Path, work: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASVC_")}
    env["PYTHONPATH"] = str(tree.resolve())
    subprocess.run([sys.executable, "-m", "mediasvc", "migrate"], cwd=work, env=env, check=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "mediasvc", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=work,
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"server of {tree} did not start")


def upload_mb_s(port: int, path: Path) -> float:
    out = subprocess.run(
        [
            *("curl", "-sS", "-o", "/dev/null", "-w", "%{json}", "-T", str(path)),
            f"http://127.0.0.1:{port}/api/v1/files/stream/f.bin",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    info = json.loads(out.stdout)
    if info["http_code"] != 201:
        raise SystemExit(f"upload answered {info['http_code']}")
    return float(info["size_upload"]) / float(info["time_total"]) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree-a", type=Path, required=True)
    parser.add_argument("--tree-b", type=Path, required=True)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as tmp:
        work = Path(tmp)
        source = work / "upload.bin"
        with source.open("wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        servers = []
        try:
            for name, tree, port in (("a", args.tree_a, 8795), ("b", args.tree_b, 8796)):
                (work / name).mkdir()
                servers.append((port, start(tree, work / name, port)))
            ratios = []
            for round_no in range(args.rounds):
                # Alternate who goes first: the second upload of a round meets the first one's
                # writeback and measured slower with the same code on both sides.
                if round_no % 2:
                    b = upload_mb_s(servers[1][0], source)
                    a = upload_mb_s(servers[0][0], source)
                else:
                    a = upload_mb_s(servers[0][0], source)
                    b = upload_mb_s(servers[1][0], source)
                ratios.append(b / a)
                print(f"round {round_no + 1}: A {a:.0f} MB/s  B {b:.0f} MB/s  B/A {b / a:.2f}")
                for name in ("a", "b"):  # keep the disk from filling up
                    for stored in (work / name / "data" / "media").glob("??/*"):
                        stored.unlink()
            print(f"median B/A over {args.rounds} rounds: {statistics.median(ratios):.2f}")
        finally:
            for _, server in servers:
                server.terminate()
                server.wait(timeout=20)


if __name__ == "__main__":
    main()
