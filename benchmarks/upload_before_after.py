"""`curl -T` of one large file into `mediasvc serve` from two source trees, interleaved rounds.

For a change to the upload path: export the old commit (`git archive REV | tar -x -C DIR`) and
compare it with this tree, on the same machine in the same minutes. Both servers run from this
venv (same dependencies) with their tree first on PYTHONPATH: one uvicorn worker, SQLite, and a
Redis queue that no worker reads, so no push runs while uploads are measured. Each round uploads
to both (the order alternates), deletes the file, and notes MB/s and the server's CPU seconds
(utime + stime, /proc/PID/stat), which swing less than wall time on a shared machine. The
queued jobs stay in the Redis database given (a spare one).

    .venv/bin/python benchmarks/upload_before_after.py --before /tmp/old-tree \\
        [--after .] [--size-mib 1024] [--rounds 6] [--redis redis://127.0.0.1:6379/15]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(tree: Path, home: Path, redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASVC_")}
    env |= {
        "PYTHONPATH": str(tree),
        "MEDIASVC_DATABASE_URL": f"sqlite+aiosqlite:///{home}/mediasvc.db",
        "MEDIASVC_MEDIA_ROOT": str(home / "media"),
        "MEDIASVC_CLOUD_ROOT": str(home / "bucket"),
        "MEDIASVC_REDIS_URL": redis_url,
    }
    python = sys.executable
    subprocess.run([python, "-m", "mediasvc", "migrate"], env=env, cwd=home, check=True)
    port = free_port()
    argv = [python, "-m", "mediasvc", "serve", "--port", str(port), "--log-level", "warning"]
    with (home / "log").open("wb") as log:
        process = subprocess.Popen(argv, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            return process, base
        except OSError:
            time.sleep(0.1)
    process.terminate()
    raise SystemExit(f"{tree}: the server did not start (log in {home / 'log'})")


def upload(base: str, data: Path, scratch: Path) -> tuple[float, str, str]:
    """(seconds, uid, delete token) of one curl -T."""
    response = scratch / "response.json"
    out = subprocess.run(
        [
            *("curl", "-sS", "--fail-with-body", "-T", str(data), "-o", str(response)),
            *("-w", "%{time_total}", base + "/api/v1/files/stream/data.bin"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    meta = json.loads(response.read_text())
    if meta["size"] != data.stat().st_size:
        raise SystemExit(f"stored {meta['size']} bytes of {data.stat().st_size}")
    return float(out.stdout), meta["uid"], meta["delete_token"]


def delete(base: str, uid: str, token: str) -> None:
    request = urllib.request.Request(
        f"{base}/api/v1/files/{uid}", method="DELETE", headers={"X-Delete-Token": token}
    )
    urllib.request.urlopen(request, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="a spare database")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    scratch = Path(tempfile.mkdtemp(prefix="upload-before-after-"))
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        data = scratch / "data.bin"
        with data.open("wb") as file:
            for _ in range(args.size_mib):
                file.write(os.urandom(MiB))
        for name, tree in trees.items():
            servers[name] = start(tree, scratch / name, args.redis)
        mb_s: dict[str, list[float]] = {name: [] for name in trees}
        cpu: dict[str, list[float]] = {name: [] for name in trees}
        for rnd in range(args.rounds):
            for name in list(trees) if rnd % 2 == 0 else list(reversed(trees)):
                process, base = servers[name]
                cpu_before = cpu_s(process.pid)
                seconds, uid, token = upload(base, data, scratch)
                cpu[name].append(cpu_s(process.pid) - cpu_before)
                mb_s[name].append(data.stat().st_size / seconds / 1e6)
                delete(base, uid, token)
                figures = f"{mb_s[name][-1]:6.0f} MB/s  CPU {cpu[name][-1]:.2f} s"
                print(f"round {rnd + 1} {name:6} {figures}")
        for name in trees:
            print(
                f"{name:6} median {statistics.median(mb_s[name]):.0f} MB/s, "
                f"CPU {statistics.median(cpu[name]):.2f} s per upload"
            )
        ratios = [a / b for a, b in zip(mb_s["after"], mb_s["before"], strict=True)]
        print("after/before per round:", " ".join(f"{r:.2f}" for r in ratios))
        print(f"median after/before: {statistics.median(ratios):.2f}")
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(30)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
