"""A file made from another by a tool (a rendition, a storyboard sheet, an HLS variant).

The tool writes a part file (``.incoming/<new uid>.part``, swept if we die), which is made
durable and hashed in bounded chunks; ``derived_record`` is its row (``derived_from`` the
original, the original's owner, limits and delete token), committed with ``commit_part`` like
an upload. Whatever stops the making, a failure or a cancellation, discards the part file.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio

from mediasvc.db.models import FileRecord
from mediasvc.ids import new_uid
from mediasvc.ingest.commit import new_record
from mediasvc.jobs.context import JobContext
from mediasvc.storage.files import size_and_sha256
from mediasvc.storage.part import PartFile


async def make_part(
    ctx: JobContext, room_bytes: int, write: Callable[[Path], Awaitable[None]]
) -> tuple[PartFile, str]:
    """A finished part file that ``write`` filled by its path, and its sha256."""
    store = ctx.store
    await anyio.to_thread.run_sync(store.ensure_room_for, room_bytes)
    await anyio.to_thread.run_sync(store.prepare)  # the .incoming directory
    part = await anyio.to_thread.run_sync(
        functools.partial(store.create_part, new_uid(), written_by_tool=True)
    )
    try:
        await write(part.path)
        await anyio.to_thread.run_sync(part.finish)  # durable before it is hashed and named
        sha256 = await anyio.to_thread.run_sync(_sha256, part.path, ctx.config.io_chunk_size_bytes)
    except BaseException:
        await discard(part)
        raise
    return part, sha256


async def discard(part: PartFile) -> None:
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(part.discard)


def derived_record(
    ctx: JobContext,
    original: FileRecord,
    part: PartFile,
    sha256: str,
    *,
    name: str | None,
    media_type: str,
    extension: str | None,
) -> FileRecord:
    """The row of a file derived from ``original``: its owner, limits and delete token."""
    return new_record(
        part,
        sha256=sha256,
        created_at=datetime.now(UTC),
        original_name=name,
        extension=extension,
        media_type=media_type,
        expires_at=original.expires_at,
        max_downloads=original.max_downloads,
        owner=original.owner,
        delete_token_hash=original.delete_token_hash,
        volume=ctx.store.volume_id,
        derived_from=original.uid,
    )


def derived_name(original: FileRecord, suffix: str) -> str | None:
    """``clip.mkv`` → ``clip.<suffix>``: the name a download of the product suggests."""
    if not original.original_name:
        return None
    stem = original.original_name.rsplit(".", 1)[0] if "." in original.original_name else None
    return f"{stem or original.original_name}.{suffix}"


def _sha256(path: Path, chunk_bytes: int) -> str:
    with path.open("rb") as file:
        return size_and_sha256(file, chunk_bytes)[1]


def public_reason(exc: BaseException) -> str:
    """What the metadata may say of a failure: an OSError's message names our paths, so only its
    reason (the log has the whole message)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)
