"""remux_faststart: give an MP4/MOV whose moov atom follows mdat a faststart copy.

Files are immutable (docs/design.md), so the copy is a new file with its own UID: a new row with
``derived_from`` = the original, the same name, type, owner, limits and delete token, pushed and
probed like any upload; the original's ``faststart_uid`` points to it. ffmpeg writes into
its part file (``.incoming/<new uid>.part``, swept if we die), which is fsynced, hashed in
bounded chunks, and committed with its row the way an upload is (ingest/commit.py).
Idempotent: an original that already has a live derived copy gets linked to it, not a second.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime
from pathlib import Path

import anyio

from mediasvc.db import repository
from mediasvc.errors import InsufficientStorage
from mediasvc.ids import new_uid
from mediasvc.ingest.commit import commit_part, new_record
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import JobResult, after_new_file
from mediasvc.media.atoms import read_layout
from mediasvc.media.remux import RemuxFailed, remux_faststart
from mediasvc.storage.files import size_and_sha256
from mediasvc.storage.part import PartFile

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
    part: PartFile | None = None
    try:
        await anyio.to_thread.run_sync(store.ensure_room_for, original.size)
        await anyio.to_thread.run_sync(store.prepare)  # the .incoming directory
        part = await anyio.to_thread.run_sync(
            functools.partial(store.create_part, new_uid(), written_by_tool=True)
        )
        await remux_faststart(
            ctx.media,
            store.path_for(uid),
            part.path,
            media_type=original.format,
            extension=original.extension,
        )
        await anyio.to_thread.run_sync(part.finish)  # durable before it is hashed and named
        sha256, faststart = await anyio.to_thread.run_sync(
            _inspect, part.path, ctx.config.io_chunk_size_bytes
        )
        if faststart is not True:
            raise RemuxFailed("ffmpeg's output still has moov after mdat")
        volume = await anyio.to_thread.run_sync(lambda: store.volume_id)
    except (RemuxFailed, InsufficientStorage, OSError) as exc:
        if part is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(part.discard)
        logger.warning("faststart remux of %s failed: %s", uid, exc)
        await _note(ctx, uid, f"faststart remux failed: {_public_reason(exc)}")
        return None
    except BaseException:
        if part is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(part.discard)
        raise

    derived = new_record(
        part,
        sha256=sha256,
        created_at=datetime.now(UTC),
        original_name=original.original_name,
        extension=original.extension,
        media_type=original.format,
        expires_at=original.expires_at,
        max_downloads=original.max_downloads,
        owner=original.owner,
        delete_token_hash=original.delete_token_hash,
        volume=volume,
        derived_from=uid,
    )
    derived_uid = derived.uid

    try:
        if not await commit_part(ctx.db, part, derived, faststart_of=uid):
            return None  # the original went while we copied
    except (InsufficientStorage, OSError) as exc:  # the rename: nothing of the copy is left
        logger.warning("faststart remux of %s failed: %s", uid, exc)
        await _note(ctx, uid, f"faststart remux failed: {_public_reason(exc)}")
        return None
    logger.info("faststart copy of %s is %s (%d bytes)", uid, derived_uid, part.size)
    return derived_uid


def _public_reason(exc: BaseException) -> str:
    """What the metadata may say of a failure: an OSError's message names our paths, so only its
    reason (the log has the whole message)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


async def remux_job(ctx: JobContext, uid: str, *, attempt: int) -> JobResult:
    """The job: a faststart copy, then pushed and probed like any new file."""
    derived_uid = await remux_file(ctx, uid)
    if derived_uid is None:
        return JobResult("none")
    return JobResult("copied", follow_ups=after_new_file(derived_uid))


def _inspect(path: Path, chunk_bytes: int) -> tuple[str, bool | None]:
    """sha256 and faststart of the finished copy, read in bounded chunks."""
    with path.open("rb") as file:
        size, sha256 = size_and_sha256(file, chunk_bytes)
        return sha256, read_layout(file, size).faststart


async def _link(ctx: JobContext, uid: str, derived_uid: str) -> None:
    async with ctx.db.session() as session:
        await repository.link_faststart(session, uid, derived_uid)


async def _note(ctx: JobContext, uid: str, error: str) -> None:
    async with ctx.db.session() as session:
        await repository.note_probe_error(session, uid, error[:MAX_ERROR_CHARS])
