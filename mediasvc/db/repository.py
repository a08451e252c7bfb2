"""Queries on the files table: every statement the API and the jobs run on it lives here.

Transactions: every function takes an open session, and each function that writes is one
transaction of its own: it commits before it returns. A change that must be atomic over several
statements is one function here (``record_purge``). Reads commit nothing, so a caller may hold a
transaction-scoped lock across them (db/commit_window.py). Callers never commit themselves.

Events: a change another service waits for (created, probed, pushed, push failed, gone) writes
its event in the same transaction (db/outbox.py), so neither exists without the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Row,
    and_,
    bindparam,
    case,
    func,
    not_,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.dml import ReturningUpdate, Update

from mediasvc.db import outbox
from mediasvc.db.models import (
    CloudStatus,
    FileRecord,
    GoneReason,
    ProbeStatus,
    ProcessingState,
    UploadRecord,
)
from mediasvc.events.payload import file_data
from mediasvc.events.types import GONE_EVENTS, EventType

# A row that is not a tombstone.
_LIVE = FileRecord.gone_reason.is_(None)


@dataclass(frozen=True, slots=True)
class UploadCompletion:
    """A resumable upload's row, once its file is committed (mediasvc/resumable/)."""

    completed_at: datetime
    expires_at: datetime  # the row (not the file) is kept until then, so HEAD still answers
    hash_state: bytes


async def add_new_file(
    session: AsyncSession,
    record: FileRecord,
    *,
    faststart_of: str | None = None,
    completes_upload: UploadCompletion | None = None,
    processing: Processing | None = None,
) -> bool:
    """Insert ``record`` and its ``file.created``; with ``faststart_of``, that live original
    points to it in the same transaction, and nothing is written (False) if the original is
    gone. With ``processing``, the original it is derived from records it (its renditions, and
    a ``file.rendition_ready`` about the original) the same way. With
    ``completes_upload``, the resumable upload of the same uid is marked complete in it too.

    The original's row is updated, hence locked, before the commit: a delete of the original
    waits for it, and its purge then finds the new derived row (no product outlives it).
    """
    session.add(record)
    if completes_upload is not None:
        await session.execute(
            update(UploadRecord)
            .where(UploadRecord.uid == record.uid)
            .values(
                offset=record.size,
                length=record.size,
                completed_at=completes_upload.completed_at,
                updated_at=completes_upload.completed_at,
                expires_at=completes_upload.expires_at,
                hash_state=completes_upload.hash_state,
            )
        )
    outbox.record_file(session, EventType.FILE_CREATED, record, record.created_at)
    changes: list[tuple[str, dict[str, Any]]] = []
    if faststart_of is not None:
        changes.append((faststart_of, {"faststart_uid": record.uid}))
    if processing is not None:
        assert record.derived_from is not None
        changes.append((record.derived_from, _processing_values(processing)))
        # A product of the original's processing (a rendition, a storyboard sheet, an HLS
        # rung) is ready: the event is about the original, its data the product's metadata.
        outbox.record(
            session,
            EventType.FILE_RENDITION_READY,
            record.derived_from,
            file_data(record),
            record.created_at,
        )
    for uid, values in changes:
        linked = await session.execute(
            update(FileRecord)
            .where(FileRecord.uid == uid, _LIVE)
            .values(**values)
            .returning(FileRecord.uid)
        )
        if linked.first() is None:
            await session.rollback()
            return False
    await session.commit()
    return True


# The processing document of an original (jobs/transcode.py) and its state, written together.
Processing = dict[str, Any]


def _processing_values(processing: Processing) -> dict[str, Any]:
    return {
        "processing": processing,
        "processing_state": processing["state"],
        "processing_updated_at": datetime.now(UTC),
    }


async def record_processing(session: AsyncSession, uid: str, processing: Processing) -> bool:
    """Write the transcode's progress on a live row; False if the file is gone."""
    return await _update_one(session, uid, _LIVE, **_processing_values(processing))


async def stuck_processing(
    session: AsyncSession, *, stale_before: datetime, limit: int
) -> list[str]:
    """Live rows whose transcode is pending or running with no word since ``stale_before``."""
    query = (
        select(FileRecord.uid)
        .where(
            _LIVE,
            FileRecord.processing_state.in_([ProcessingState.PENDING, ProcessingState.RUNNING]),
            FileRecord.processing_updated_at <= stale_before,
        )
        .order_by(FileRecord.processing_updated_at)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def _update_one(
    session: AsyncSession,
    uid: str,
    *conditions: ColumnElement[bool],
    event: tuple[EventType, datetime] | None = None,
    **values: Any,
) -> bool:
    """Update the row ``uid`` if ``conditions`` hold, with ``event`` (its type and time) about
    the updated row if it did, and commit; whether it did."""
    result = await session.execute(
        update(FileRecord)
        .where(FileRecord.uid == uid, *conditions)
        .values(**values)
        .returning(FileRecord)
        .execution_options(populate_existing=True)
    )
    updated = result.scalars().first()
    if updated is not None and event is not None:
        outbox.record_file(session, event[0], updated, event[1])
    await session.commit()
    return updated is not None


async def get(session: AsyncSession, uid: str, *, fresh: bool = False) -> FileRecord | None:
    """The row; ``fresh`` re-reads it even if this session already holds a copy."""
    return await session.get(FileRecord, uid, populate_existing=fresh)


async def exists(session: AsyncSession, uid: str) -> bool:
    """Whether any row (live or a tombstone) has ``uid``."""
    return await session.scalar(select(FileRecord.uid).where(FileRecord.uid == uid)) is not None


async def list_live(
    session: AsyncSession,
    *,
    limit: int,
    after: tuple[datetime, str] | None,
    now: datetime,
    owner: str | None = None,
    kind: str | None = None,
    include_derived: bool = False,
) -> list[FileRecord]:
    """Live files, newest first; ``after`` is the (created_at, uid) of the last row already seen.

    ``kind``: video, audio or image (the top-level type of ``format``), or other.
    ``include_derived``: also the files made from others (renditions, storyboard sheets, HLS
    rungs, faststart copies); without it, only what was uploaded or imported.
    """
    query = select(FileRecord).where(_LIVE)
    if not include_derived:
        query = query.where(FileRecord.derived_from.is_(None))
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
    """Turn a live row into a tombstone (its event says why); False if it was gone already."""
    return await _update_one(
        session,
        uid,
        _LIVE,
        event=(GONE_EVENTS[reason.value], now),
        gone_reason=reason.value,
        gone_at=now,
    )


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


def _live_reserved(now: datetime | BindParameter[datetime]) -> ColumnElement[int]:
    """The open reservations that still hold: none once their lease has lapsed."""
    return case(
        (FileRecord.reservations_expire_at > now, FileRecord.bytes_reserved),
        else_=0,
    )


def reservation_update() -> ReturningUpdate[int]:
    """The one atomic UPDATE that reserves ``:n`` bytes of the row ``:file_uid`` if they fit in
    ``:budget``, dropping the reservations whose lease lapsed by ``:now`` (their process died)
    and holding the rest until ``:lease_until`` at least; it returns the new ``bytes_served``,
    and no row if they do not fit. Built once with parameters, so the download's reservation
    (db/lookup.py) and ``reserve_bytes`` run the same statement."""
    now = bindparam("now", type_=FileRecord.reservations_expire_at.type)
    lease_until = bindparam("lease_until", type_=FileRecord.reservations_expire_at.type)
    n = bindparam("n", type_=FileRecord.bytes_served.type)
    lapsed = FileRecord.bytes_reserved - _live_reserved(now)
    return (
        update(FileRecord)
        .where(
            FileRecord.uid == bindparam("file_uid"),
            _LIVE,
            FileRecord.bytes_served - lapsed + n
            <= bindparam("budget", type_=FileRecord.bytes_served.type),
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


def reservation_params(
    uid: str, n: int, budget: int, *, now: datetime, lease_until: datetime
) -> dict[str, Any]:
    """``reservation_update``'s parameters."""
    return {"file_uid": uid, "n": n, "budget": budget, "now": now, "lease_until": lease_until}


async def reserve_bytes(
    session: AsyncSession, uid: str, n: int, budget: int, *, now: datetime, lease_until: datetime
) -> int | None:
    """Reserve ``n`` bytes if they fit in ``budget``, in one atomic UPDATE
    (``reservation_update``), and commit; the new total, None if they do not fit.

    A download's reservation runs this statement without the ORM where it can
    (``Database.reserve_bytes``); this is its usual way.
    """
    params = reservation_params(uid, n, budget, now=now, lease_until=lease_until)
    result = await session.execute(reservation_update(), params)
    await session.commit()
    return result.scalar_one_or_none()


async def budget_state(session: AsyncSession, uid: str, now: datetime) -> tuple[int, int] | None:
    """(bytes used by finished downloads, bytes held by open reservations); None if gone."""
    live = _live_reserved(now)
    result = await session.execute(
        select(FileRecord.bytes_served - live, live).where(FileRecord.uid == uid, _LIVE)
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


def settlement_update() -> Update:
    """The UPDATE that closes a reservation of ``:reserved`` bytes of the row ``:file_uid``,
    giving back the ``:unsent`` of them (``settlement_params``). Built once with parameters, so
    a download's settlement (db/lookup.py) and ``settle_reservation`` run the same statement."""

    def minus(column: InstrumentedAttribute[int], name: str) -> ColumnElement[int]:
        n = bindparam(name, type_=column.type)
        return case((column > n, column - n), else_=0)

    return (
        update(FileRecord)
        .where(FileRecord.uid == bindparam("file_uid"))
        .values(
            bytes_served=minus(FileRecord.bytes_served, "unsent"),
            bytes_reserved=minus(FileRecord.bytes_reserved, "reserved"),
        )
    )


def settlement_params(uid: str, reserved: int, sent: int) -> dict[str, Any]:
    """``settlement_update``'s parameters: ``sent`` of ``reserved`` bytes were sent."""
    return {"file_uid": uid, "reserved": reserved, "unsent": reserved - min(sent, reserved)}


async def settle_reservation(session: AsyncSession, uid: str, reserved: int, sent: int) -> None:
    """Close a reservation of ``reserved`` bytes, ``sent`` of them sent: the rest is given back
    (``settlement_update``), and commit."""
    await session.execute(settlement_update(), settlement_params(uid, reserved, sent))
    await session.commit()


# --- pushes -----------------------------------------------------------------------------------


async def set_cloud_status(
    session: AsyncSession,
    uid: str,
    status: CloudStatus,
    *,
    now: datetime,
    error: str | None = None,
    attempts: int | None = None,
) -> None:
    """Record a push's progress, unless the row already says ``uploaded``; ``failed`` is the
    event ``file.push_failed``."""
    values: dict[str, object] = {"cloud_status": status.value, "cloud_updated_at": now}
    if error is not None:
        values["cloud_error"] = error
    if attempts is not None:
        values["cloud_attempts"] = attempts
    failed = (EventType.FILE_PUSH_FAILED, now) if status is CloudStatus.FAILED else None
    not_uploaded = FileRecord.cloud_status != CloudStatus.UPLOADED.value
    await _update_one(session, uid, not_uploaded, event=failed, **values)


def _in_the_cloud(key: str, now: datetime) -> dict[str, Any]:
    return {
        "cloud_status": CloudStatus.UPLOADED.value,
        "cloud_path": key,
        "cloud_error": None,
        "cloud_updated_at": now,
    }


async def mark_uploaded(session: AsyncSession, uid: str, key: str, now: datetime) -> bool:
    """A push finished: the live row points to its cloud copy ``key``; False if it went."""
    pushed = (EventType.FILE_PUSHED, now)
    return await _update_one(session, uid, _LIVE, event=pushed, **_in_the_cloud(key, now))


async def stuck_pushes(
    session: AsyncSession, *, stale_before: datetime, failed_before: datetime, limit: int
) -> list[str]:
    """Live local files whose push no job will finish: pending or uploading since before
    ``stale_before``, or failed before ``failed_before``; the longest waiting first."""
    query = (
        select(FileRecord.uid)
        .where(
            _LIVE,
            FileRecord.local.is_(True),
            or_(
                and_(
                    FileRecord.cloud_status.in_(
                        [CloudStatus.PENDING.value, CloudStatus.UPLOADING.value]
                    ),
                    FileRecord.cloud_updated_at <= stale_before,
                ),
                and_(
                    FileRecord.cloud_status == CloudStatus.FAILED.value,
                    FileRecord.cloud_updated_at <= failed_before,
                ),
            ),
        )
        .order_by(FileRecord.cloud_updated_at)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


# --- probes and derived copies --------------------------------------------------------------


async def record_probe(
    session: AsyncSession,
    uid: str,
    status: ProbeStatus,
    *,
    now: datetime,
    error: str | None,
    media: dict[str, Any] | None = None,
    preview: str | None = None,
    processing: Processing | None = None,
) -> bool:
    """Write a probe's outcome on a live, still pending row (with ``processing``, what the
    transcode job is to make); False if there is none."""
    values: dict[str, Any] = {
        "probe_status": status.value,
        "probe_error": error,
        "probe_updated_at": now,
    }
    if media is not None:
        values["media"] = media
    if preview is not None:
        values["preview_path"] = preview
    if processing is not None:
        values.update(_processing_values(processing))
    pending = FileRecord.probe_status == ProbeStatus.PENDING.value
    probed = (EventType.FILE_PROBED, now)
    return await _update_one(session, uid, _LIVE, pending, event=probed, **values)


async def note_probe_error(session: AsyncSession, uid: str, error: str) -> None:
    """A remark on the row's media processing that changes no state (a remux that failed)."""
    await session.execute(update(FileRecord).where(FileRecord.uid == uid).values(probe_error=error))
    await session.commit()


async def stuck_probes(session: AsyncSession, *, stale_before: datetime, limit: int) -> list[str]:
    """Live rows whose probe has been pending since before ``stale_before``; oldest first."""
    since = func.coalesce(FileRecord.probe_updated_at, FileRecord.created_at)
    query = (
        select(FileRecord.uid)
        .where(
            _LIVE,
            FileRecord.probe_status == ProbeStatus.PENDING.value,
            since <= stale_before,
        )
        .order_by(since)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def live_derived_uids(session: AsyncSession, uid: str) -> list[str]:
    """The uids of the live files derived from ``uid`` (its faststart copy, its renditions …)."""
    query = select(FileRecord.uid).where(FileRecord.derived_from == uid, _LIVE)
    return list((await session.scalars(query)).all())


async def link_faststart(session: AsyncSession, uid: str, derived_uid: str) -> None:
    """Point the original ``uid`` to its faststart copy."""
    await session.execute(
        update(FileRecord).where(FileRecord.uid == uid).values(faststart_uid=derived_uid)
    )
    await session.commit()


# --- cleanup ----------------------------------------------------------------------------------


async def expire_due(session: AsyncSession, now: datetime) -> int:
    """Turn live rows whose ``expires_at`` has come into tombstones, each with its
    ``file.expired``; how many."""
    result = await session.execute(
        update(FileRecord)
        .where(_LIVE, FileRecord.expires_at <= now)
        .values(gone_reason=GoneReason.EXPIRED.value, gone_at=now)
        .returning(FileRecord)
        .execution_options(populate_existing=True)
    )
    expired = list(result.scalars())
    for record in expired:
        outbox.record_file(session, EventType.FILE_EXPIRED, record, now)
    await session.commit()
    return len(expired)


async def tombstones_with_bytes(session: AsyncSession, *, limit: int) -> list[FileRecord]:
    """Tombstones whose bytes (local, cloud or preview) may still exist somewhere."""
    query = (
        select(FileRecord)
        .where(
            FileRecord.gone_reason.is_not(None),
            or_(
                FileRecord.local.is_(True),
                FileRecord.cloud_path.is_not(None),
                FileRecord.preview_path.is_not(None),
            ),
        )
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def record_purge(
    session: AsyncSession, record: FileRecord, now: datetime
) -> list[FileRecord]:
    """A tombstone's bytes are gone: say so, unlink it from an original, and turn the live files
    derived from it into tombstones of the same reason, in one transaction; those files."""
    await session.execute(
        update(FileRecord)
        .where(FileRecord.uid == record.uid)
        .values(local=False, cloud_path=None, preview_path=None)
    )
    # An original no longer points to a derived copy that is gone.
    await session.execute(
        update(FileRecord).where(FileRecord.faststart_uid == record.uid).values(faststart_uid=None)
    )
    derived = await session.execute(
        update(FileRecord)
        .where(FileRecord.derived_from == record.uid, _LIVE)
        .values(gone_reason=record.gone_reason or GoneReason.DELETED.value, gone_at=now)
        .returning(FileRecord)
        .execution_options(populate_existing=True)
    )
    children = list(derived.scalars())
    for child in children:
        outbox.record_file(session, GONE_EVENTS[child.gone_reason or ""], child, now)
    await session.commit()
    return children


async def evictable(
    session: AsyncSession, *, limit: int, created_before: datetime | None = None
) -> list[FileRecord]:
    """Live local copies safe in the cloud: those made before ``created_before``, or else all,
    least recently read first (never read before read)."""
    query = select(FileRecord).where(
        _LIVE,
        FileRecord.local.is_(True),
        FileRecord.cloud_status == CloudStatus.UPLOADED.value,
    )
    if created_before is not None:
        query = query.where(FileRecord.created_at <= created_before)
    else:
        query = query.order_by(
            FileRecord.last_accessed_at.is_(None).desc(),
            FileRecord.last_accessed_at,
            FileRecord.created_at,
        )
    return list((await session.scalars(query.limit(limit))).all())


async def mark_evicted(session: AsyncSession, uid: str) -> bool:
    """``local = false`` on a row whose copy is uploaded, before its file goes; False if the row
    changed meanwhile (then the file stays)."""
    uploaded = FileRecord.cloud_status == CloudStatus.UPLOADED.value
    return await _update_one(session, uid, FileRecord.local.is_(True), uploaded, local=False)


# --- the volume audit -------------------------------------------------------------------------


async def claims(
    session: AsyncSession, uids: set[str]
) -> dict[str, Row[str, bool, str | None, str]]:
    """For each uid that has a row: its ``uid``, ``local``, ``gone_reason`` and ``cloud_status``."""
    columns = (FileRecord.uid, FileRecord.local, FileRecord.gone_reason, FileRecord.cloud_status)
    result = await session.execute(select(*columns).where(FileRecord.uid.in_(uids)))
    return {row.uid: row for row in result}


async def local_on_volume(
    session: AsyncSession, volume: str, *, after: str, limit: int
) -> list[FileRecord]:
    """Live rows whose local copy is on ``volume``, by uid, from after ``after``."""
    query = (
        select(FileRecord)
        .where(
            _LIVE,
            FileRecord.local.is_(True),
            FileRecord.volume == volume,
            FileRecord.uid > after,
        )
        .order_by(FileRecord.uid)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def relocate_to_cloud(session: AsyncSession, uid: str, key: str, now: datetime) -> bool:
    """A live local row whose file is missing is served from its confirmed cloud copy ``key``
    from now on; False if the row changed meanwhile."""
    local = FileRecord.local.is_(True)
    return await _update_one(session, uid, local, _LIVE, local=False, **_in_the_cloud(key, now))
