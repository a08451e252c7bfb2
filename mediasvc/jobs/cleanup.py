"""cleanup: expire, delete everywhere, evict safe local copies, sweep what crashes left, and
forget events delivered longer ago than ``event_retention_s``.

Resumable uploads past their expiry go too (mediasvc/resumable/expiry.py).

What crashes left: abandoned ``.part`` files and ``.upload`` files no upload's row claims, files
in the media root that no row claims and rows whose local copy is gone (jobs/volume_audit.py),
and temporary files of pushes killed mid-copy in the local bucket.

"Delete everywhere" covers a file's preview image, its cached thumbnails and the files derived
from it (a faststart remux, renditions, a storyboard sheet): they go with the original.

A local copy is removed only after a fresh stat of the cloud copy confirms its size and the
sha256 the store reports (a store that reports none never gets the only copy), and the row
says ``local = false`` before the file goes, so no reader is sent to a missing file.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio

from mediasvc.db import outbox, repository
from mediasvc.db.models import FileRecord
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.volume_audit import VolumeReport, audit_volume
from mediasvc.resumable.expiry import expire_uploads, sweep_orphan_uploads
from mediasvc.storage.cloud import CloudError, key_for, preview_key_for
from mediasvc.storage.local import PART_SUFFIX

logger = logging.getLogger(__name__)

CLEANUP_BATCH = 500


@dataclass(slots=True)
class CleanupReport:
    expired: int = 0
    expired_uploads: int = 0  # resumable uploads (and finished ones' rows) past their expiry
    forgotten_events: int = 0
    purged: list[str] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)
    swept_parts: int = 0
    swept_uploads: int = 0  # .upload files no unfinished (or partial) upload's row claims
    volume: VolumeReport = field(default_factory=VolumeReport)
    swept_bucket_temps: int = 0


async def cleanup(ctx: JobContext, *, now: datetime | None = None) -> CleanupReport:
    now = now or datetime.now(UTC)
    report = CleanupReport()
    report.expired = await _expire(ctx, now)
    report.expired_uploads = await expire_uploads(ctx.db, ctx.store, now, batch=CLEANUP_BATCH)
    report.forgotten_events = await _forget_events(ctx, now)
    report.purged = await _purge_gone(ctx)
    report.evicted = await _evict(ctx, now)
    report.swept_parts = await anyio.to_thread.run_sync(_sweep_parts, ctx, time.time())
    report.swept_uploads = await sweep_orphan_uploads(
        ctx.db, ctx.store, now_s=time.time(), grace_s=ctx.config.part_grace_s
    )
    report.volume = await audit_volume(ctx, now_s=time.time())
    try:
        report.swept_bucket_temps = await ctx.cloud.sweep_abandoned(
            older_than_s=ctx.config.orphan_grace_s
        )
    except CloudError as exc:
        logger.warning("sweeping the bucket's abandoned temporary files failed: %s", exc)
    return report


async def _expire(ctx: JobContext, now: datetime) -> int:
    """Turn expired live rows into tombstones (their bytes go in the purge step)."""
    async with ctx.db.session() as session:
        return await repository.expire_due(session, now)


async def _forget_events(ctx: JobContext, now: datetime) -> int:
    """Delete events delivered (or dead) longer than ``event_retention_s`` ago."""
    if not ctx.config.event_retention_s:
        return 0
    before = now - timedelta(seconds=ctx.config.event_retention_s)
    async with ctx.db.session() as session:
        return await outbox.forget_settled(session, before=before, limit=CLEANUP_BATCH)


async def _purge_gone(ctx: JobContext) -> list[str]:
    """Remove the bytes of tombstoned files, local and cloud; the tombstone row stays."""
    async with ctx.db.session() as session:
        records = await repository.tombstones_with_bytes(session, limit=CLEANUP_BATCH)
    return [record.uid for record in records if await purge(ctx, record)]


async def purge(ctx: JobContext, record: FileRecord) -> bool:
    """Remove a tombstoned file's bytes and preview from the cloud and the disk; False if the
    store is down. Files derived from it (a faststart copy) go with it.

    The cloud copies go first: a row that still says ``local`` is retried by the next run.
    """
    try:
        # The cloud copy may exist even if the row never recorded it (a push cut short).
        await ctx.cloud.delete(record.cloud_path or key_for(record.uid))
        await ctx.cloud.delete(record.preview_path or preview_key_for(record.uid))
    except CloudError as exc:
        logger.warning("cloud delete of %s failed, the next cleanup retries: %s", record.uid, exc)
        return False
    await anyio.to_thread.run_sync(ctx.store.remove, record.uid)
    await anyio.to_thread.run_sync(ctx.store.remove_preview, record.uid)
    await anyio.to_thread.run_sync(ctx.store.thumbnails.remove, record.uid)
    async with ctx.db.session() as session:
        derived = await repository.record_purge(session, record, datetime.now(UTC))
    for child in derived:
        await purge(ctx, child)
    return True


async def _evict(ctx: JobContext, now: datetime) -> list[str]:
    """Evict local copies that are safe in the cloud: old ones, then LRU while the disk is full."""
    config = ctx.config
    evicted: list[str] = []
    if config.local_retention_s:
        cutoff = now - timedelta(seconds=config.local_retention_s)
        async with ctx.db.session() as session:
            records = await repository.evictable(
                session, created_before=cutoff, limit=CLEANUP_BATCH
            )
        for record in records:
            if await _evict_one(ctx, record):
                evicted.append(record.uid)

    usage = await anyio.to_thread.run_sync(shutil.disk_usage, ctx.store.root)
    if usage.used / usage.total <= config.disk_high_watermark:
        return evicted
    bytes_to_free = usage.used - int(usage.total * config.disk_low_watermark)
    async with ctx.db.session() as session:
        candidates = await repository.evictable(session, limit=CLEANUP_BATCH)
    linked = 0
    for record in candidates:
        if bytes_to_free <= 0:
            break
        # A local copy hard-linked to the bucket's object (local bucket, same filesystem) frees
        # nothing when removed: keep it, it would only cost the local read path.
        frees = await anyio.to_thread.run_sync(ctx.store.bytes_freed_by_removing, record.uid)
        if frees == 0:
            linked += 1
            continue
        if await _evict_one(ctx, record):
            evicted.append(record.uid)
            bytes_to_free -= frees
    if bytes_to_free > 0 and linked:
        logger.warning(
            "disk above its high watermark: %d local copies share their bytes with the bucket "
            "(hard links), evicting them would free nothing",
            linked,
        )
    return evicted


async def _evict_one(ctx: JobContext, record: FileRecord) -> bool:
    key = record.cloud_path or key_for(record.uid)
    try:
        info = await ctx.cloud.stat(key)
    except CloudError as exc:
        logger.warning("not evicting %s: cloud stat failed: %s", record.uid, exc)
        return False
    # Strict: a store that cannot tell the object's sha256 never gets our only copy.
    if info is None or info.size != record.size or info.sha256 != record.sha256:
        logger.error(
            "not evicting %s: cloud copy missing, different or unverifiable (%s)", record.uid, info
        )
        return False
    async with ctx.db.session() as session:
        if not await repository.mark_evicted(session, record.uid):
            return False
    await anyio.to_thread.run_sync(ctx.store.remove, record.uid)
    return True


def _sweep_parts(ctx: JobContext, now_s: float) -> int:
    """Delete ``.part`` files nobody has written to for ``part_grace_s`` (crashed uploads)."""
    swept = 0
    try:
        entries = list(os.scandir(ctx.store.incoming))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.name.endswith(PART_SUFFIX):
            continue
        try:
            if now_s - entry.stat().st_mtime > ctx.config.part_grace_s:
                os.unlink(entry.path)
                swept += 1
        except FileNotFoundError:
            continue
    return swept
