"""Every job and cron, once: name, job id, coroutine, timeout, tries, schedule.

The arq worker (jobs/worker.py) and the in-process queue (jobs/queue.py) both read this table and
run every job through jobs/runner.py, so a job behaves the same on either. A new kind of job is a
``Kind``, a coroutine that returns a ``JobResult`` and one row here.

Job ids: one per file and kind (``push:<uid>``), so a second copy of a job is refused while one is
queued or running. arq would also refuse it while a result ``arq:result:<id>`` is kept, which
would block the reconciler's later retry: no job keeps a result.

Timeouts: arq keeps every job's in-progress key for the longest timeout of ANY function (crons
included) + 10 s, and a job of a killed worker runs again only once that key expires (the
reconciler cannot enqueue it meanwhile: its job key still exists). So every timeout here is capped
at ``push_timeout_s``: a longer one would hold a killed push back that long.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mediasvc.events.deliver import deliver_job
from mediasvc.events.deliver import timeout_s as deliver_timeout_s
from mediasvc.imports.job import import_job
from mediasvc.jobs.cleanup import cleanup
from mediasvc.jobs.config import JobsConfig
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import Enqueue, JobResult, Kind
from mediasvc.jobs.probe import probe_job
from mediasvc.jobs.push import push_job
from mediasvc.jobs.reconcile import reconcile
from mediasvc.jobs.remux import remux_job
from mediasvc.jobs.transcode import transcode_job


class JobFunction(Protocol):
    """One try of a job on a file; ``attempt`` counts from 1."""

    def __call__(self, ctx: JobContext, uid: str, *, attempt: int) -> Awaitable[JobResult]: ...


CronFunction = Callable[[JobContext, Enqueue], Awaitable[Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    kind: Kind
    id_prefix: str
    run: JobFunction
    timeout_s: Callable[[JobsConfig], int]
    #: Tries arq counts itself (a worker killed mid-job); the job's own retries are below these.
    max_tries: Callable[[JobsConfig], int]
    #: Runs ffprobe/ffmpeg: in-process, at most ``IN_PROCESS_MEDIA_JOBS`` such jobs at once.
    media_tool: bool = False

    def job_id(self, uid: str) -> str:
        return f"{self.id_prefix}:{uid}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CronSpec:
    name: str
    run: CronFunction
    every_s: Callable[[JobsConfig], int]
    timeout_s: Callable[[JobsConfig], int]


# A queued transcode waits for a slot by asking to run again every few seconds: many tries.
TRANSCODE_MAX_TRIES = 10_000


def _probe_timeout_s(config: JobsConfig) -> int:
    # ffprobe, the atom walk and up to two preview renders (each bounded by probe_timeout_s),
    # then the preview's put to the cloud.
    return min(
        math.ceil(3 * config.probe_timeout_s + config.cloud_request_timeout_s),
        config.push_timeout_s,
    )


def _remux_timeout_s(config: JobsConfig) -> int:
    # ffmpeg (bounded by remux_timeout_s), then hashing the copy once more.
    return min(2 * config.remux_timeout_s, config.push_timeout_s)


JOBS: dict[Kind, JobSpec] = {
    spec.kind: spec
    for spec in (
        JobSpec(
            kind=Kind.PUSH,
            id_prefix="push",
            run=push_job,
            timeout_s=lambda config: config.push_timeout_s,
            # The job decides when to give up (push_max_tries); this is only a backstop.
            max_tries=lambda config: config.push_max_tries + 2,
        ),
        JobSpec(
            kind=Kind.PROBE,
            id_prefix="probe",
            run=probe_job,
            timeout_s=_probe_timeout_s,
            max_tries=lambda config: 3,  # the job itself never asks for a retry
            media_tool=True,
        ),
        JobSpec(
            kind=Kind.DELIVER,
            id_prefix="deliver",
            run=deliver_job,
            timeout_s=deliver_timeout_s,
            # Each wait for a backoff or an earlier event is a try to arq; the job decides when
            # a delivery is dead (webhook_max_tries), and the reconciler re-enqueues what is owed.
            max_tries=lambda config: 1000,
        ),
        JobSpec(
            kind=Kind.IMPORT,
            id_prefix="import",
            run=import_job,
            timeout_s=lambda config: config.push_timeout_s,  # a whole file's transfer
            max_tries=lambda config: 3,
        ),
        JobSpec(
            kind=Kind.REMUX,
            id_prefix="remux",
            run=remux_job,
            timeout_s=_remux_timeout_s,
            max_tries=lambda config: 2,
            media_tool=True,
        ),
        JobSpec(
            kind=Kind.TRANSCODE,
            id_prefix="transcode",
            run=transcode_job,
            # Each ffmpeg run has its own wall time, proportional to the duration
            # (media/encode.py); this is the backstop of the whole job.
            timeout_s=lambda config: config.push_timeout_s,
            # A job that finds no free slot asks to run again (each time a try); the runs cut
            # by a crash are counted in the row (transcode_max_attempts).
            max_tries=lambda config: TRANSCODE_MAX_TRIES,
            media_tool=True,
        ),
    )
}


async def cleanup_cron(ctx: JobContext, enqueue: Enqueue) -> dict[str, int]:
    """Expire, purge, evict, sweep, audit the volume; the counts, for arq's log."""
    report = await cleanup(ctx)
    return {
        "expired": report.expired,
        "forgotten_events": report.forgotten_events,
        "purged": len(report.purged),
        "evicted": len(report.evicted),
        "swept_parts": report.swept_parts,
        "expired_uploads": report.expired_uploads,
        "swept_uploads": report.swept_uploads,
        "swept_orphans": len(report.volume.swept),
        "relocated": len(report.volume.relocated),
        "lost": len(report.volume.lost),
        "swept_bucket_temps": report.swept_bucket_temps,
    }


CRONS: tuple[CronSpec, ...] = (
    CronSpec(
        name="cleanup",  # the volume audit is part of it (jobs/volume_audit.py)
        run=cleanup_cron,
        every_s=lambda config: config.cleanup_every_s,
        timeout_s=lambda config: min(3600, config.push_timeout_s),
    ),
    CronSpec(
        name="reconcile",
        run=reconcile,
        every_s=lambda config: config.reconcile_every_s,
        timeout_s=lambda config: min(600, config.push_timeout_s),
    ),
)
