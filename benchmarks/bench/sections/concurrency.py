"""Section concurrency: parallel uploads and parallel Range readers at random offsets."""

from __future__ import annotations

import json
import random

from bench.base import MB, BenchError, log
from bench.context import Run
from bench.curl import curl_argv, parallel_curls
from bench.mediasvc_ops import ensure_download_files, mediasvc_delete
from bench.procfs import RSS_LABEL, RSS_UNIT, RssProbe
from bench.servers import rss_pid
from bench.stats import round_order


def section_concurrency(r: Run) -> None:
    cfg = r.cfg
    ensure_download_files(r)
    n = cfg.parallel_uploads
    up_title = f"concurrency: {n} parallel 512 MiB uploads (curl -T)"
    rd_title = f"concurrency: {cfg.readers} parallel Range readers, random offsets"
    targets = [
        ("nginx", "nginx body → disk", "nginx", "/upload"),
        ("count", "uvicorn pure ASGI, count only", "count", "/"),
        ("raw", "mediasvc raw POST", "mediasvc", "/api/v1/files/stream"),
    ]
    for rnd in range(cfg.rounds):
        for key, label, server, path in round_order(targets, rnd):
            bodies = [r.tmp / f"par-{i}.json" for i in range(n)]
            argvs = [
                curl_argv(
                    ["-X", "POST", "-T", str(r.files["small"]), r.servers[server].base + path],
                    str(b),
                )
                for b in bodies
            ]
            with RssProbe(rss_pid(r, server)) as probe:
                elapsed, _ = parallel_curls(argvs)
                rss = probe.read()
            mbps = n * cfg.small / elapsed / MB
            r.samples.put(f"cu.{key}.mbps", rnd, mbps)
            if rss:
                r.samples.put(f"cu.{key}.rss", rnd, rss)
            for body in bodies:
                response = json.loads(body.read_text())
                body.unlink()
                if key == "raw":
                    mediasvc_delete(r.servers["mediasvc"].base, response)
            log(f"{up_title} r{rnd + 1} {label}: {mbps:,.0f} MB/s aggregate")
    for key, label, _, _ in targets:
        r.metric(up_title, f"{label}: aggregate", f"cu.{key}.mbps", "MB/s")
    for key, label, _, _ in targets:
        r.metric(up_title, f"{label}: {RSS_LABEL}", f"cu.{key}.rss", RSS_UNIT)
    r.derived(
        up_title,
        "mediasvc / nginx",
        lambda rnd: r.v("cu.raw.mbps", rnd) / r.v("cu.nginx.mbps", rnd),
    )
    r.derived(
        up_title,
        "mediasvc RSS growth",
        lambda rnd: r.v("cu.raw.rss", rnd)[1],
        "MB",
        digits=0,
        target="< 256 MB (worst round)",
        check=lambda x: x < 256,
        worst="max",
    )

    ms = r.servers["mediasvc"].base
    readers = [
        ("nginx", "nginx sendfile", r.servers["nginx"].base + "/files/data.bin"),
        ("disk", "mediasvc from disk", f"{ms}/api/v1/files/{r.uids['disk']}"),
        (
            "gdisk",
            "mediasvc from disk, under granian",
            f"{r.servers['mediasvc_granian'].base}/api/v1/files/{r.uids['disk']}",
        ),
    ]
    cfg_dir = r.tmp / "readers"
    cfg_dir.mkdir(exist_ok=True)
    total = cfg.readers * cfg.reader_requests * cfg.reader_bytes
    for rnd in range(cfg.rounds):
        rng = random.Random(1000 + rnd)
        offsets = [
            [rng.randrange(cfg.size - cfg.reader_bytes) for _ in range(cfg.reader_requests)]
            for _ in range(cfg.readers)
        ]
        for key, label, url in round_order(readers, rnd):
            argvs = []
            for i, starts in enumerate(offsets):
                path = cfg_dir / f"{key}-{i}.cfg"
                blocks = [
                    f'url = "{url}"\nrange = "{s}-{s + cfg.reader_bytes - 1}"\n'
                    'output = "/dev/null"\nwrite-out = "%{json}\\n"\n'
                    for s in starts
                ]
                path.write_text("next\n".join(blocks))
                argvs.append(["curl", "-sS", "-K", str(path)])
            server = {"nginx": "nginx", "gdisk": "mediasvc_granian"}.get(key, "mediasvc")
            with RssProbe(rss_pid(r, server)) as probe:
                elapsed, infos = parallel_curls(argvs)
                rss = probe.read()
            got = sum(int(i["size_download"]) for i in infos)
            if got != total:
                raise BenchError(f"{label}: readers got {got} bytes, wanted {total}")
            mbps = total / elapsed / MB
            r.samples.put(f"rd.{key}.mbps", rnd, mbps)
            if rss:
                r.samples.put(f"rd.{key}.rss", rnd, rss)
            log(f"{rd_title} r{rnd + 1} {label}: {mbps:,.0f} MB/s aggregate")
    for key, label, _ in readers:
        r.metric(rd_title, f"{label}: aggregate", f"rd.{key}.mbps", "MB/s")
    for key, label, _ in readers:
        r.metric(rd_title, f"{label}: {RSS_LABEL}", f"rd.{key}.rss", RSS_UNIT)
    r.derived(
        rd_title,
        "mediasvc / nginx",
        lambda rnd: r.v("rd.disk.mbps", rnd) / r.v("rd.nginx.mbps", rnd),
    )
    r.derived(
        rd_title,
        "mediasvc from disk: RSS growth (zero-copy holds no buffers)",
        lambda rnd: r.v("rd.disk.rss", rnd)[1],
        "MB",
        digits=0,
        target="< 32 MB",
        check=lambda x: x < 32,
    )
