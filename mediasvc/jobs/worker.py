"""The arq worker: ``mediasvc worker`` (or ``arq mediasvc.jobs.worker.WorkerSettings``).

Functions: ``push_to_cloud``, ``probe_media``, ``remux_faststart``; cron: ``cleanup`` and
``reconcile`` on schedules from settings.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

from arq import Retry, cron
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Function, func

from mediasvc.config import Settings
from mediasvc.jobs.cleanup import cleanup
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.probe import probe_file
from mediasvc.jobs.push import push_file
from mediasvc.jobs.queue import (
    PROBE_FUNCTION,
    PUSH_FUNCTION,
    REMUX_FUNCTION,
    enqueue_probe_on,
    enqueue_push_on,
    enqueue_remux_on,
)
from mediasvc.jobs.reconcile import reconcile, reconcile_probes
from mediasvc.jobs.remux import remux_file

CONTEXT_KEY = "mediasvc"

# glibc's mallopt parameter; fixing it also turns off glibc's dynamic threshold.
M_MMAP_THRESHOLD = -3
WORKER_MMAP_THRESHOLD_BYTES = 512 * 1024


def bound_malloc_for_pushes() -> None:
    """Give every buffer of 512 KiB or more its own mapping, returned to the kernel on free.

    A push moves 1 MiB chunks (Python) into 8 MiB parts (obstore's threads). glibc's dynamic
    mmap threshold rises after the first large free, and then those buffers come from the
    heap and the threads' arenas instead, which fragment: over 1 GiB pushes the worker's peak
    RSS varied 119-155 MiB from run to run (issue 3's limit is 150 MB). With a fixed threshold it
    stayed at ~121 MiB every run, at the same throughput (tests/test_topology.py). Nothing to do
    outside glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(M_MMAP_THRESHOLD, WORKER_MMAP_THRESHOLD_BYTES)


async def push_to_cloud(ctx: dict[str, Any], uid: str) -> str:
    job_ctx: JobContext = ctx[CONTEXT_KEY]
    outcome = await push_file(job_ctx, uid, attempt=ctx["job_try"])
    if outcome.retry_in_s is not None:
        raise Retry(defer=outcome.retry_in_s)  # arq retries only on Retry (docs/facts.md)
    return outcome.status


async def probe_media(ctx: dict[str, Any], uid: str) -> str:
    outcome = await probe_file(ctx[CONTEXT_KEY], uid)
    if outcome.remux:
        await enqueue_remux_on(ctx["redis"], uid)
    return outcome.status


async def remux_faststart(ctx: dict[str, Any], uid: str) -> str | None:
    derived_uid = await remux_file(ctx[CONTEXT_KEY], uid)
    if derived_uid is not None:
        # A new file like any upload: pushed to the cloud and probed (the reconciler would
        # find both if Redis dropped them).
        await enqueue_push_on(ctx["redis"], derived_uid)
        await enqueue_probe_on(ctx["redis"], derived_uid)
    return derived_uid


async def cleanup_job(ctx: dict[str, Any]) -> dict[str, int]:
    report = await cleanup(ctx[CONTEXT_KEY])
    return {
        "expired": report.expired,
        "purged": len(report.purged),
        "evicted": len(report.evicted),
        "swept_parts": report.swept_parts,
        "swept_orphans": len(report.volume.swept),
        "relocated": len(report.volume.relocated),
        "lost": len(report.volume.lost),
        "swept_bucket_temps": report.swept_bucket_temps,
    }


async def reconcile_job(ctx: dict[str, Any]) -> int:
    redis = ctx["redis"]

    async def enqueue(uid: str) -> bool:
        return await enqueue_push_on(redis, uid)

    async def enqueue_probe(uid: str) -> bool:
        return await enqueue_probe_on(redis, uid)

    pushes = await reconcile(ctx[CONTEXT_KEY], enqueue)
    await reconcile_probes(ctx[CONTEXT_KEY], enqueue_probe)
    return pushes


def schedule(every_s: int) -> dict[str, Any]:
    """arq cron fields for 'every N seconds', rounded to steps that divide the minute or hour."""
    if every_s < 60:
        return {"second": set(range(0, 60, every_s)), "minute": None}
    step_min = max(1, every_s // 60)
    return {"second": 0, "minute": set(range(0, 60, step_min))}


def worker_settings(settings: Settings) -> type:
    """An arq WorkerSettings class for these settings."""
    if not settings.redis_url:
        raise SystemExit("MEDIASVC_REDIS_URL is not set: the arq worker needs Redis")

    async def on_startup(ctx: dict[str, Any]) -> None:
        bound_malloc_for_pushes()  # before any push allocates (see the function)
        ctx[CONTEXT_KEY] = JobContext.build(settings)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        job_ctx: JobContext | None = ctx.get(CONTEXT_KEY)
        if job_ctx is not None:
            await job_ctx.cloud.close()
            await job_ctx.db.dispose()

    functions: list[Function] = [
        func(
            push_to_cloud,
            name=PUSH_FUNCTION,
            # Keep no result: arq:result:<id> would block re-enqueueing this uid later.
            keep_result=0,
            # Our own code decides when to give up (push_max_tries); this is only a backstop
            # for tries arq counts itself, such as a worker killed mid-push.
            max_tries=settings.push_max_tries + 2,
            timeout=settings.push_timeout_s,
        ),
        func(
            probe_media,
            name=PROBE_FUNCTION,
            keep_result=0,  # as for pushes: a result would block the reconciler's re-enqueue
            max_tries=3,  # a worker killed mid-probe; the job itself never raises Retry
            # ffprobe, the atom walk and up to two preview renders (each bounded by
            # probe_timeout_s), then the preview's put to the cloud; capped like the crons
            # below, so it never holds a killed push back.
            timeout=min(
                math.ceil(3 * settings.probe_timeout_s + settings.s3_timeout_s),
                settings.push_timeout_s,
            ),
        ),
        func(
            remux_faststart,
            name=REMUX_FUNCTION,
            keep_result=0,
            max_tries=2,
            # ffmpeg (bounded by remux_timeout_s), then hashing the copy once more; capped
            # as above.
            timeout=min(2 * settings.remux_timeout_s, settings.push_timeout_s),
        ),
    ]
    # arq keeps every job's in-progress key for the longest timeout of ANY function + 10 s, cron
    # jobs included; a job of a killed worker runs again only once that key expires (and
    # reconcile cannot enqueue it meanwhile: its job key still exists). Probe, remux and cron
    # timeouts are capped at push_timeout_s for this reason. Cron timeouts above
    # push_timeout_s would hold a killed push back that long (1 h with the old fixed 3600 s
    # here, whatever push_timeout_s said), so they are capped at the push timeout.
    cleanup_timeout_s = min(3600, settings.push_timeout_s)
    reconcile_timeout_s = min(600, settings.push_timeout_s)
    cron_jobs: list[CronJob] = [
        cron(
            cleanup_job,
            name="cleanup",
            timeout=cleanup_timeout_s,
            **schedule(settings.cleanup_every_s),
        ),
        cron(
            reconcile_job,
            name="reconcile",
            timeout=reconcile_timeout_s,
            **schedule(settings.reconcile_every_s),
        ),
    ]
    return type(
        "WorkerSettings",
        (),
        {
            "functions": functions,
            "cron_jobs": cron_jobs,
            "on_startup": on_startup,
            "on_shutdown": on_shutdown,
            "redis_settings": RedisSettings.from_dsn(settings.redis_url),
            "max_jobs": 4,
            "handle_signals": True,
            "health_check_interval": 30,
        },
    )


def __getattr__(name: str) -> Any:
    # `arq mediasvc.jobs.worker.WorkerSettings` builds the class from the environment on demand,
    # so importing this module does no work.
    if name == "WorkerSettings":
        return worker_settings(Settings())
    raise AttributeError(name)
