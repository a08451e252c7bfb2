"""What a running app holds: settings, database, local and cloud stores, job queue, ingest."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from mediasvc.auth import KeyRing
from mediasvc.config import Settings
from mediasvc.db.models import FileRecord
from mediasvc.db.session import Database
from mediasvc.delivery.access import AccessLog
from mediasvc.delivery.response import SendConfig
from mediasvc.events.deliver import enqueue_after_commit
from mediasvc.ingest.config import IngestConfig
from mediasvc.ingest.pipeline import Ingestor
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import after_new_file
from mediasvc.jobs.queue import ArqQueue, InProcessQueue, JobQueue
from mediasvc.jobs.runner import enqueue_all
from mediasvc.resumable.engine import ResumableConfig, UploadEngine
from mediasvc.resumable.forwarding import Forwarder
from mediasvc.storage.cloud import CloudStore
from mediasvc.storage.local import LocalStore

THUMBNAIL_RENDERS = 2


@dataclass(slots=True)
class Services:
    settings: Settings
    db: Database
    store: LocalStore
    cloud: CloudStore
    queue: JobQueue
    ingestor: Ingestor
    uploads: UploadEngine  # resumable uploads (tus)
    keyring: KeyRing
    access_log: AccessLog
    jobs: JobContext  # what the in-process jobs use, and the API when it purges a file
    send_config: SendConfig  # how every response body goes out (chunks, parts, send timeout)
    #: Thumbnails rendered at once by this process (api/processing.py): each is an ffmpeg.
    thumbnail_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(THUMBNAIL_RENDERS)
    )
    # Requests for uploads another node holds go there (None: MEDIASVC_INTERNAL_URL unset).
    forwarder: Forwarder | None = None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        jobs = JobContext.build(settings)
        queue: JobQueue = (
            ArqQueue(settings.redis_url) if settings.redis_url else InProcessQueue(jobs)
        )

        enqueue_after_commit(jobs.db, queue.enqueue)

        async def after_upload(record: FileRecord) -> None:
            await enqueue_all(queue.enqueue, after_new_file(record.uid))

        ingestor = Ingestor(
            IngestConfig.from_settings(settings), jobs.store, jobs.db, after_commit=after_upload
        )
        return cls(
            settings=settings,
            db=jobs.db,
            store=jobs.store,
            cloud=jobs.cloud,
            queue=queue,
            ingestor=ingestor,
            uploads=UploadEngine(
                ResumableConfig.from_settings(settings), ingestor, jobs.store, jobs.db
            ),
            keyring=KeyRing(settings.api_keys),
            access_log=AccessLog(jobs.db),
            jobs=jobs,
            send_config=SendConfig.from_settings(settings),
            forwarder=_forwarder(settings),
        )

    async def close(self) -> None:
        if self.forwarder is not None:
            await self.forwarder.close()
        await self.queue.close()
        await self.cloud.close()
        await self.db.dispose()


def _forwarder(settings: Settings) -> Forwarder | None:
    key = settings.internal_key()
    if not settings.internal_url or key is None:  # the settings allow no URL without a key
        return None
    return Forwarder(
        settings.internal_url,
        key,
        connect_timeout_s=settings.upload_forward_connect_timeout_s,
        retry_after_s=settings.upload_owner_retry_after_s,
    )
