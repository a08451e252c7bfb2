"""remux_faststart: give an MP4/MOV whose moov atom follows mdat a faststart copy.

Files are immutable (docs/design.md), so the copy is a new file with its own UID: a new row with
``derived_from`` = the original, the same name, type, owner, limits and delete token, pushed and
probed like any upload; the original's ``faststart_uid`` points to it. ffmpeg writes into
its part file (jobs/derive.py), committed with its row the way an upload is (ingest/commit.py).
Idempotent: an original that already has a live derived copy (other than the transcode's
products) gets linked to it, not a second.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio

from mediasvc.db import repository
from mediasvc.errors import InsufficientStorage
from mediasvc.ingest.commit import commit_part
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.derive import derived_record, make_part, public_reason
from mediasvc.jobs.kinds import JobResult, after_new_file
from mediasvc.jobs.transcode import products_of
from mediasvc.media.atoms import read_layout
from mediasvc.media.remux import RemuxFailed, remux_faststart

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500


async def remux_file(ctx: JobContext, uid: str) -> str | None:
    """Make the faststart copy of ``uid``; its new UID, or None if none was made."""
    async with ctx.db.session() as session:
        # Derived files first: a product the transcode commits meanwhile is then not among
        # them, or is listed in the processing read after (they are committed together).
        derived_uids = await repository.live_derived_uids(session, uid)
        original = await repository.get(session, uid)
    if original is None or original.gone_reason is not None or not original.local:
        return None
    if original.faststart_uid is not None or (original.media or {}).get("faststart") is not False:
        return None
    products = products_of(original.processing)
    existing = next((d for d in derived_uids if d not in products), None)
    if existing is not None:
        await _link(ctx, uid, existing)
        return None

    source = ctx.store.path_for(uid)

    async def write(target: Path) -> None:
        await remux_faststart(
            ctx.media, source, target, media_type=original.format, extension=original.extension
        )
        layout = await anyio.to_thread.run_sync(_layout, target)
        if layout is not True:
            raise RemuxFailed("ffmpeg's output still has moov after mdat")

    try:
        part, sha256 = await make_part(ctx, original.size, write)
    except (RemuxFailed, InsufficientStorage, OSError) as exc:
        logger.warning("faststart remux of %s failed: %s", uid, exc)
        await _note(ctx, uid, f"faststart remux failed: {public_reason(exc)}")
        return None
    derived = derived_record(
        ctx, original, part, sha256,
        name=original.original_name, media_type=original.format,
        extension=original.extension,
    )  # fmt: skip
    derived_uid = derived.uid
    try:
        if not await commit_part(ctx.db, part, derived, faststart_of=uid):
            return None  # the original went while we copied
    except (InsufficientStorage, OSError) as exc:  # the rename: nothing of the copy is left
        logger.warning("faststart remux of %s failed: %s", uid, exc)
        await _note(ctx, uid, f"faststart remux failed: {public_reason(exc)}")
        return None
    logger.info("faststart copy of %s is %s (%d bytes)", uid, derived_uid, part.size)
    return derived_uid


async def remux_job(ctx: JobContext, uid: str, *, attempt: int) -> JobResult:
    """The job: a faststart copy, then pushed and probed like any new file."""
    derived_uid = await remux_file(ctx, uid)
    if derived_uid is None:
        return JobResult("none")
    return JobResult("copied", follow_ups=after_new_file(derived_uid))


def _layout(path: Path) -> bool | None:
    """Whether the copy ffmpeg wrote is faststart (its boxes, read in bounded chunks)."""
    with path.open("rb") as file:
        return read_layout(file, os.fstat(file.fileno()).st_size).faststart


async def _link(ctx: JobContext, uid: str, derived_uid: str) -> None:
    async with ctx.db.session() as session:
        await repository.link_faststart(session, uid, derived_uid)


async def _note(ctx: JobContext, uid: str, error: str) -> None:
    async with ctx.db.session() as session:
        await repository.note_probe_error(session, uid, error[:MAX_ERROR_CHARS])
