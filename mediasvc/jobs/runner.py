"""Run one job and enqueue what it hands back: the same steps on arq and in-process.

A job returns its follow-ups (jobs/kinds.py); the runner enqueues them in order and stops at the
first one refused. Every list with more than one follow-up is a fresh file's (push, probe), whose
push is refused only when the queue is down: the probe would only wait for the same timeout, and
the reconciler enqueues both once the queue is back. Retries are the backend's: arq raises
``Retry``, the in-process queue sleeps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import Enqueue, FollowUp, JobResult
from mediasvc.jobs.table import JobSpec

logger = logging.getLogger(__name__)


async def run_job(
    spec: JobSpec, ctx: JobContext, uid: str, *, attempt: int, enqueue: Enqueue
) -> JobResult:
    """One try of ``spec`` on ``uid`` within its timeout, then its follow-ups."""
    # The spec's timeout, in-process too; on arq the worker holds the job to the same one.
    async with asyncio.timeout(spec.timeout_s(ctx.config)):
        result = await spec.run(ctx, uid, attempt=attempt)
    await enqueue_all(enqueue, result.follow_ups)
    return result


async def enqueue_all(enqueue: Enqueue, follow_ups: Iterable[FollowUp]) -> int:
    """Enqueue ``follow_ups`` in order until one is refused; how many were queued."""
    queued = 0
    for follow_up in follow_ups:
        if not await enqueue(follow_up.kind, follow_up.uid):
            logger.info("%s of %s not queued; the reconciler will", follow_up.kind, follow_up.uid)
            break
        queued += 1
    return queued
