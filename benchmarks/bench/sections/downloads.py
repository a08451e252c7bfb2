"""Section downloads: full and Range downloads from mediasvc (disk, cloud) and its peers."""

from __future__ import annotations

from collections.abc import Callable

from bench.base import MB, BenchError, log
from bench.context import Run
from bench.curl import curl
from bench.mediasvc_ops import ensure_download_files
from bench.stats import round_order


def download_urls(r: Run) -> list[tuple[str, str, str]]:
    ms = r.servers["mediasvc"].base
    return [
        ("nginx", "nginx sendfile", r.servers["nginx"].base + "/files/data.bin"),
        (
            "starlette",
            "Starlette FileResponse defaults",
            r.servers["starlette"].base + "/files/data.bin",
        ),
        ("disk", "mediasvc from disk", f"{ms}/api/v1/files/{r.uids['disk']}"),
        (
            "gdisk",
            "mediasvc from disk, under granian",
            f"{r.servers['mediasvc_granian'].base}/api/v1/files/{r.uids['disk']}",
        ),
        ("cloud", "mediasvc from the cloud (s3rver)", f"{ms}/api/v1/files/{r.uids['cloud']}"),
    ]


def section_downloads(r: Run) -> None:
    cfg = r.cfg
    ensure_download_files(r)
    title = f"download {cfg.size_label}"
    contenders = download_urls(r)
    tail_start = cfg.size - cfg.range_tail
    # Warm-up, not measured: mediasvc's file was written with O_DIRECT (nothing cached), and the
    # figures compare servers, not disks (docs/performance.md, "Benchmarks").
    for key, _, url in contenders:
        if key != "cloud":
            curl([url], timeout=1800)
    for rnd in range(cfg.rounds):
        for kind, extra, want in (
            ("full", [], cfg.size),
            ("range", ["-r", f"{tail_start}-"], cfg.range_tail),
        ):
            for key, label, url in round_order(contenders, rnd):
                info = curl([*extra, url], timeout=1800)
                got = int(info["size_download"])
                if got != want:
                    raise BenchError(f"{label} {kind}: {got} bytes, wanted {want}")
                mbps = got / float(info["time_total"]) / MB
                ttfb = float(info["time_starttransfer"]) * 1000
                r.samples.put(f"dl.{kind}.{key}.mbps", rnd, mbps)
                r.samples.put(f"dl.{kind}.{key}.ttfb", rnd, ttfb)
                log(f"{title} {kind} r{rnd + 1} {label}: {mbps:,.0f} MB/s, TTFB {ttfb:.2f} ms")
    for kind, sub in (("full", "full"), ("range", "last 64 MiB (Range)")):
        for key, label, _ in contenders:
            r.metric(f"{title}, {sub}", label, f"dl.{kind}.{key}.mbps", "MB/s")
        for key, label, _ in contenders:
            r.metric(
                f"{title}, {sub}",
                f"{label}: time to first byte",
                f"dl.{kind}.{key}.ttfb",
                "ms",
                digits=2,
            )

        def ratio(a: str, b: str, kind: str = kind) -> Callable[[int], float]:
            return lambda rnd: r.v(f"dl.{kind}.{a}.mbps", rnd) / r.v(f"dl.{kind}.{b}.mbps", rnd)

        r.derived(
            f"{title}, {sub}",
            "mediasvc disk / nginx",
            ratio("disk", "nginx"),
            target="≥ 1.0",
            check=lambda x: x >= 1.0,
        )
        r.derived(f"{title}, {sub}", "Starlette defaults / nginx", ratio("starlette", "nginx"))
        r.derived(f"{title}, {sub}", "mediasvc cloud / nginx", ratio("cloud", "nginx"))
        r.derived(
            f"{title}, {sub}", "granian / uvicorn (mediasvc from disk)", ratio("gdisk", "disk")
        )
    r.derived(
        f"{title}, last 64 MiB (Range)",
        f"mediasvc disk: TTFB of a Range at the end of {cfg.size_label}",
        lambda rnd: r.v("dl.range.disk.ttfb", rnd),
        "ms",
        target="< 5 ms",
        check=lambda x: x < 5,
    )
