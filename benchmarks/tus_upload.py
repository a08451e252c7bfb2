"""tus uploads against the plain raw upload, in one server and interleaved rounds (ratios only).

Per round, the same file (``--size-mib``, default 4096) goes up three ways: `curl -T` to
`/api/v1/files/stream` (the baseline), a tus upload in one PATCH (`curl -X PATCH -T`), and a tus
upload in PATCHes of ``--patch-mib`` (64) each, every one a new curl: a new connection, a reopen
of the upload's file at its offset and the hash state read back from the row. Then the resume
cost: an upload with ``--small-mib`` (100) and one with the whole file already received, each
resumed by HEAD + PATCH of one byte; the two should cost the same (no prefix is reread). The
server's peak RSS growth (VmHWM after a reset) is reported per kind of upload.

    .venv/bin/python benchmarks/tus_upload.py [--size-mib 4096] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from bench.base import MB, MiB
from bench.curl import curl
from bench.procfs import reset_peak, status_kb
from bench.standalone import serve_env, serve_mediasvc
from bench.stats import median_ratio, round_order
from bench.testfiles import write_repeating

TUS = ["-H", "Tus-Resumable: 1.0.0"]
PATCH = [*TUS, "-H", "Content-Type: application/offset+octet-stream", "-X", "PATCH"]


def create(base: str, length: int) -> str:
    response = httpx.post(
        f"{base}/api/v1/uploads",
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(length)},
        timeout=30,
    )
    response.raise_for_status()
    return response.headers["location"]


def patch(url: str, offset: int, path: Path) -> float:
    """One PATCH of ``path``'s bytes at ``offset``; its seconds."""
    info = curl([*PATCH, "-H", f"Upload-Offset: {offset}", "-T", str(path), url], timeout=1800)
    return float(info["time_total"])


def raw(base: str, path: Path) -> float:
    info = curl(["-T", str(path), f"{base}/api/v1/files/stream/f.bin"], timeout=1800)
    return float(info["time_total"])


def tus_one(base: str, path: Path) -> float:
    started = time.perf_counter()
    url = create(base, path.stat().st_size)
    patch(url, 0, path)
    return time.perf_counter() - started


def tus_pieces(base: str, path: Path, pieces: list[Path]) -> float:
    started = time.perf_counter()
    url = create(base, path.stat().st_size)
    offset = 0
    for piece in pieces:
        patch(url, offset, piece)
        offset += piece.stat().st_size
    return time.perf_counter() - started


def resume_cost(base: str, prefix: Path, one_byte: Path) -> float:
    """An upload with ``prefix`` received, then HEAD + a one-byte PATCH: that pair's seconds."""
    url = create(base, prefix.stat().st_size + 2)
    patch(url, 0, prefix)
    started = time.perf_counter()
    head = httpx.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=30)
    patch(url, int(head.headers["upload-offset"]), one_byte)
    return time.perf_counter() - started


def split(source: Path, piece_bytes: int, into: Path) -> list[Path]:
    into.mkdir()
    subprocess.run(
        ["split", "-b", str(piece_bytes), "-d", "-a", "4", str(source), f"{into}/p"], check=True
    )
    return sorted(into.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=4096)
    parser.add_argument("--patch-mib", type=int, default=64)
    parser.add_argument("--small-mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as tmp:
        work = Path(tmp)
        source = work / "upload.bin"
        write_repeating(source, args.size_mib * MiB, os.urandom(MiB))
        small = work / "small.bin"
        write_repeating(small, args.small_mib * MiB, os.urandom(MiB))
        one_byte = work / "one.bin"
        one_byte.write_bytes(b"x")
        pieces = split(source, args.patch_mib * MiB, work / "pieces")
        (work / "server").mkdir()
        with serve_mediasvc(work / "server", port=8797, env=serve_env()) as server:
            media = work / "server" / "data" / "media"
            kinds = {
                "raw": lambda: raw(server.base, source),
                "tus, one PATCH": lambda: tus_one(server.base, source),
                f"tus, {args.patch_mib} MiB PATCHes": lambda: tus_pieces(
                    server.base, source, pieces
                ),
            }
            seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
            peak_mb: dict[str, list[float]] = {kind: [] for kind in kinds}
            for round_no in range(args.rounds):
                for kind in round_order(list(kinds), round_no):
                    reset_peak(server.pid)
                    before = status_kb(server.pid, "VmRSS")
                    seconds[kind].append(kinds[kind]())
                    peak_mb[kind].append((status_kb(server.pid, "VmHWM") - before) / 1000)
                    for stored in media.glob("??/*"):  # keep the disk from filling up
                        stored.unlink()
                line = "  ".join(
                    f"{k} {source.stat().st_size / MB / seconds[k][-1]:.0f} MB/s" for k in kinds
                )
                print(f"round {round_no + 1}: {line}")
            resume = {"small": [], "large": []}
            for _ in range(args.rounds):
                resume["small"].append(resume_cost(server.base, small, one_byte))
                resume["large"].append(resume_cost(server.base, source, one_byte))
                shutil.rmtree(media / ".incoming", ignore_errors=True)
                (media / ".incoming").mkdir()
        base = seconds["raw"]
        for kind in kinds:
            ratio = median_ratio(base, seconds[kind])  # speed ratio = inverse time ratio
            print(
                f"{kind}: {ratio:.2f} x raw, peak RSS growth "
                f"{max(peak_mb[kind]):.0f} MB (max over rounds)"
            )
        print(
            f"resume (HEAD + reopen + 1 byte): {args.small_mib} MiB received "
            f"{statistics.median(resume['small']) * 1000:.0f} ms, {args.size_mib} MiB received "
            f"{statistics.median(resume['large']) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
