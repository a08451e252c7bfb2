"""reconcile: the database is the truth, the queue only speeds things up.

Finds pushes that no job will finish — rows left ``pending`` when Redis was down at upload, rows
stuck ``uploading`` after a worker died, rows ``failed`` a while ago — and enqueues them again;
likewise probes still ``pending`` past the same timeout (a lost job, a preview the cloud did not
take, rows from before the probe existed), transcodes pending or running with no progress
written for as long (a lost job, a worker that died mid-run), imports still running past it,
and every event not yet settled (its delivery job was lost, or its process died between the
commit and the enqueue): a job already queued or running for it refuses the copy.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mediasvc.db import imports, outbox, repository
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import Enqueue, Kind

# At most this many pushes (and as many probes) are enqueued per run; the next run takes the rest.
RECONCILE_BATCH = 500


async def find_stuck_pushes(ctx: JobContext, *, now: datetime | None = None) -> list[str]:
    now = now or datetime.now(UTC)
    config = ctx.config
    async with ctx.db.session() as session:
        return await repository.stuck_pushes(
            session,
            stale_before=now - timedelta(seconds=config.reconcile_stale_after_s),
            failed_before=now - timedelta(seconds=config.reconcile_failed_after_s),
            limit=RECONCILE_BATCH,
        )


async def find_stuck_probes(ctx: JobContext, *, now: datetime | None = None) -> list[str]:
    now = now or datetime.now(UTC)
    stale_before = now - timedelta(seconds=ctx.config.reconcile_stale_after_s)
    async with ctx.db.session() as session:
        return await repository.stuck_probes(
            session, stale_before=stale_before, limit=RECONCILE_BATCH
        )


async def reconcile(ctx: JobContext, enqueue: Enqueue) -> int:
    """Enqueue every stuck push, then every probe left pending; how many pushes were enqueued."""
    pushes = [await enqueue(Kind.PUSH, uid) for uid in await find_stuck_pushes(ctx)]
    for uid in await find_stuck_probes(ctx):
        await enqueue(Kind.PROBE, uid)
    stale_before = datetime.now(UTC) - timedelta(seconds=ctx.config.reconcile_stale_after_s)
    async with ctx.db.session() as session:
        transcodes = await repository.stuck_processing(
            session, stale_before=stale_before, limit=RECONCILE_BATCH
        )
        owed = await outbox.unsettled(session, limit=RECONCILE_BATCH)
        running = await imports.stuck(session, stale_before=stale_before, limit=RECONCILE_BATCH)
    for uid in transcodes:
        await enqueue(Kind.TRANSCODE, uid)
    for msg_id in owed:
        await enqueue(Kind.DELIVER, msg_id)
    for uid in running:  # a job of a running import refuses the copy
        await enqueue(Kind.IMPORT, uid)
    return sum(pushes)
