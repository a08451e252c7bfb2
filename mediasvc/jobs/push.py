"""push_to_cloud: copy a file's bytes to the cloud store, verified, and record it on the row.

States: pending → uploading → uploaded, or → failed after ``push_max_tries`` transient errors
(the error is kept on the row; the reconciler tries failed pushes again later). Idempotent: a
push of a file already uploaded, deleted or unknown does nothing, so duplicate or replayed jobs
(a worker killed mid-push runs the job again) are harmless; the cloud store's put replaces any
partial object and aborts its own multipart upload on failure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio

from mediasvc.db import repository
from mediasvc.db.models import CloudStatus
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import JobResult
from mediasvc.storage.cloud import CloudError, key_for

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What the queue should do next: nothing, or run the job again after ``retry_in_s``."""

    status: str
    retry_in_s: float | None = None


def backoff_s(attempt: int, *, base_s: float, max_s: float) -> float:
    """Exponential backoff: base, 2·base, 4·base … capped at max."""
    return float(min(max_s, base_s * 2 ** max(0, attempt - 1)))


async def push_file(ctx: JobContext, uid: str, *, attempt: int) -> PushOutcome:
    """One attempt at pushing ``uid``; ``attempt`` counts from 1."""
    config = ctx.config
    async with ctx.db.session() as session:
        record = await repository.get(session, uid)
    if record is None or record.gone_reason is not None:
        return PushOutcome("skipped")
    if record.cloud_status == CloudStatus.UPLOADED.value:
        return PushOutcome(CloudStatus.UPLOADED.value)
    if not record.local:
        # Not uploaded and no local copy: cleanup never does this; nothing we can push.
        await _set_status(ctx, uid, CloudStatus.FAILED, error="no local copy to push")
        return PushOutcome(CloudStatus.FAILED.value)
    await _set_status(ctx, uid, CloudStatus.UPLOADING, attempts=attempt)

    key = key_for(uid)
    try:
        await ctx.cloud.put_file(
            key, ctx.store.path_for(uid), size=record.size, sha256=record.sha256
        )
    except (CloudError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        if attempt >= config.push_max_tries:
            logger.warning("push of %s failed for good after %d tries: %s", uid, attempt, error)
            await _set_status(ctx, uid, CloudStatus.FAILED, error=error)
            return PushOutcome(CloudStatus.FAILED.value)
        delay_s = backoff_s(
            attempt, base_s=config.push_backoff_base_s, max_s=config.push_backoff_max_s
        )
        logger.info("push of %s failed (try %d), again in %.0f s: %s", uid, attempt, delay_s, error)
        await _set_status(ctx, uid, CloudStatus.PENDING, error=error)
        return PushOutcome(CloudStatus.PENDING.value, retry_in_s=delay_s)

    async with ctx.db.session() as session:
        recorded = await repository.mark_uploaded(session, uid, key, datetime.now(UTC))
    if not recorded:
        # Deleted or expired while we pushed: the object must not outlive the row.
        with anyio.CancelScope(shield=True):
            await ctx.cloud.delete(key)
        return PushOutcome("skipped")
    return PushOutcome(CloudStatus.UPLOADED.value)


async def push_job(ctx: JobContext, uid: str, *, attempt: int) -> JobResult:
    """The job: one attempt; no follow-ups, perhaps a retry after a backoff."""
    outcome = await push_file(ctx, uid, attempt=attempt)
    return JobResult(outcome.status, retry_in_s=outcome.retry_in_s)


async def _set_status(
    ctx: JobContext,
    uid: str,
    status: CloudStatus,
    *,
    error: str | None = None,
    attempts: int | None = None,
) -> None:
    async with ctx.db.session() as session:
        await repository.set_cloud_status(
            session, uid, status, now=datetime.now(UTC), error=error, attempts=attempts
        )
