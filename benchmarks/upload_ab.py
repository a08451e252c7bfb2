"""Upload throughput of two source trees side by side: `curl -T` of one file, interleaved rounds.

Each tree is a directory holding a `mediasvc` package (e.g. `git archive <rev> mediasvc | tar -x
-C /tmp/base`). Both servers run `mediasvc serve` on their embedded defaults (SQLite, fsync on,
O_DIRECT) in temporary directories; each round uploads the same file once to each, the order
alternating, and the script prints every round's MB/s, the server's CPU seconds for it (utime +
stime, which swing less than wall time on a shared machine) and the median ratio B/A. Throughput
on a shared VM drifts, so only the ratio within a round means anything.

    .venv/bin/python benchmarks/upload_ab.py --tree-a /tmp/base --tree-b . [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from bench.base import MB, MiB
from bench.curl import curl
from bench.procfs import cpu_seconds
from bench.standalone import serve_env, serve_mediasvc
from bench.stats import median_ratio, round_order
from bench.testfiles import write_repeating


def upload_mb_s(base: str, path: Path) -> float:
    info = curl(["-T", str(path), f"{base}/api/v1/files/stream/f.bin"], timeout=600)
    if info["http_code"] != 201:
        raise SystemExit(f"upload answered {info['http_code']}")
    return float(info["size_upload"]) / float(info["time_total"]) / MB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree-a", type=Path, required=True)
    parser.add_argument("--tree-b", type=Path, required=True)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        source = work / "upload.bin"
        write_repeating(source, args.size_mib * MiB, os.urandom(MiB))
        servers = {}
        for name, tree, port in (("a", args.tree_a, 8795), ("b", args.tree_b, 8796)):
            (work / name).mkdir()
            env = serve_env(pythonpath=tree)
            servers[name] = stack.enter_context(serve_mediasvc(work / name, port=port, env=env))
        speeds: dict[str, list[float]] = {"a": [], "b": []}
        cpu_s: dict[str, list[float]] = {"a": [], "b": []}
        for round_no in range(args.rounds):
            # Alternate who goes first: the second upload of a round meets the first one's
            # writeback (docs/performance.md, "Benchmarks").
            for name in round_order(["a", "b"], round_no):
                server = servers[name]
                cpu_before_s = cpu_seconds(server.pid)
                speeds[name].append(upload_mb_s(server.base, source))
                cpu_s[name].append(cpu_seconds(server.pid) - cpu_before_s)
            a, b = speeds["a"][-1], speeds["b"][-1]
            print(
                f"round {round_no + 1}: A {a:.0f} MB/s ({cpu_s['a'][-1]:.2f} CPU s)  "
                f"B {b:.0f} MB/s ({cpu_s['b'][-1]:.2f} CPU s)  B/A {b / a:.2f}"
            )
            for name in ("a", "b"):  # keep the disk from filling up
                for stored in (work / name / "data" / "media").glob("??/*"):
                    stored.unlink()
        ratio = median_ratio(speeds["b"], speeds["a"])
        cpu_ratio = median_ratio(cpu_s["b"], cpu_s["a"])
        print(
            f"median B/A over {args.rounds} rounds: {ratio:.2f} (CPU seconds B/A {cpu_ratio:.2f})"
        )


if __name__ == "__main__":
    main()
