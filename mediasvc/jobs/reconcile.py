"""reconcile: the database is the truth, the queue only speeds things up.

Finds pushes that no job will finish — rows left ``pending`` when Redis was down at upload, rows
stuck ``uploading`` after a worker died, rows ``failed`` a while ago — and enqueues them again;
likewise probes still ``pending`` past the same timeout (a lost job, a preview the cloud did not
take, rows from before the probe existed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_, select

from mediasvc.db.models import CloudStatus, FileRecord, ProbeStatus
from mediasvc.jobs.context import JobContext

# At most this many pushes are enqueued per run; the next run takes the rest.
RECONCILE_BATCH = 500

EnqueuePush = Callable[[str], Awaitable[bool]]
EnqueueProbe = Callable[[str], Awaitable[bool]]


async def find_stuck_pushes(ctx: JobContext, *, now: datetime | None = None) -> list[str]:
    now = now or datetime.now(UTC)
    settings = ctx.settings
    stale = now - timedelta(seconds=settings.reconcile_stale_after_s)
    failed_long_ago = now - timedelta(seconds=settings.reconcile_failed_after_s)
    query = (
        select(FileRecord.uid)
        .where(
            FileRecord.gone_reason.is_(None),
            FileRecord.local.is_(True),
            or_(
                and_(
                    FileRecord.cloud_status.in_(
                        [CloudStatus.PENDING.value, CloudStatus.UPLOADING.value]
                    ),
                    FileRecord.cloud_updated_at <= stale,
                ),
                and_(
                    FileRecord.cloud_status == CloudStatus.FAILED.value,
                    FileRecord.cloud_updated_at <= failed_long_ago,
                ),
            ),
        )
        .order_by(FileRecord.cloud_updated_at)
        .limit(RECONCILE_BATCH)
    )
    async with ctx.db.session() as session:
        return list((await session.scalars(query)).all())


async def find_stuck_probes(ctx: JobContext, *, now: datetime | None = None) -> list[str]:
    now = now or datetime.now(UTC)
    stale = now - timedelta(seconds=ctx.settings.reconcile_stale_after_s)
    since = func.coalesce(FileRecord.probe_updated_at, FileRecord.created_at)
    query = (
        select(FileRecord.uid)
        .where(
            FileRecord.gone_reason.is_(None),
            FileRecord.probe_status == ProbeStatus.PENDING.value,
            since <= stale,
        )
        .order_by(since)
        .limit(RECONCILE_BATCH)
    )
    async with ctx.db.session() as session:
        return list((await session.scalars(query)).all())


async def reconcile(ctx: JobContext, enqueue_push: EnqueuePush) -> int:
    """Enqueue every stuck push; returns how many were enqueued."""
    enqueued = 0
    for uid in await find_stuck_pushes(ctx):
        if await enqueue_push(uid):
            enqueued += 1
    return enqueued


async def reconcile_probes(ctx: JobContext, enqueue_probe: EnqueueProbe) -> int:
    """Enqueue every probe left pending; returns how many were enqueued."""
    enqueued = 0
    for uid in await find_stuck_probes(ctx):
        if await enqueue_probe(uid):
            enqueued += 1
    return enqueued
