"""The arq worker: ``mediasvc worker`` (or ``arq mediasvc.jobs.worker.WorkerSettings``).

Its functions and crons are the rows of jobs/table.py, each run through jobs/runner.py; the
follow-ups a job returns go to the same Redis.
"""

from __future__ import annotations

from typing import Any

from arq import Retry, cron
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.typing import WorkerCoroutine
from arq.worker import Function, func

from mediasvc import libc
from mediasvc.config import Settings
from mediasvc.events.deliver import enqueue_after_commit
from mediasvc.jobs.config import JobsConfig
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import Enqueue, Kind
from mediasvc.jobs.queue import enqueue_on
from mediasvc.jobs.runner import run_job
from mediasvc.jobs.table import CRONS, JOBS, CronSpec, JobSpec

CONTEXT_KEY = "mediasvc"
ArqContext = dict[str, Any]

# glibc's mallopt parameter; fixing it also turns off glibc's dynamic threshold.
M_MMAP_THRESHOLD = -3
WORKER_MMAP_THRESHOLD_BYTES = 512 * 1024


def bound_malloc_for_pushes() -> None:
    """Give every buffer of 512 KiB or more its own mapping, returned to the kernel on free.

    A push moves 1 MiB chunks into 8 MiB parts on obstore's threads; with glibc's dynamic
    threshold those buffers come from arenas that fragment, and the worker's peak RSS is not
    bounded (docs/performance.md has the figures). Nothing to do outside glibc.
    """
    mallopt = libc.mallopt()
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, WORKER_MMAP_THRESHOLD_BYTES)


def _enqueue_from(ctx: ArqContext) -> Enqueue:
    async def enqueue(kind: Kind, uid: str) -> bool:
        return await enqueue_on(ctx["redis"], kind, uid)

    return enqueue


def arq_job(spec: JobSpec) -> WorkerCoroutine:
    """The arq coroutine of a job spec: run it, enqueue its follow-ups, retry when it asks."""

    async def job(ctx: ArqContext, uid: str) -> str:
        result = await run_job(
            spec, ctx[CONTEXT_KEY], uid, attempt=ctx["job_try"], enqueue=_enqueue_from(ctx)
        )
        if result.retry_in_s is not None:
            raise Retry(defer=result.retry_in_s)  # arq retries only on Retry (docs/facts.md)
        return result.status

    job.__qualname__ = job.__name__ = spec.kind.value
    return job


def arq_cron(spec: CronSpec) -> WorkerCoroutine:
    async def job(ctx: ArqContext) -> Any:
        return await spec.run(ctx[CONTEXT_KEY], _enqueue_from(ctx))

    job.__qualname__ = job.__name__ = f"{spec.name}_job"
    return job


ARQ_CRONS = {spec.name: arq_cron(spec) for spec in CRONS}
cleanup_job = ARQ_CRONS["cleanup"]
reconcile_job = ARQ_CRONS["reconcile"]


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
    config = JobsConfig.from_settings(settings)

    async def on_startup(arq_ctx: ArqContext) -> None:
        bound_malloc_for_pushes()  # before any push allocates (see the function)
        job_ctx = JobContext.build(settings)
        enqueue_after_commit(job_ctx.db, _enqueue_from(arq_ctx))
        arq_ctx[CONTEXT_KEY] = job_ctx

    async def on_shutdown(arq_ctx: ArqContext) -> None:
        job_ctx: JobContext | None = arq_ctx.get(CONTEXT_KEY)
        if job_ctx is not None:
            await job_ctx.cloud.close()
            await job_ctx.db.dispose()

    functions: list[Function] = [
        func(
            arq_job(spec),
            name=spec.kind.value,
            keep_result=0,  # a kept result would block the next job of this id (jobs/table.py)
            max_tries=spec.max_tries(config),
            timeout=spec.timeout_s(config),
        )
        for spec in JOBS.values()
    ]
    cron_jobs: list[CronJob] = [
        cron(
            ARQ_CRONS[spec.name],
            name=spec.name,
            timeout=spec.timeout_s(config),
            **schedule(spec.every_s(config)),
        )
        for spec in CRONS
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
