"""Queries on the files table. Every function takes an open session; callers own transactions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from mediasvc.db.models import FileRecord, GoneReason


async def add(session: AsyncSession, record: FileRecord) -> None:
    session.add(record)
    await session.commit()


async def get(session: AsyncSession, uid: str) -> FileRecord | None:
    return await session.get(FileRecord, uid)


async def list_live(
    session: AsyncSession,
    *,
    limit: int,
    after: tuple[datetime, str] | None,
    now: datetime,
    owner: str | None = None,
) -> list[FileRecord]:
    """Live files, newest first; ``after`` is the (created_at, uid) of the last row already seen."""
    query = select(FileRecord).where(FileRecord.gone_reason.is_(None))
    query = query.where((FileRecord.expires_at.is_(None)) | (FileRecord.expires_at > now))
    if owner is not None:
        query = query.where(FileRecord.owner == owner)
    if after is not None:
        query = query.where(tuple_(FileRecord.created_at, FileRecord.uid) < tuple_(*after))
    query = query.order_by(FileRecord.created_at.desc(), FileRecord.uid.desc()).limit(limit)
    return list((await session.scalars(query)).all())


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
