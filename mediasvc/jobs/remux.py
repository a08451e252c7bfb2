"""remux_faststart: give an MP4/MOV whose moov atom follows mdat a faststart copy.

Files are immutable (docs/design.md), so the copy is a new file with its own UID: a new row with
``derived_from`` = the original, the same name, type, owner, limits and delete token, pushed and
probed like any upload; the original's ``faststart_uid`` points to it. ffmpeg writes into
``.incoming/<new uid>.part`` (swept if we die), the bytes are hashed afterwards in bounded
chunks, fsynced and renamed into place before the row is committed, as for an upload.
Idempotent: an original that already has a live derived copy gets linked to it, not a second.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import anyio
from sqlalchemy import update

from mediasvc.db import repository
from mediasvc.db.models import CloudStatus, FileRecord, ProbeStatus
from mediasvc.errors import InsufficientStorage
from mediasvc.ids import new_uid
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import JobResult, after_new_file
from mediasvc.media.atoms import read_layout
from mediasvc.media.remux import RemuxFailed, remux_faststart
from mediasvc.storage.files import size_and_sha256

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500


async def remux_file(ctx: JobContext, uid: str) -> str | None:
    """Make the faststart copy of ``uid``; its new UID, or None if none was made."""
    async with ctx.db.session() as session:
        original = await repository.get(session, uid)
        existing = await repository.live_derived_uid(session, uid)
    if original is None or original.gone_reason is not None or not original.local:
        return None
    if original.faststart_uid is not None or (original.media or {}).get("faststart") is not False:
        return None
    if existing is not None:
        await _link(ctx, uid, existing)
        return None

    store = ctx.store
    derived_uid = new_uid()
    part = store.part_path_for(derived_uid)
    try:
        await anyio.to_thread.run_sync(store.ensure_room_for, original.size)
        await anyio.to_thread.run_sync(store.prepare)  # the .incoming directory
        await remux_faststart(
            ctx.media,
            store.path_for(uid),
            part,
            media_type=original.format,
            extension=original.extension,
        )
        size, sha256, faststart = await anyio.to_thread.run_sync(
            _seal, part, ctx.config.io_chunk_size_bytes, store.fsync
        )
        if faststart is not True:
            raise RemuxFailed("ffmpeg's output still has moov after mdat")
        volume = await anyio.to_thread.run_sync(lambda: store.volume_id)
    except (RemuxFailed, InsufficientStorage, OSError) as exc:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_unlink_quietly, part)
        logger.warning("faststart remux of %s failed: %s", uid, exc)
        await _note(ctx, uid, f"faststart remux failed: {exc}")
        return None
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_unlink_quietly, part)
        raise

    now = datetime.now(UTC)
    derived = FileRecord(
        uid=derived_uid,
        original_name=original.original_name,
        extension=original.extension,
        format=original.format,
        size=size,
        sha256=sha256,
        created_at=now,
        expires_at=original.expires_at,
        max_downloads=original.max_downloads,
        bytes_served=0,
        local=True,
        cloud_status=CloudStatus.PENDING.value,
        cloud_updated_at=now,
        cloud_attempts=0,
        delete_token_hash=original.delete_token_hash,
        owner=original.owner,
        derived_from=uid,
        probe_status=ProbeStatus.PENDING.value,
        volume=volume,
    )
    # As for an upload, rename and row share the uid's commit window (db/commit_window.py):
    # a sweep never takes the copy while its row is on its way.
    renamed = False
    try:
        async with (
            ctx.db.session() as session,
            ctx.db.commit_window.committing(session, derived_uid),
        ):
            try:
                await anyio.to_thread.run_sync(store.commit, part, derived_uid)
            except (InsufficientStorage, OSError) as exc:
                await anyio.to_thread.run_sync(_unlink_quietly, part)
                logger.warning("faststart remux of %s failed: %s", uid, exc)
                await session.rollback()
                await _note(ctx, uid, f"faststart remux failed: {exc}")
                return None
            renamed = True
            session.add(derived)
            linked = await session.execute(
                update(FileRecord)
                .where(FileRecord.uid == uid, FileRecord.gone_reason.is_(None))
                .values(faststart_uid=derived_uid)
                .returning(FileRecord.uid)
            )
            if linked.first() is None:  # the original went while we copied
                await session.rollback()
                await anyio.to_thread.run_sync(store.remove, derived_uid)
                return None
            await session.commit()
    except BaseException:
        with anyio.CancelScope(shield=True):
            if renamed:
                await anyio.to_thread.run_sync(store.remove, derived_uid)
            else:
                await anyio.to_thread.run_sync(_unlink_quietly, part)
        raise
    logger.info("faststart copy of %s is %s (%d bytes)", uid, derived_uid, size)
    return derived_uid


async def remux_job(ctx: JobContext, uid: str, *, attempt: int) -> JobResult:
    """The job: a faststart copy, then pushed and probed like any new file."""
    derived_uid = await remux_file(ctx, uid)
    if derived_uid is None:
        return JobResult("none")
    return JobResult("copied", follow_ups=after_new_file(derived_uid))


def _seal(path: Path, chunk_bytes: int, fsync: bool) -> tuple[int, str, bool | None]:
    """Size, sha256 and faststart of the finished copy, read in bounded chunks; then fsync."""
    with path.open("rb") as file:
        size, sha256 = size_and_sha256(file, chunk_bytes)
        layout = read_layout(file, size)
        if fsync:
            os.fsync(file.fileno())
    return size, sha256, layout.faststart


async def _link(ctx: JobContext, uid: str, derived_uid: str) -> None:
    async with ctx.db.session() as session:
        await repository.link_faststart(session, uid, derived_uid)


async def _note(ctx: JobContext, uid: str, error: str) -> None:
    async with ctx.db.session() as session:
        await repository.note_probe_error(session, uid, error[:MAX_ERROR_CHARS])


def _unlink_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)
