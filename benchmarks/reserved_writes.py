"""Does reserving an upload's length (fallocate) slow its O_DIRECT writes? Interleaved rounds.

Writes `--size-mib` in 4 MiB page-aligned batches with O_DIRECT + a final fsync, as the ingest
does, to a new file: once appending, once after fallocate of the whole length. Prints each
round's MB/s and the median ratio reserved / appending. Run it on the media disk
(`--dir`, default the temporary directory).

    .venv/bin/python benchmarks/reserved_writes.py [--size-mib 1024] [--rounds 5] [--dir PATH]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.base import MB, MiB
from bench.stats import median_ratio, round_order

from mediasvc.storage.direct import AppendOnlyFile, aligned_buffer
from mediasvc.storage.files import preallocate

BATCH_BYTES = 4 * MiB


def write_mb_s(path: Path, size_bytes: int, *, reserve: bool) -> float:
    buffer = aligned_buffer(BATCH_BYTES)
    buffer.write(os.urandom(BATCH_BYTES))
    started = time.perf_counter()
    file = AppendOnlyFile(path, direct=True)
    try:
        if reserve:
            preallocate(file.fd, size_bytes)
        for _ in range(size_bytes // BATCH_BYTES):
            file.write(memoryview(buffer))
        file.flush()
        os.fsync(file.fd)
    finally:
        file.close()
        elapsed = time.perf_counter() - started
        path.unlink()
    return size_bytes / elapsed / MB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    size = args.size_mib * MiB
    speeds: dict[bool, list[float]] = {False: [], True: []}
    for round_no in range(args.rounds):
        for reserve in round_order([False, True], round_no):
            path = args.dir / "reserved-writes.bin"
            speeds[reserve].append(write_mb_s(path, size, reserve=reserve))
        appending, reserved = speeds[False][-1], speeds[True][-1]
        print(
            f"round {round_no + 1}: appending {appending:.0f} MB/s  "
            f"reserved {reserved:.0f} MB/s  ratio {reserved / appending:.2f}"
        )
    ratio = median_ratio(speeds[True], speeds[False])
    print(f"median reserved / appending over {args.rounds} rounds: {ratio:.2f}")


if __name__ == "__main__":
    main()
