"""The outbox: events about files and their webhook deliveries. Every statement on them is here.

Writing an event: ``record`` (or ``record_file``) adds its row to the caller's open transaction
and commits nothing, so the event exists exactly when the change it reports does (a rollback
takes both). The functions of db/repository.py that make a change call it before they commit;
code elsewhere that reports a change of its own (a resumable upload) does the same in its own
transaction. Once the session commits, ``Database`` hands the new events' ids to its
``on_events`` callback (db/session.py), which enqueues their delivery; if that is lost (a crash,
Redis down), the reconciler finds the event unsettled and enqueues it again.

The other functions follow db/repository.py's rule: each write is one transaction and commits.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mediasvc.db.models import (
    AttemptRecord,
    DeliveryRecord,
    DeliveryStatus,
    EventRecord,
    FileRecord,
)
from mediasvc.events.payload import file_data

#: ``session.info`` key: the msg ids this transaction recorded, handed on once it commits.
PENDING_EVENTS_KEY = "mediasvc.events"


def new_msg_id() -> str:
    """A Standard Webhooks message id: unique per event, the same on every retry of it."""
    return f"msg_{secrets.token_hex(16)}"


def record(
    session: AsyncSession, event_type: str, subject: str, data: dict[str, Any], now: datetime
) -> str:
    """Add an event about ``subject`` to ``session``'s transaction; its msg id. Commits nothing:
    the event is written when (and only if) the caller's change is."""
    msg_id = new_msg_id()
    session.add(
        EventRecord(msg_id=msg_id, type=event_type, subject=subject, created_at=now, data=data)
    )
    session.info.setdefault(PENDING_EVENTS_KEY, []).append(msg_id)
    return msg_id


def record_file(session: AsyncSession, event_type: str, file: FileRecord, now: datetime) -> str:
    """``record`` an event about ``file``, with its metadata as the change left it."""
    return record(session, event_type, file.uid, file_data(file), now)


# --- delivery ---------------------------------------------------------------------------------


async def event(session: AsyncSession, msg_id: str) -> EventRecord | None:
    return await session.scalar(select(EventRecord).where(EventRecord.msg_id == msg_id))


async def open_deliveries(
    session: AsyncSession, event: EventRecord, endpoints: dict[str, str], now: datetime
) -> list[DeliveryRecord]:
    """The event's deliveries, one per endpoint in ``endpoints`` (id → URL), made if missing."""
    existing = {d.endpoint_id: d for d in await _deliveries_of(session, event.id)}
    missing = [eid for eid in endpoints if eid not in existing]
    if missing:
        for endpoint_id in missing:
            session.add(
                DeliveryRecord(
                    event_id=event.id,
                    endpoint_id=endpoint_id,
                    url=endpoints[endpoint_id],
                    subject=event.subject,
                    status=DeliveryStatus.PENDING.value,
                    tries=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        await session.commit()
        existing = {d.endpoint_id: d for d in await _deliveries_of(session, event.id)}
    return [existing[eid] for eid in endpoints if eid in existing]


async def _deliveries_of(session: AsyncSession, event_id: int) -> list[DeliveryRecord]:
    query = select(DeliveryRecord).where(DeliveryRecord.event_id == event_id)
    return list((await session.scalars(query.execution_options(populate_existing=True))).all())


async def earlier_unsettled(
    session: AsyncSession, event: EventRecord, endpoint_id: str
) -> list[tuple[str, str | None, datetime | None]]:
    """Events about the same subject before ``event`` not yet settled: (type, the status of
    their delivery to ``endpoint_id`` and when it is due, None if it is not made yet).
    Deliveries to one endpoint keep this order."""
    query = (
        select(EventRecord.type, DeliveryRecord.status, DeliveryRecord.next_attempt_at)
        .outerjoin(
            DeliveryRecord,
            and_(
                DeliveryRecord.event_id == EventRecord.id,
                DeliveryRecord.endpoint_id == endpoint_id,
            ),
        )
        .where(
            EventRecord.subject == event.subject,
            EventRecord.id < event.id,
            EventRecord.settled_at.is_(None),
        )
    )
    return [(row[0], row[1], row[2]) for row in await session.execute(query)]


async def record_attempt(
    session: AsyncSession,
    delivery: DeliveryRecord,
    *,
    at: datetime,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    outcome: DeliveryStatus,
    next_attempt_at: datetime,
) -> None:
    """One try of ``delivery`` and the state it leaves the delivery in."""
    session.add(
        AttemptRecord(
            delivery_id=delivery.id,
            at=at,
            status_code=status_code,
            error=error,
            duration_ms=duration_ms,
        )
    )
    await session.execute(
        update(DeliveryRecord)
        .where(DeliveryRecord.id == delivery.id)
        .values(
            status=outcome.value,
            tries=DeliveryRecord.tries + 1,
            next_attempt_at=next_attempt_at,
            last_error=error,
            delivered_at=at if outcome is DeliveryStatus.DELIVERED else None,
        )
    )
    await session.commit()


async def settle(session: AsyncSession, event_id: int, now: datetime) -> None:
    """Every endpoint that wants the event has had it (or dead-lettered it)."""
    await session.execute(
        update(EventRecord)
        .where(EventRecord.id == event_id, EventRecord.settled_at.is_(None))
        .values(settled_at=now)
    )
    await session.commit()


async def unsettled(session: AsyncSession, *, limit: int) -> list[str]:
    """The msg ids of events not yet settled, oldest first (the reconciler enqueues them)."""
    query = (
        select(EventRecord.msg_id)
        .where(EventRecord.settled_at.is_(None))
        .order_by(EventRecord.id)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def forget_settled(session: AsyncSession, *, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` events settled before ``before``, with their deliveries and
    attempts (explicitly: SQLite does not enforce the foreign keys' cascade); how many."""
    ids = list(
        (
            await session.scalars(
                select(EventRecord.id)
                .where(EventRecord.settled_at < before)
                .order_by(EventRecord.id)
                .limit(limit)
            )
        ).all()
    )
    if ids:
        deliveries = select(DeliveryRecord.id).where(DeliveryRecord.event_id.in_(ids))
        await session.execute(
            delete(AttemptRecord).where(AttemptRecord.delivery_id.in_(deliveries))
        )
        await session.execute(delete(DeliveryRecord).where(DeliveryRecord.event_id.in_(ids)))
        await session.execute(delete(EventRecord).where(EventRecord.id.in_(ids)))
    await session.commit()
    return len(ids)


# --- admin ------------------------------------------------------------------------------------


async def list_deliveries(
    session: AsyncSession,
    *,
    status: str | None,
    subject: str | None,
    limit: int,
    before: int | None,
) -> list[tuple[DeliveryRecord, EventRecord, list[AttemptRecord]]]:
    """Deliveries, newest first, each with its event and its attempts (oldest first)."""
    query = select(DeliveryRecord, EventRecord).join(
        EventRecord, EventRecord.id == DeliveryRecord.event_id
    )
    if status is not None:
        query = query.where(DeliveryRecord.status == status)
    if subject is not None:
        query = query.where(DeliveryRecord.subject == subject)
    if before is not None:
        query = query.where(DeliveryRecord.id < before)
    rows = list(await session.execute(query.order_by(DeliveryRecord.id.desc()).limit(limit)))
    ids = [row[0].id for row in rows]
    attempts: dict[int, list[AttemptRecord]] = {i: [] for i in ids}
    if ids:
        found = await session.scalars(
            select(AttemptRecord)
            .where(AttemptRecord.delivery_id.in_(ids))
            .order_by(AttemptRecord.id)
        )
        for attempt in found:
            attempts[attempt.delivery_id].append(attempt)
    return [(row[0], row[1], attempts[row[0].id]) for row in rows]


async def redeliver(session: AsyncSession, delivery_id: int, now: datetime) -> str | None:
    """Open the delivery again (tries from zero, due now) and its event; the event's msg id,
    None if there is no such delivery."""
    found = await session.execute(
        update(DeliveryRecord)
        .where(DeliveryRecord.id == delivery_id)
        .values(
            status=DeliveryStatus.PENDING.value,
            tries=0,
            next_attempt_at=now,
            delivered_at=None,
        )
        .returning(DeliveryRecord.event_id)
    )
    event_id = found.scalar_one_or_none()
    if event_id is None:
        await session.rollback()
        return None
    msg_id = await session.scalar(
        update(EventRecord)
        .where(EventRecord.id == event_id)
        .values(settled_at=None)
        .returning(EventRecord.msg_id)
    )
    await session.commit()
    return msg_id


# --- metrics ----------------------------------------------------------------------------------


async def delivery_counts(session: AsyncSession) -> dict[str, int]:
    """Deliveries by status."""
    query = select(DeliveryRecord.status, func.count()).group_by(DeliveryRecord.status)
    return {status: int(n) for status, n in await session.execute(query)}


async def oldest_unsettled_at(session: AsyncSession) -> datetime | None:
    """When the oldest event still owed to an endpoint was written."""
    return await session.scalar(
        select(func.min(EventRecord.created_at)).where(EventRecord.settled_at.is_(None))
    )
