"""``GET /metrics`` in the Prometheus text format."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import anyio
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select
from starlette.responses import Response

from mediasvc.api.common import services_of
from mediasvc.db import outbox
from mediasvc.db.models import CloudStatus, DeliveryStatus, FileRecord
from mediasvc.errors import DatabaseUnavailable
from mediasvc.observability import Metrics, multiprocess_dir
from mediasvc.resumable.repository import count_unfinished

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    services = services_of(request)
    collected: Metrics = request.app.state.metrics
    # Gauges read from their source at scrape time: the queue, the database, the disk.
    collected.push_queue_depth.set(await services.queue.depth())
    try:
        async with services.db.session() as session:
            failed = await session.scalar(
                select(func.count())
                .select_from(FileRecord)
                .where(
                    FileRecord.cloud_status == CloudStatus.FAILED.value,
                    FileRecord.gone_reason.is_(None),
                )
            )
            counts = await outbox.delivery_counts(session)
            oldest = await outbox.oldest_unsettled_at(session)
        collected.push_failed_files.set(failed or 0)
        async with services.db.session() as session:
            open_uploads, expired_uploads = await count_unfinished(session, datetime.now(UTC))
        collected.resumable_uploads.labels("open").set(open_uploads)
        collected.resumable_uploads.labels("expired").set(expired_uploads)
        for status in DeliveryStatus:
            collected.webhook_deliveries.labels(status.value).set(counts.get(status.value, 0))
        age_s = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        collected.oldest_undelivered_event_age.set(max(0.0, age_s))
    except DatabaseUnavailable:
        pass  # the other metrics are still worth a scrape
    usage = await anyio.to_thread.run_sync(shutil.disk_usage, services.store.root)
    for kind in ("used", "free", "total"):
        collected.disk_bytes.labels(kind).set(getattr(usage, kind))

    registry = collected.registry
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
