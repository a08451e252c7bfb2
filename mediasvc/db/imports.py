"""Statements on the imports table (URL imports in progress, done or failed). Same rules as
db/repository.py: each write is one transaction and commits; callers never commit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mediasvc.db.models import ImportRecord, ImportStatus


async def add(
    session: AsyncSession,
    *,
    uid: str,
    url: str,
    options: dict[str, Any],
    owner: str | None,
    delete_token_hash: str,
    now: datetime,
) -> ImportRecord:
    record = ImportRecord(
        uid=uid,
        url=url,
        status=ImportStatus.IMPORTING.value,
        options=options,
        owner=owner,
        delete_token_hash=delete_token_hash,
        created_at=now,
        updated_at=now,
    )
    session.add(record)
    await session.commit()
    return record


async def get(session: AsyncSession, uid: str) -> ImportRecord | None:
    return await session.get(ImportRecord, uid, populate_existing=True)


async def stuck(session: AsyncSession, *, stale_before: datetime, limit: int) -> list[str]:
    """Imports still running that started before ``stale_before``, oldest first."""
    query = (
        select(ImportRecord.uid)
        .where(
            ImportRecord.status == ImportStatus.IMPORTING.value,
            ImportRecord.updated_at <= stale_before,
        )
        .order_by(ImportRecord.updated_at)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def finish(
    session: AsyncSession, uid: str, status: ImportStatus, *, error: str | None, now: datetime
) -> None:
    """An import still running is done or failed (a second run of its job changes nothing)."""
    await session.execute(
        update(ImportRecord)
        .where(ImportRecord.uid == uid, ImportRecord.status == ImportStatus.IMPORTING.value)
        .values(status=status.value, error=error, updated_at=now)
    )
    await session.commit()
