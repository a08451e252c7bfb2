"""Queries on the uploads table. As in db/repository.py: each function that writes is one
transaction and commits before it returns."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mediasvc.db import outbox
from mediasvc.db.models import UploadConcat, UploadRecord
from mediasvc.events.types import EventType


async def add(
    session: AsyncSession, record: UploadRecord, *, caller_metadata: dict[str, Any] | None
) -> None:
    """Insert the new upload's row and its ``upload.created`` event."""
    session.add(record)
    outbox.record(
        session, EventType.UPLOAD_CREATED, record.uid, _event_data(record, caller_metadata),
        record.created_at,
    )  # fmt: skip
    await session.commit()


async def get(session: AsyncSession, uid: str) -> UploadRecord | None:
    """The row, read afresh (another request or process may have moved it)."""
    return await session.get(UploadRecord, uid, populate_existing=True)


async def node_url(session: AsyncSession, uid: str) -> str | None:
    """The internal URL of the node that holds the upload's bytes (None: no such upload, or
    one made where nodes did not say who they are)."""
    url: str | None = await session.scalar(
        select(UploadRecord.node_url).where(UploadRecord.uid == uid)
    )
    await session.commit()
    return url


async def get_many(session: AsyncSession, uids: list[str]) -> dict[str, UploadRecord]:
    rows = await session.scalars(select(UploadRecord).where(UploadRecord.uid.in_(uids)))
    return {row.uid: row for row in rows}


async def checkpoint(
    session: AsyncSession,
    uid: str,
    *,
    offset: int,
    hash_state: bytes,
    now: datetime,
    expires_at: datetime,
    hash_start: bytes | None = None,
    completed_at: datetime | None = None,
) -> int | None:
    """Record a durable offset and the hash state after it; the row's generation (None: the
    row is gone). Only the writer holding the upload's lock calls it, so it is unconditional."""
    values: dict[str, object] = {
        "offset": offset,
        "hash_state": hash_state,
        "updated_at": now,
        "expires_at": expires_at,
    }
    if hash_start is not None:
        values["hash_start"] = hash_start
    if completed_at is not None:
        values["completed_at"] = completed_at
    result = await session.execute(
        update(UploadRecord)
        .where(UploadRecord.uid == uid)
        .values(**values)
        .returning(UploadRecord.generation)
    )
    await session.commit()
    return result.scalar_one_or_none()


async def set_length(session: AsyncSession, uid: str, length: int) -> None:
    """A deferred length becomes known (once)."""
    await session.execute(
        update(UploadRecord)
        .where(UploadRecord.uid == uid, UploadRecord.length.is_(None))
        .values(length=length)
    )
    await session.commit()


async def take_over(session: AsyncSession, uid: str) -> int | None:
    """Raise the generation (the current writer, if any, ends at its next look); the new one."""
    result = await session.execute(
        update(UploadRecord)
        .where(UploadRecord.uid == uid)
        .values(generation=UploadRecord.generation + 1)
        .returning(UploadRecord.generation)
    )
    await session.commit()
    return result.scalar_one_or_none()


async def generation(session: AsyncSession, uid: str) -> int | None:
    value: int | None = await session.scalar(
        select(UploadRecord.generation).where(UploadRecord.uid == uid)
    )
    await session.commit()  # no snapshot kept: the next look sees a newer value
    return value


async def remove(session: AsyncSession, uid: str) -> None:
    await session.execute(delete(UploadRecord).where(UploadRecord.uid == uid))
    await session.commit()


async def remove_expired(
    session: AsyncSession, record: UploadRecord, caller_metadata: dict[str, Any] | None
) -> None:
    """Delete the row of an upload that lapsed; an unfinished one's ``upload.expired`` with it
    (a finished upload's row lapsing is not news: its file lives on)."""
    await session.execute(delete(UploadRecord).where(UploadRecord.uid == record.uid))
    if record.completed_at is None:
        outbox.record(
            session, EventType.UPLOAD_EXPIRED, record.uid, _event_data(record, caller_metadata),
            datetime.now(UTC),
        )  # fmt: skip
    await session.commit()


def _event_data(record: UploadRecord, caller_metadata: dict[str, Any] | None) -> dict[str, Any]:
    """An upload event's ``data``: where the upload stood, and the caller's metadata."""
    return {
        "uid": record.uid,
        "upload_url": f"/api/v1/uploads/{record.uid}",
        "offset": record.offset,
        "length": record.length,
        "concat": record.concat,
        "expires_at": record.expires_at.isoformat().replace("+00:00", "Z"),
        "metadata": caller_metadata,
    }


async def remove_many(session: AsyncSession, uids: list[str]) -> None:
    if uids:
        await session.execute(delete(UploadRecord).where(UploadRecord.uid.in_(uids)))
        await session.commit()


async def last_finished_partial(session: AsyncSession, owner: str | None) -> UploadRecord | None:
    """The owner's most recently finished partial upload (the one a new partial may continue
    the hash of)."""
    owner_is = UploadRecord.owner.is_(None) if owner is None else UploadRecord.owner == owner
    row: UploadRecord | None = await session.scalar(
        select(UploadRecord)
        .where(
            owner_is,
            UploadRecord.concat == UploadConcat.PARTIAL.value,
            UploadRecord.completed_at.is_not(None),
        )
        .order_by(UploadRecord.completed_at.desc())
        .limit(1)
    )
    return row


async def expired(session: AsyncSession, now: datetime, *, limit: int) -> list[UploadRecord]:
    """Uploads past their expiry, finished or not."""
    rows = await session.scalars(
        select(UploadRecord).where(UploadRecord.expires_at <= now).limit(limit)
    )
    return list(rows)


async def count_unfinished(session: AsyncSession, now: datetime) -> tuple[int, int]:
    """Unfinished uploads: (still open, expired and waiting for cleanup)."""
    expired = UploadRecord.expires_at <= now
    row = (
        await session.execute(
            select(func.count().filter(~expired), func.count().filter(expired)).where(
                UploadRecord.completed_at.is_(None)
            )
        )
    ).one()
    await session.commit()
    return int(row[0]), int(row[1])
