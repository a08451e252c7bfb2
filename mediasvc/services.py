"""What a running app holds: settings, database, local and cloud stores, job queue, ingest."""

from __future__ import annotations

from dataclasses import dataclass

from mediasvc.auth import KeyRing
from mediasvc.config import Settings
from mediasvc.db.models import FileRecord
from mediasvc.db.session import Database
from mediasvc.delivery.access import AccessLog
from mediasvc.ingest.config import IngestConfig
from mediasvc.ingest.pipeline import Ingestor
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.queue import ArqQueue, InProcessQueue, JobQueue
from mediasvc.storage.cloud import CloudStore
from mediasvc.storage.local import LocalStore


@dataclass(slots=True)
class Services:
    settings: Settings
    db: Database
    store: LocalStore
    cloud: CloudStore
    queue: JobQueue
    ingestor: Ingestor
    keyring: KeyRing
    access_log: AccessLog

    @classmethod
    def build(cls, settings: Settings) -> Services:
        jobs = JobContext.build(settings)
        queue: JobQueue = (
            ArqQueue(settings.redis_url) if settings.redis_url else InProcessQueue(jobs)
        )

        async def enqueue_push(record: FileRecord) -> None:
            # The probe goes beside the push. A fresh upload's push is refused only when the
            # queue is down: then skip the probe's own wait too; the reconciler enqueues both.
            if await queue.enqueue_push(record.uid):
                await queue.enqueue_probe(record.uid)

        return cls(
            settings=settings,
            db=jobs.db,
            store=jobs.store,
            cloud=jobs.cloud,
            queue=queue,
            ingestor=Ingestor(
                IngestConfig.from_settings(settings),
                jobs.store,
                jobs.db,
                after_commit=enqueue_push,
            ),
            keyring=KeyRing(settings.api_keys),
            access_log=AccessLog(jobs.db),
        )

    @property
    def jobs(self) -> JobContext:
        return JobContext(settings=self.settings, db=self.db, store=self.store, cloud=self.cloud)

    async def close(self) -> None:
        await self.queue.close()
        await self.cloud.close()
        await self.db.dispose()
