"""The files the run sends and serves: random data, hostile data, a multipart body."""

from __future__ import annotations

import os
import random
from pathlib import Path

from bench.base import BenchError, MiB, log
from bench.context import Run


def write_repeating(path: Path, size: int, block: bytes) -> None:
    with path.open("wb", buffering=0) as out:
        written = 0
        view = memoryview(block)
        while written < size:
            n = min(len(block), size - written)
            out.write(view[:n])
            written += n
        os.fsync(out.fileno())


MP_BOUNDARY = "benchboundary7MA4YWxkTrZu0gW"


def write_multipart(path: Path, source: Path, size: int) -> None:
    head = (
        f'--{MP_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="data.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    tail = f"\r\n--{MP_BOUNDARY}--\r\n".encode()
    buf = bytearray(4 * MiB)
    with path.open("wb", buffering=0) as out, source.open("rb", buffering=0) as src:
        out.write(head)
        left = size
        while left:
            n = src.readinto(memoryview(buf)[: min(len(buf), left)])
            if not n:
                raise BenchError("short source file")
            out.write(memoryview(buf)[:n])
            left -= n
        out.write(tail)
        os.fsync(out.fileno())


def make_files(r: Run) -> None:
    cfg = r.cfg
    data_dir = r.tmp / "data"
    data_dir.mkdir()
    block = random.Random(20261).randbytes(64 * MiB)
    files = {
        "data": (cfg.size, block),
        "hostile": (cfg.hostile_size, b"\r\n--" * (MiB // 4)),
        "small": (cfg.small, block),
        "push": (cfg.push_size, block),
    }
    for name, (size, pattern) in files.items():
        if name == "push" and size == cfg.size:
            r.files[name] = r.files["data"]
            continue
        path = data_dir / f"{name}.bin"
        write_repeating(path, size, pattern)
        r.files[name] = path
    r.files["small_mp"] = data_dir / "small.multipart"
    write_multipart(r.files["small_mp"], r.files["small"], cfg.small)
    www = r.tmp / "www"
    www.mkdir()
    os.link(r.files["data"], www / "data.bin")
    log(f"test files ready ({cfg.size_label} random data, hostile data, 512 MiB, multipart body)")
