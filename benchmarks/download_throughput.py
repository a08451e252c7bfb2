"""Throughput of `mediasvc serve`: a full download, a Range and a `curl -T` upload, interleaved.

Starts one server per contender (each a source tree: this checkout, or another one given with
`--contender NAME=PATH`, put first on PYTHONPATH), uploads the same file to each, then in every
round downloads it whole and as `Range: bytes=1-` from each contender with curl, and prints MB/s
and, for two contenders, the median ratio of the rounds (this VM's speed drifts over minutes).

    .venv/bin/python benchmarks/download_throughput.py [--size-mib 1024] [--rounds 5]
        [--contender before=/path/to/old/tree]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MiB = 1024 * 1024


def start(name: str, tree: str | None, port: int, work: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASVC_")}
    env.pop("GLIBC_TUNABLES", None)
    if tree:
        env["PYTHONPATH"] = tree
    subprocess.run([sys.executable, "-m", "mediasvc", "migrate"], cwd=work, env=env, check=True)
    log = (work / "server.log").open("wb")
    command = [sys.executable, "-m", "mediasvc", "serve", "--port", str(port)]
    command += ["--log-level", "warning"]
    server = subprocess.Popen(command, cwd=work, env=env, stdout=log)
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return server
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not start")


def download_mb_s(url: str, size: int, range_header: str | None) -> float:
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url]
    if range_header:
        command[1:1] = ["-H", f"Range: {range_header}"]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    got, seconds = done.stdout.split()
    assert int(got) >= size - 1, got
    return int(got) / float(seconds) / 1e6


def upload_mb_s(stream_url: str, data_path: Path) -> float:
    """Upload with `curl -T` (then delete the copy, so the disk does not fill over the rounds)."""
    command = ["curl", "-sS", "-X", "POST", "-T", str(data_path), "-w", "\n%{speed_upload}"]
    done = subprocess.run([*command, stream_url], check=True, capture_output=True, text=True)
    body, speed = done.stdout.rsplit("\n", 1)
    meta = httpx.Response(201, content=body).json()
    headers = {"X-Delete-Token": meta["delete_token"]}
    file_url = f"{stream_url.rsplit('/', 1)[0]}/{meta['uid']}"
    httpx.delete(file_url, headers=headers).raise_for_status()
    return float(speed) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--contender", action="append", default=[], help="NAME=source tree")
    args = parser.parse_args()
    contenders: list[tuple[str, str | None]] = [("this", None)]
    contenders += [tuple(item.split("=", 1)) for item in args.contender]  # type: ignore[misc]

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as tmp:
        data_path = Path(tmp) / "data.bin"
        with data_path.open("wb") as out:
            block = os.urandom(MiB)
            for _ in range(args.size_mib):
                out.write(block)
        size = args.size_mib * MiB
        servers, urls = [], {}
        try:
            for index, (name, tree) in enumerate(contenders):
                work = Path(tmp) / name
                work.mkdir()
                port = 8871 + index
                servers.append(start(name, tree, port, work))
                stream_url = f"http://127.0.0.1:{port}/api/v1/files/stream"
                upload = subprocess.run(
                    ["curl", "-sS", "-X", "POST", "-T", str(data_path), stream_url],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                uid = httpx.Response(200, content=upload.stdout).json()["uid"]
                urls[name] = f"http://127.0.0.1:{port}/api/v1/files/{uid}"
            results: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for name, _tree in contenders:
                    stream_url = urls[name].rsplit("/", 1)[0] + "/stream"
                    results.setdefault((name, "upload"), []).append(
                        upload_mb_s(stream_url, data_path)
                    )
                for kind, header in (("full", None), ("range", "bytes=1-")):
                    for name, _tree in contenders:
                        speed = download_mb_s(urls[name], size, header)
                        results.setdefault((name, kind), []).append(speed)
        finally:
            for server in servers:
                server.terminate()
                server.wait()

    for (name, kind), speeds in results.items():
        print(f"{name:<8} {kind:<6} median {statistics.median(speeds):7.0f} MB/s  {speeds}")
    if len(contenders) == 2:
        first, second = contenders[0][0], contenders[1][0]
        for kind in ("upload", "full", "range"):
            pairs = zip(results[(first, kind)], results[(second, kind)], strict=True)
            ratios = [a / b for a, b in pairs]
            print(f"{kind}: {first}/{second} median ratio {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
