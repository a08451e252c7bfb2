"""Events written by the parts that came after the outbox: resumable uploads (``upload.created``,
``upload.expired``, the caller's ``metadata`` key of ``Upload-Metadata``) and processing
(``file.rendition_ready``). In process, on real PostgreSQL: each event is in the outbox exactly
when its change is."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import select, update

from mediasvc.config import Settings
from mediasvc.db.models import EventRecord, UploadRecord
from mediasvc.db.session import Database
from mediasvc.jobs.cleanup import cleanup
from mediasvc.jobs.context import JobContext
from tests.helpers import TUS, UPLOADS, assert_problem, create, events_about, metadata, patch

CALLER = {"order": 42, "tags": ["a", "b"]}


def uid_of(path: str) -> str:
    return path.rsplit("/", 1)[1]


async def test_a_tus_upload_carries_the_callers_metadata_into_its_file_and_events(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    header = metadata(filename="notes.txt", metadata=json.dumps(CALLER))
    path = await create(client, 3, headers={"Upload-Metadata": header})
    uid = uid_of(path)
    [created] = await events_about(settings, uid)
    assert created.type == "upload.created"
    assert created.data["metadata"] == CALLER
    assert created.data["length"] == 3 and created.data["offset"] == 0

    assert (await patch(client, path, 0, b"abc")).status_code == 204
    meta = (await client.get(f"/api/v1/files/{uid}/metadata")).json()
    assert meta["metadata"] == CALLER
    events = await events_about(settings, uid)  # then the in-process push and probe
    assert [event.type for event in events[:2]] == ["upload.created", "file.created"]
    assert all(event.data["metadata"] == CALLER for event in events)


async def test_bad_caller_metadata_in_upload_metadata_is_422_at_creation(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    for bad in ("{not json", "[1, 2]", json.dumps({"deep": {"er": {"and": {"deeper": {}}}}})):
        response = await client.post(
            UPLOADS,
            headers={**TUS, "Upload-Length": "3", "Upload-Metadata": metadata(metadata=bad)},
        )
        assert_problem(response, 422)
    db = Database(settings.database_url)
    try:
        async with db.session() as session:
            assert (await session.scalars(select(UploadRecord))).all() == []
            assert (await session.scalars(select(EventRecord))).all() == []
    finally:
        await db.dispose()


async def test_an_unfinished_upload_that_lapses_has_its_upload_expired_event(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    header = metadata(metadata=json.dumps(CALLER))
    unfinished = await create(client, 10, headers={"Upload-Metadata": header})
    await patch(client, unfinished, 0, b"01234")
    finished = await create(client, 3)
    await patch(client, finished, 0, b"abc")
    db = Database(settings.database_url)
    try:
        async with db.session() as session:
            past = datetime.now(UTC) - timedelta(seconds=1)
            uids = [uid_of(unfinished), uid_of(finished)]
            await session.execute(
                update(UploadRecord).where(UploadRecord.uid.in_(uids)).values(expires_at=past)
            )
            await session.commit()
    finally:
        await db.dispose()
    ctx = JobContext.build(settings)
    try:
        assert (await cleanup(ctx)).expired_uploads == 2
    finally:
        await ctx.db.dispose()

    lapsed = await events_about(settings, uid_of(unfinished))
    assert [event.type for event in lapsed] == ["upload.created", "upload.expired"]
    assert lapsed[1].data["offset"] == 5 and lapsed[1].data["metadata"] == CALLER
    # A finished upload's row lapsing is not news: its file lives on.
    kept = [event.type for event in await events_about(settings, uid_of(finished))]
    assert kept[:2] == ["upload.created", "file.created"] and "upload.expired" not in kept
