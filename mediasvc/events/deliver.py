"""deliver_event: one event to every endpoint that wants it, at least once, in order per file.

The job runs per event (job id ``deliver:<msg id>``). For each endpoint it makes the event's
delivery row if there is none yet, then tries it when it is due and nothing before it is owed:
an earlier event about the same file not yet delivered (or dead-lettered) to the same endpoint
holds it back, so a receiver sees a file's events in the order they happened. A failed try is
retried after an exponential backoff (``webhook_backoff_base_s`` doubling up to
``webhook_backoff_max_s``); after ``webhook_max_tries`` the delivery is dead (kept, visible to
admins, redelivered on request) and stops holding later events back. Once no delivery of the
event is pending it is settled.

At least once: a try is recorded after the request, so a worker killed in between sends it
again; receivers drop repeats by ``webhook-id``. Nothing is lost: an event not settled is
enqueued again by the reconciler (jobs/reconcile.py), and the commit hook enqueues it at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from mediasvc.db import outbox
from mediasvc.db.models import DeliveryRecord, DeliveryStatus, EventRecord
from mediasvc.db.session import Database
from mediasvc.events import payload, send
from mediasvc.events.endpoints import WebhookEndpoint
from mediasvc.jobs.config import JobsConfig
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import Enqueue, JobResult, Kind
from mediasvc.jobs.push import backoff_s

logger = logging.getLogger(__name__)

#: How soon an event held back by an earlier one looks again (when that one is not due later).
ORDER_WAIT_S = 0.2


async def deliver_job(ctx: JobContext, uid: str, *, attempt: int) -> JobResult:
    """Try every due delivery of the event whose msg id is ``uid`` (the queue's one argument);
    retry when some are still owed."""
    config = ctx.config
    async with ctx.db.session() as session:
        event = await outbox.event(session, uid)
        if event is None or event.settled_at is not None:
            return JobResult("settled")
        wanted = {e.id: e for e in config.webhooks if e.wants(event.type)}
        urls = {endpoint_id: e.url for endpoint_id, e in wanted.items()}
        deliveries = await outbox.open_deliveries(session, event, urls, datetime.now(UTC))
    waits: list[float] = []
    body = payload.body(event, base_url=config.public_base_url)
    async with send.client(config.webhook_timeout_s) as http:
        for delivery in deliveries:
            if delivery.status != DeliveryStatus.PENDING.value:
                continue
            endpoint = wanted[delivery.endpoint_id]
            wait = await _wait_before(ctx.db, event, delivery, endpoint)
            if wait is None:
                result = await send.send(
                    http, endpoint, event.msg_id, body, timeout_s=config.webhook_timeout_s
                )
                wait = await _record(ctx, delivery, result)
            if wait is not None:
                waits.append(wait)
    if waits:
        return JobResult(DeliveryStatus.PENDING.value, retry_in_s=min(waits))
    async with ctx.db.session() as session:
        await outbox.settle(session, event.id, datetime.now(UTC))
    return JobResult("settled")


async def _wait_before(
    db: Database, event: EventRecord, delivery: DeliveryRecord, endpoint: WebhookEndpoint
) -> float | None:
    """Seconds until ``delivery`` may be tried (None: now): it is not due, or an earlier event
    about the same file is still owed to the same endpoint."""
    now = datetime.now(UTC)
    if delivery.next_attempt_at > now:
        return (delivery.next_attempt_at - now).total_seconds()
    async with db.session() as session:
        earlier = await outbox.earlier_unsettled(session, event, delivery.endpoint_id)
    owed = [
        due
        for event_type, status, due in earlier
        if endpoint.wants(event_type) and status in (None, DeliveryStatus.PENDING.value)
    ]
    if not owed:
        return None
    dues = [(due - now).total_seconds() for due in owed if due is not None]
    return max([ORDER_WAIT_S, *dues])


async def _record(
    ctx: JobContext, delivery: DeliveryRecord, result: send.TryResult
) -> float | None:
    """Record a try; seconds until the next one, None when the delivery is over."""
    config = ctx.config
    now = datetime.now(UTC)
    tries = delivery.tries + 1
    if result.delivered:
        outcome, wait = DeliveryStatus.DELIVERED, None
    elif tries >= config.webhook_max_tries:
        outcome, wait = DeliveryStatus.DEAD, None
        logger.warning(
            "delivery %d to %s dead after %d tries: %s",
            delivery.id,
            delivery.url,
            tries,
            result.error,
        )
    else:
        outcome = DeliveryStatus.PENDING
        wait = backoff_s(
            tries, base_s=config.webhook_backoff_base_s, max_s=config.webhook_backoff_max_s
        )
    async with ctx.db.session() as session:
        await outbox.record_attempt(
            session,
            delivery,
            at=now,
            status_code=result.status_code,
            error=result.error,
            duration_ms=result.duration_ms,
            outcome=outcome,
            next_attempt_at=now + timedelta(seconds=wait or 0),
        )
    return wait


def timeout_s(config: JobsConfig) -> int:
    """A job tries each endpoint at most once per run."""
    return min(
        int(config.webhook_timeout_s * max(1, len(config.webhooks))) + 30, config.push_timeout_s
    )


def enqueue_after_commit(db: Database, enqueue: Enqueue) -> None:
    """Enqueue the delivery of every event ``db``'s sessions commit, as soon as they do."""
    tasks: set[asyncio.Task[None]] = set()  # held until done: the loop keeps weak references

    async def enqueue_all(msg_ids: Iterable[str]) -> None:
        for msg_id in msg_ids:
            await enqueue(Kind.DELIVER, msg_id)

    def on_events(msg_ids: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(enqueue_all(msg_ids))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    db.on_events = on_events
