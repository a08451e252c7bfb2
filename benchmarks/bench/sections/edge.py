"""Section edge: downloads at the kernel's speed (issue 18), interleaved in each round: nginx
alone (sendfile), mediasvc direct (zero-copy send), mediasvc through the nginx edge with
offload (X-Accel-Redirect) and without; the full file, the last 64 MiB, and 1 MiB Ranges at
random offsets (a player's seek, where the first byte dominates: TTFB from a raw socket);
and an upload through the edge against one straight to the API, with the CPU per GiB of each
process it crosses and how many cores were busy."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable

from bench.base import MB, BenchError, GiB, log
from bench.context import Run
from bench.curl import curl
from bench.edge import start_edges
from bench.mediasvc_ops import ensure_download_files, mediasvc_delete
from bench.procfs import descendants_of, machine_busy, total_cpu_seconds
from bench.stats import round_order
from bench.ttfb import range_ttfb_ms

SEEKS_PER_ROUND = 200


# The last 64 MiB take ~20-30 ms from the page cache: one request per round measured mostly its
# own jitter (rounds swung 0.6-1.1 x), so each contender sends it this many times per round.
TAIL_REPEATS = 8


def section_edge(r: Run) -> None:
    cfg = r.cfg
    ensure_download_files(r)
    start_edges(r)
    uid = r.uids["disk"]
    path = f"/api/v1/files/{uid}"
    contenders = [
        ("nginx", "nginx alone (sendfile)", r.servers["nginx"].base + "/files/data.bin"),
        ("direct", "mediasvc direct (zero-copy)", r.servers["mediasvc"].base + path),
        ("offload", "mediasvc via the edge, offloaded", r.servers["edge"].base + path),
        ("proxied", "mediasvc via the edge, not offloaded", r.servers["edge_plain"].base + path),
    ]
    title = f"edge: download {cfg.size_label}"
    for _, _, url in contenders:  # warm-up: the page cache, connections (not measured)
        curl([url], timeout=1800)
    tail_start = cfg.size - cfg.range_tail
    for rnd in range(cfg.rounds):
        for kind, extra, want in (
            ("full", [], cfg.size),
            ("tail", ["-r", f"{tail_start}-"], cfg.range_tail),
        ):
            for key, label, url in round_order(contenders, rnd):
                seconds, ttfbs = 0.0, []
                for _ in range(TAIL_REPEATS if kind == "tail" else 1):
                    info = curl([*extra, url], timeout=1800)
                    if int(info["size_download"]) != want:
                        raise BenchError(f"{label} {kind}: {info['size_download']} of {want}")
                    seconds += float(info["time_total"])
                    ttfbs.append(float(info["time_starttransfer"]) * 1000)
                mbps = want * len(ttfbs) / seconds / MB
                r.samples.put(f"edge.{kind}.{key}.mbps", rnd, mbps)
                r.samples.put(f"edge.{kind}.{key}.ttfb", rnd, statistics.median(ttfbs))
                log(f"{title} {kind} r{rnd + 1} {label}: {mbps:,.0f} MB/s")
        for key, label, url in round_order(contenders, rnd):
            seeks = range_ttfb_ms(url, cfg.size, count=SEEKS_PER_ROUND, seed=rnd)
            r.samples.put(f"edge.seek.{key}.ttfb", rnd, statistics.median(seeks))
            log(f"{title} 1 MiB seeks r{rnd + 1} {label}: TTFB {statistics.median(seeks):.2f} ms")
        upload_round(r, rnd)
    report(r, title, contenders)


def upload_round(r: Run, rnd: int) -> None:
    """512 MiB with curl -T, straight to the API and through the edge (the offloading node),
    with the CPU each process spent on it: on 2 cores the edge's share is what limits it."""
    edge, direct, node = r.servers["edge"], r.servers["mediasvc"], r.servers["mediasvc_offload"]
    nginx = [edge.pid, *descendants_of(edge.pid)]
    targets = [("direct", direct.base, [direct.pid], []), ("edge", edge.base, [node.pid], nginx)]
    gib = r.cfg.small / GiB
    for key, base, api, proxy in round_order(targets, rnd):
        body = r.tmp / f"edge-up-{key}.json"
        api_s, proxy_s, clients_s = total_cpu_seconds(api), total_cpu_seconds(proxy), _children_s()
        busy = machine_busy()
        info = curl(["-X", "POST", "-T", str(r.files["small"]), f"{base}/api/v1/files/stream"],
                    body_out=str(body))  # fmt: skip
        busy_after = machine_busy()
        cpu = (
            total_cpu_seconds(api) - api_s,
            total_cpu_seconds(proxy) - proxy_s,
            _children_s() - clients_s,
        )
        r.samples.put(f"edge.up.{key}.cpu", rnd, tuple(seconds / gib for seconds in cpu))
        cores = (os.cpu_count() or 1) * (busy_after[0] - busy[0]) / (busy_after[1] - busy[1])
        r.samples.put(f"edge.up.{key}.busy", rnd, cores)
        r.samples.put(f"edge.up.{key}.mbps", rnd, r.cfg.small / float(info["time_total"]) / MB)
        mediasvc_delete(r.servers["mediasvc"].base, json.loads(body.read_text()))


def _children_s() -> float:
    """CPU seconds of this process's children that have ended (curl)."""
    times = os.times()
    return times.children_user + times.children_system


def report(r: Run, title: str, contenders: list[tuple[str, str, str]]) -> None:
    def ratio(kind: str, a: str, b: str) -> Callable[[int], float]:
        return lambda rnd: r.v(f"edge.{kind}.{a}.mbps", rnd) / r.v(f"edge.{kind}.{b}.mbps", rnd)

    for kind, sub in (("full", "full"), ("tail", "last 64 MiB (Range)")):
        section = f"{title}, {sub}"
        for key, label, _ in contenders:
            r.metric(section, label, f"edge.{kind}.{key}.mbps", "MB/s")
        r.derived(section, "direct / nginx", ratio(kind, "direct", "nginx"),
                  target="≥ 1.0", check=lambda x: x >= 1.0)  # fmt: skip
        r.derived(section, "edge, offloaded / nginx", ratio(kind, "offload", "nginx"),
                  target="≥ 0.95", check=lambda x: x >= 0.95)  # fmt: skip
        r.derived(section, "edge, not offloaded / nginx", ratio(kind, "proxied", "nginx"))
    seek = f"{title}, 1 MiB Range at a random offset (median of {SEEKS_PER_ROUND} per round)"
    for key, label, _ in contenders:
        r.metric(seek, f"{label}: TTFB", f"edge.seek.{key}.ttfb", "ms", digits=2)
    r.derived(seek, "direct: TTFB", lambda rnd: r.v("edge.seek.direct.ttfb", rnd), "ms",
              target="< 1 ms", check=lambda x: x < 1.0)  # fmt: skip
    r.derived(
        seek,
        "what the edge adds (offloaded − direct)",
        lambda rnd: r.v("edge.seek.offload.ttfb", rnd) - r.v("edge.seek.direct.ttfb", rnd),
        "ms",
        target="< 1 ms",
        check=lambda x: x < 1.0,
    )
    up = f"edge: upload {r.cfg.small // (1024 * 1024)} MiB (curl -T)"
    r.metric(up, "straight to the API", "edge.up.direct.mbps", "MB/s")
    r.metric(up, "through the edge", "edge.up.edge.mbps", "MB/s")
    r.derived(up, "edge / direct",
              lambda rnd: r.v("edge.up.edge.mbps", rnd) / r.v("edge.up.direct.mbps", rnd),
              target="≥ 0.9", check=lambda x: x >= 0.9)  # fmt: skip
    for key, label in (("direct", "straight to the API"), ("edge", "through the edge")):
        r.metric(up, f"{label}: CPU per GiB, API / nginx / curl", f"edge.up.{key}.cpu",
                 "s / s / s", digits=2)  # fmt: skip
        r.metric(up, f"{label}: cores busy (of {os.cpu_count()})", f"edge.up.{key}.busy",
                 "cores", digits=2)  # fmt: skip
