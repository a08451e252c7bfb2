"""Queries on the files table. Every function takes an open session; callers own transactions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, case, not_, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from mediasvc.db.models import FileRecord, GoneReason


async def add(session: AsyncSession, record: FileRecord) -> None:
    session.add(record)
    await session.commit()


async def get(session: AsyncSession, uid: str, *, fresh: bool = False) -> FileRecord | None:
    """The row; ``fresh`` re-reads it even if this session already holds a copy."""
    return await session.get(FileRecord, uid, populate_existing=fresh)


async def list_live(
    session: AsyncSession,
    *,
    limit: int,
    after: tuple[datetime, str] | None,
    now: datetime,
    owner: str | None = None,
    kind: str | None = None,
) -> list[FileRecord]:
    """Live files, newest first; ``after`` is the (created_at, uid) of the last row already seen.

    ``kind``: video, audio or image (the top-level type of ``format``), or other.
    """
    query = select(FileRecord).where(FileRecord.gone_reason.is_(None))
    if kind is not None:
        query = query.where(_of_kind(kind))
    query = query.where((FileRecord.expires_at.is_(None)) | (FileRecord.expires_at > now))
    if owner is not None:
        query = query.where(FileRecord.owner == owner)
    if after is not None:
        query = query.where(tuple_(FileRecord.created_at, FileRecord.uid) < tuple_(*after))
    query = query.order_by(FileRecord.created_at.desc(), FileRecord.uid.desc()).limit(limit)
    return list((await session.scalars(query)).all())


MEDIA_KINDS = ("video", "audio", "image")


def _of_kind(kind: str) -> ColumnElement[bool]:
    def top_level(name: str) -> ColumnElement[bool]:
        return FileRecord.format.like(f"{name}/%")

    if kind in MEDIA_KINDS:
        return top_level(kind)
    return not_(or_(*(top_level(name) for name in MEDIA_KINDS)))


async def mark_gone(session: AsyncSession, uid: str, reason: GoneReason, now: datetime) -> bool:
    """Turn a live row into a tombstone; False if it was gone already."""
    result = await session.execute(
        update(FileRecord)
        .where(FileRecord.uid == uid, FileRecord.gone_reason.is_(None))
        .values(gone_reason=reason.value, gone_at=now)
        .returning(FileRecord.uid)
    )
    await session.commit()
    return result.first() is not None


async def set_local(session: AsyncSession, uid: str, *, local: bool) -> None:
    await session.execute(update(FileRecord).where(FileRecord.uid == uid).values(local=local))
    await session.commit()


async def touch(session: AsyncSession, uid: str, now: datetime) -> None:
    await session.execute(
        update(FileRecord).where(FileRecord.uid == uid).values(last_accessed_at=now)
    )
    await session.commit()


async def reserve_bytes(session: AsyncSession, uid: str, n: int, budget: int) -> int | None:
    """Add ``n`` to ``bytes_served`` if it stays within ``budget``, atomically; the new total."""
    result = await session.execute(
        update(FileRecord)
        .where(
            FileRecord.uid == uid,
            FileRecord.gone_reason.is_(None),
            FileRecord.bytes_served + n <= budget,
        )
        .values(bytes_served=FileRecord.bytes_served + n)
        .returning(FileRecord.bytes_served)
    )
    await session.commit()
    return result.scalar_one_or_none()


async def refund_bytes(session: AsyncSession, uid: str, n: int) -> None:
    """Give back bytes a download reserved but did not send."""
    await session.execute(
        update(FileRecord)
        .where(FileRecord.uid == uid)
        .values(
            bytes_served=case((FileRecord.bytes_served > n, FileRecord.bytes_served - n), else_=0)
        )
    )
    await session.commit()
