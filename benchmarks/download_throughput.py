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
import contextlib
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx
from bench.base import MB, MiB
from bench.curl import curl
from bench.standalone import serve_env, serve_mediasvc
from bench.stats import median_ratio
from bench.testfiles import write_repeating


def download_mb_s(url: str, size: int, range_header: str | None) -> float:
    info = curl(["-H", f"Range: {range_header}", url] if range_header else [url], timeout=900)
    got = int(info["size_download"])
    assert got >= size - 1, got
    return got / float(info["time_total"]) / MB


def upload(stream_url: str, data_path: Path, body_out: Path) -> tuple[dict[str, Any], float]:
    """POST a file with `curl -T`: the answer's metadata and the upload's MB/s."""
    info = curl(["-X", "POST", "-T", str(data_path), stream_url], body_out=str(body_out))
    return json.loads(body_out.read_text()), float(info["speed_upload"]) / MB


def upload_mb_s(stream_url: str, data_path: Path, body_out: Path) -> float:
    """Upload with `curl -T` (then delete the copy, so the disk does not fill over the rounds)."""
    meta, speed = upload(stream_url, data_path, body_out)
    headers = {"X-Delete-Token": meta["delete_token"]}
    file_url = f"{stream_url.rsplit('/', 1)[0]}/{meta['uid']}"
    httpx.delete(file_url, headers=headers).raise_for_status()
    return speed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--contender", action="append", default=[], help="NAME=source tree")
    args = parser.parse_args()
    contenders: list[tuple[str, str | None]] = [("this", None)]
    contenders += [tuple(item.split("=", 1)) for item in args.contender]  # type: ignore[misc]

    with (
        tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as tmp,
        contextlib.ExitStack() as servers,
    ):
        data_path = Path(tmp) / "data.bin"
        write_repeating(data_path, args.size_mib * MiB, os.urandom(MiB))
        body_out = Path(tmp) / "answer.json"
        size = args.size_mib * MiB
        urls = {}
        for index, (name, tree) in enumerate(contenders):
            work = Path(tmp) / name
            work.mkdir()
            server = servers.enter_context(
                serve_mediasvc(work, port=8871 + index, env=serve_env(pythonpath=tree))
            )
            meta, _ = upload(f"{server.base}/api/v1/files/stream", data_path, body_out)
            urls[name] = f"{server.base}/api/v1/files/{meta['uid']}"
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, _tree in contenders:
                stream_url = urls[name].rsplit("/", 1)[0] + "/stream"
                results.setdefault((name, "upload"), []).append(
                    upload_mb_s(stream_url, data_path, body_out)
                )
            for kind, header in (("full", None), ("range", "bytes=1-")):
                for name, _tree in contenders:
                    speed = download_mb_s(urls[name], size, header)
                    results.setdefault((name, kind), []).append(speed)

    for (name, kind), speeds in results.items():
        print(f"{name:<8} {kind:<6} median {statistics.median(speeds):7.0f} MB/s  {speeds}")
    if len(contenders) == 2:
        first, second = contenders[0][0], contenders[1][0]
        for kind in ("upload", "full", "range"):
            ratio = median_ratio(results[(first, kind)], results[(second, kind)])
            print(f"{kind}: {first}/{second} median ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
