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


async def touch_many(session: AsyncSession, accessed_at: dict[str, datetime]) -> None:
    """Record reads for LRU eviction, many files in one transaction."""
    for uid, when in accessed_at.items():
        await session.execute(
            update(FileRecord)
            .where(
                FileRecord.uid == uid,
                or_(FileRecord.last_accessed_at.is_(None), FileRecord.last_accessed_at < when),
            )
            .values(last_accessed_at=when)
        )
    await session.commit()


def _live_reserved(now: datetime) -> ColumnElement[int]:
    """The open reservations that still hold: none once their lease has lapsed."""
    return case(
        (FileRecord.reservations_expire_at > now, FileRecord.bytes_reserved),
        else_=0,
    )


async def reserve_bytes(
    session: AsyncSession, uid: str, n: int, budget: int, *, now: datetime, lease_until: datetime
) -> int | None:
    """Reserve ``n`` bytes if they fit in ``budget``, in one atomic UPDATE; the new total.

    Reservations whose lease lapsed (their process died) are dropped in the same statement.
    """
    lapsed = FileRecord.bytes_reserved - _live_reserved(now)
    result = await session.execute(
        update(FileRecord)
        .where(
            FileRecord.uid == uid,
            FileRecord.gone_reason.is_(None),
            FileRecord.bytes_served - lapsed + n <= budget,
        )
        .values(
            bytes_served=FileRecord.bytes_served - lapsed + n,
            bytes_reserved=_live_reserved(now) + n,
            reservations_expire_at=case(
                (
                    FileRecord.reservations_expire_at > lease_until,
                    FileRecord.reservations_expire_at,
                ),
                else_=lease_until,
            ),
        )
        .returning(FileRecord.bytes_served)
    )
    await session.commit()
    return result.scalar_one_or_none()


async def budget_state(session: AsyncSession, uid: str, now: datetime) -> tuple[int, int] | None:
    """(bytes used by finished downloads, bytes held by open reservations); None if gone."""
    live = _live_reserved(now)
    result = await session.execute(
        select(FileRecord.bytes_served - live, live).where(
            FileRecord.uid == uid, FileRecord.gone_reason.is_(None)
        )
    )
    row = result.first()
    return None if row is None else (int(row[0]), int(row[1]))


async def renew_reservations(session: AsyncSession, uid: str, lease_until: datetime) -> None:
    """A download still running keeps the file's open reservations alive."""
    await session.execute(
        update(FileRecord)
        .where(
            FileRecord.uid == uid,
            or_(
                FileRecord.reservations_expire_at.is_(None),
                FileRecord.reservations_expire_at < lease_until,
            ),
        )
        .values(reservations_expire_at=lease_until)
    )
    await session.commit()


async def settle_reservation(session: AsyncSession, uid: str, reserved: int, sent: int) -> None:
    """Close a reservation of ``reserved`` bytes, ``sent`` of them sent: the rest is given back."""
    unsent = reserved - min(sent, reserved)

    def minus(column: ColumnElement[int], n: int) -> ColumnElement[int]:
        return case((column > n, column - n), else_=0)

    await session.execute(
        update(FileRecord)
        .where(FileRecord.uid == uid)
        .values(
            bytes_served=minus(FileRecord.bytes_served, unsent),  # type: ignore[arg-type]
            bytes_reserved=minus(FileRecord.bytes_reserved, reserved),  # type: ignore[arg-type]
        )
    )
    await session.commit()
