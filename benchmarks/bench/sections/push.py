"""Section push: one file pushed by `mediasvc worker` to s3rver, MB/s, CPU and RSS."""

from __future__ import annotations

from bench.base import MB, MiB, log
from bench.context import Run
from bench.mediasvc_ops import mediasvc_delete, mediasvc_upload, start_worker, wait_pushed
from bench.procfs import cpu_seconds, reset_peak, status_kb
from bench.services import flush_redis


def section_push(r: Run) -> None:
    cfg = r.cfg
    title = f"cloud push {cfg.push_size // MiB} MiB → s3rver"
    flush_redis(r.redis_dbs[0])  # the upload sections' queued pushes (their files are deleted)
    worker = start_worker(r, r.env_single, r.tmp / "single", "push-worker")
    s3rver = r.servers["s3rver"]
    r.meta["push_worker_rss_idle_mb"] = status_kb(worker.pid, "VmRSS") * 1024 / MB
    try:
        for rnd in range(cfg.rounds):
            reset_peak(worker.pid)
            before = status_kb(worker.pid, "VmRSS")
            meta = mediasvc_upload(r, r.files["push"])
            cpu0: list[float] = []

            def on_start(cpu0: list[float] = cpu0) -> None:
                cpu0.extend((cpu_seconds(worker.pid), cpu_seconds(s3rver.pid)))

            t_start, t_end = wait_pushed(
                r.servers["mediasvc"].base, meta["uid"], timeout=900, on_start=on_start
            )
            peak = status_kb(worker.pid, "VmHWM")
            took = t_end - t_start
            mbps = cfg.push_size / took / MB
            r.samples.put("push.mbps", rnd, mbps)
            r.samples.put("push.rss", rnd, (peak * 1024 / MB, (peak - before) * 1024 / MB))
            if cpu0:
                r.samples.put(
                    "push.cpu",
                    rnd,
                    (
                        (cpu_seconds(worker.pid) - cpu0[0]) / took * 100,
                        (cpu_seconds(s3rver.pid) - cpu0[1]) / took * 100,
                    ),
                )
            log(f"{title} r{rnd + 1}: {mbps:,.0f} MB/s, worker peak {peak / 1024:.0f} MiB")
            mediasvc_delete(r.servers["mediasvc"].base, meta)
        # The download section's cloud copy is pushed by the same worker (not a measured figure).
        meta = mediasvc_upload(r, r.files["data"], name="cloud.bin")
        t_start, t_end = wait_pushed(r.servers["mediasvc"].base, meta["uid"], timeout=1800)
        r.meta["push_of_download_file_mbps"] = cfg.size / (t_end - t_start) / MB
        r.uids["cloud"] = meta["uid"]
        speed = r.meta["push_of_download_file_mbps"]
        log(f"pushed the {cfg.size_label} download file: {speed:,.0f} MB/s")
    finally:
        r.children.stop(worker)
    r.metric(title, "push MB/s (uploading → uploaded)", "push.mbps", "MB/s")
    r.metric(title, "CPU during the push: worker / s3rver", "push.cpu", "% / %")
    r.derived(
        title,
        "worker peak RSS / growth",
        lambda rnd: r.v("push.rss", rnd),
        "MB",
        digits=0,
    )
    r.derived(
        title,
        "worker peak RSS",
        lambda rnd: r.v("push.rss", rnd)[0],
        "MB",
        digits=0,
        target="< 150 MB (worst round)",
        check=lambda x: x < 150,
        worst="max",
    )
