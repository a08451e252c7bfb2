"""Make this node's media volume agree with the rows, both ways. Part of ``cleanup``.

Files → rows. A file ``<uid[:2]>/<uid>`` (or its ``.preview.jpg``) whose ctime is older than
``orphan_grace_s`` goes when
- no row has its uid: the process that renamed it died before its row was committed. The
  commit window (db/commit_window.py) makes sure it is not a commit still on its way; the grace
  period only spares the database a look-up for fresh files, and covers other SQLite processes;
- its row says it is not here (``local = false``) and either the file is deleted or the cloud
  copy is confirmed: an eviction or purge died between its row update and its unlink, or ran
  on a node that does not hold the file. A live file with ``local = false`` and no confirmed
  cloud copy is kept: it may be the only copy.
A preview goes with no row, or once its row is a tombstone whose purge is done.

Rows → files. A live row that says its local copy is on this volume (``local = true``,
``volume`` = ours) but whose file is missing:
- if the cloud copy is confirmed (size and the sha256 the store reports), the row becomes
  ``local = false`` (and ``uploaded``, if the push finished without recording it), so
  downloads stream from the cloud;
- otherwise the bytes are lost: logged at ERROR on every run and the row is left as it is (a
  volume mounted late brings the file back). Downloads answer 503, the push ends ``failed``.
Rows without a ``volume`` (made before it was recorded) are not judged.

Thumbnails. The cache directory of a file that is gone (or has no row) goes once it has been
left alone for ``orphan_grace_s``: the purge removed it, but a render that was under way then
wrote into it again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from mediasvc.db import repository
from mediasvc.db.models import CloudStatus, FileRecord
from mediasvc.ids import is_valid_uid
from mediasvc.jobs.context import JobContext
from mediasvc.storage.cloud import CloudError, key_for
from mediasvc.storage.cloud.base import PREVIEW_SUFFIX
from mediasvc.storage.local import LocalStore

logger = logging.getLogger(__name__)

AUDIT_BATCH = 500
SHARD_NAME_CHARS = 2


@dataclass(slots=True)
class VolumeReport:
    swept: list[Path] = field(default_factory=list)  # files no row claims (any more)
    relocated: list[str] = field(default_factory=list)  # rows now served from the cloud
    lost: list[str] = field(default_factory=list)  # rows whose only copy is missing


@dataclass(frozen=True, slots=True)
class _OnDisk:
    uid: str
    path: Path
    preview: bool


async def audit_volume(ctx: JobContext, *, now_s: float) -> VolumeReport:
    report = VolumeReport()
    cutoff_s = now_s - ctx.config.orphan_grace_s
    for shard in await anyio.to_thread.run_sync(_shards, ctx.store.root):
        files = await anyio.to_thread.run_sync(_settled_files, shard, cutoff_s)
        for start in range(0, len(files), AUDIT_BATCH):
            await _sweep_unclaimed(ctx, files[start : start + AUDIT_BATCH], report)
    await _audit_local_rows(ctx, report)
    await _sweep_thumbnails(ctx, cutoff_s, report)
    return report


async def _sweep_thumbnails(ctx: JobContext, cutoff_s: float, report: VolumeReport) -> None:
    cache = ctx.store.thumbnails
    uids = await anyio.to_thread.run_sync(lambda: cache.uids(settled_before_s=cutoff_s))
    for start in range(0, len(uids), AUDIT_BATCH):
        batch = set(uids[start : start + AUDIT_BATCH])
        async with ctx.db.session() as session:
            rows = await repository.claims(session, batch)
        for uid in sorted(batch):
            row = rows.get(uid)
            if row is None or row.gone_reason is not None:
                await anyio.to_thread.run_sync(cache.remove, uid)
                logger.info("removed the thumbnails of %s: the file is gone", uid)
                report.swept.append(cache.root / uid)


def _shards(root: Path) -> list[Path]:
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    return [
        Path(entry.path)
        for entry in entries
        if len(entry.name) == SHARD_NAME_CHARS and entry.is_dir(follow_symlinks=False)
    ]


def _settled_files(shard: Path, cutoff_s: float) -> list[_OnDisk]:
    """Our files in ``shard`` untouched (ctime: write, rename, link) since ``cutoff_s``."""
    found = []
    for entry in os.scandir(shard):
        preview = entry.name.endswith(PREVIEW_SUFFIX)
        uid = entry.name.removesuffix(PREVIEW_SUFFIX) if preview else entry.name
        if not is_valid_uid(uid) or not uid.startswith(shard.name):
            continue  # not a name we make: never ours to remove
        try:
            if entry.stat(follow_symlinks=False).st_ctime > cutoff_s:
                continue
        except FileNotFoundError:
            continue
        found.append(_OnDisk(uid, Path(entry.path), preview))
    return found


async def _sweep_unclaimed(ctx: JobContext, files: list[_OnDisk], report: VolumeReport) -> None:
    async with ctx.db.session() as session:
        rows = await repository.claims(session, {f.uid for f in files})
    for file in files:
        row = rows.get(file.uid)
        if row is None:
            if await _remove_rowless(ctx, file):
                logger.warning(
                    "removed %s: no row claims it (a commit that never finished)", file.path
                )
                report.swept.append(file.path)
        elif _unclaimed(file, row) and await anyio.to_thread.run_sync(_remove, ctx.store, file):
            logger.info("removed %s: its row says the local copy is gone", file.path)
            report.swept.append(file.path)


def _unclaimed(file: _OnDisk, row: Any) -> bool:
    if file.preview:
        return row.gone_reason is not None and not row.local  # a tombstone, purged
    return not row.local and (
        row.gone_reason is not None or row.cloud_status == CloudStatus.UPLOADED.value
    )


async def _remove_rowless(ctx: JobContext, file: _OnDisk) -> bool:
    """Unlink a file without a row, unless its row is being committed right now."""
    async with ctx.db.session() as session:
        if not await ctx.db.commit_window.try_sweeping(session, file.uid):
            return False  # renamed, its INSERT still on its way: not ours
        if await repository.exists(session, file.uid):
            return False  # committed between our first look and the lock
        # Unlinked while the lock is held, so no commit of this uid can finish meanwhile.
        return await anyio.to_thread.run_sync(_remove, ctx.store, file)


async def _audit_local_rows(ctx: JobContext, report: VolumeReport) -> None:
    volume = await anyio.to_thread.run_sync(lambda: ctx.store.volume_id)
    after = ""
    while True:
        async with ctx.db.session() as session:
            records = await repository.local_on_volume(
                session, volume, after=after, limit=AUDIT_BATCH
            )
        if not records:
            return
        after = records[-1].uid
        paths = [ctx.store.path_for(record.uid) for record in records]
        missing = await anyio.to_thread.run_sync(_missing, paths)
        for record, path in zip(records, paths, strict=True):
            if path in missing:
                await _settle_missing(ctx, record, report)


def _missing(paths: list[Path]) -> set[Path]:
    """The paths that do not exist; any other stat error is no proof of absence."""
    gone = set()
    for path in paths:
        try:
            path.stat()
        except FileNotFoundError:
            gone.add(path)
        except OSError as exc:
            logger.warning("cannot tell whether %s exists: %s", path, exc)
    return gone


async def _settle_missing(ctx: JobContext, record: FileRecord, report: VolumeReport) -> None:
    key = record.cloud_path or key_for(record.uid)
    try:
        info = await ctx.cloud.stat(key)
    except CloudError as exc:
        logger.warning("local copy of %s is missing; cloud stat failed: %s", record.uid, exc)
        return
    if info is None or info.size != record.size or info.sha256 != record.sha256:
        logger.error(
            "LOST: %s (%d bytes) has no local copy at %s and no confirmed cloud copy (%s); "
            "downloads answer 503 until the file comes back",
            record.uid,
            record.size,
            ctx.store.path_for(record.uid),
            info,
        )
        report.lost.append(record.uid)
        return
    async with ctx.db.session() as session:
        relocated = await repository.relocate_to_cloud(session, record.uid, key, datetime.now(UTC))
    if relocated:
        logger.warning("local copy of %s is missing: served from the cloud copy now", record.uid)
        report.relocated.append(record.uid)


def _remove(store: LocalStore, file: _OnDisk) -> bool:
    """Unlink a file found on the volume (blocking); True if it was there."""
    return store.remove_preview(file.uid) if file.preview else store.remove(file.uid)
