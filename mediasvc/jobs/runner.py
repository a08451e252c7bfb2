"""Run one job and enqueue what it hands back: the same steps on arq and in-process.

A job returns its follow-ups (jobs/kinds.py); the runner enqueues them in order and stops at the
first one refused. A refusal means the queue is down (every follow-up is a job of a fresh file or
of a kind not queued yet), so the rest would only wait for the same timeout; the reconciler finds
them all once the queue is back. Retries are the backend's: arq raises ``Retry``, the in-process
queue sleeps.
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
