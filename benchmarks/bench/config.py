"""What one run measures: sizes, rounds, counts and the sections, from the command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bench.base import GiB, MiB


@dataclass
class Config:
    quick: bool
    size: int
    rounds: int
    small: int = 512 * MiB
    push_size: int = 1 * GiB
    hostile_size: int = 4 * GiB
    range_tail: int = 64 * MiB
    parallel_uploads: int = 8
    readers: int = 32
    reader_requests: int = 8
    reader_bytes: int = 8 * MiB
    locust_users: int = 100
    locust_mix_s: int = 40
    locust_ceiling_s: int = 15
    locust_seed_files: int = 12
    sections: tuple[str, ...] = (
        "uploads",
        "resumable",
        "push",
        "downloads",
        "edge",
        "first_byte",
        "concurrency",
        "locust",
        "processing",
    )

    @property
    def size_label(self) -> str:
        return f"{self.size // GiB} GiB" if self.size % GiB == 0 else f"{self.size // MiB} MiB"


def make_config(args: argparse.Namespace) -> Config:
    if args.quick:
        cfg = Config(quick=True, size=1 * GiB, rounds=1, reader_bytes=4 * MiB)
        cfg.locust_mix_s, cfg.locust_ceiling_s = 20, 8
    else:
        cfg = Config(quick=False, size=4 * GiB, rounds=3)
    if args.size_mib:
        cfg.size = args.size_mib * MiB
    if args.rounds:
        cfg.rounds = args.rounds
    if args.locust_s:
        cfg.locust_mix_s = args.locust_s
    if args.sections:
        cfg.sections = tuple(s.strip() for s in args.sections.split(","))
    cfg.push_size = min(cfg.push_size, cfg.size)
    cfg.hostile_size = min(cfg.hostile_size, cfg.size)
    return cfg
