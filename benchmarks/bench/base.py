"""Units, paths, the log line and the error every part of the bench shares."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
BIN = Path(sys.executable).parent
S3RVER_BIN = ROOT / "tests" / "s3rver" / "node_modules" / ".bin" / "s3rver"
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000
BUCKET = "bench"
START = time.monotonic()

# The scripts run as `python benchmarks/<script>.py`: this checkout's mediasvc comes first.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def log(message: str) -> None:
    print(f"[{time.monotonic() - START:7.1f}s] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass
