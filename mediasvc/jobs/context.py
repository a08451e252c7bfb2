"""What every job needs: its config, the media tools' config, database, local and cloud store.

``build`` is the one place where these are made from Settings; a worker builds one at start-up,
the API builds one for its in-process jobs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from mediasvc.config import Settings
from mediasvc.db.session import Database
from mediasvc.ingest.config import IngestConfig
from mediasvc.jobs.config import JobsConfig
from mediasvc.media.config import MediaConfig
from mediasvc.storage.cloud import CloudStore, make_cloud_store
from mediasvc.storage.local import LocalStore


@dataclass(frozen=True, slots=True)
class JobContext:
    config: JobsConfig
    media: MediaConfig
    db: Database
    store: LocalStore
    cloud: CloudStore
    ingest: IngestConfig  # URL imports go through the ingest engine (imports/job.py)
    #: Transcodes at once in this process (``transcode_concurrency``; jobs/transcode.py).
    transcode_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))

    @classmethod
    def build(
        cls, settings: Settings, *, db: Database | None = None, store: LocalStore | None = None
    ) -> JobContext:
        return cls(
            config=JobsConfig.from_settings(settings),
            media=MediaConfig.from_settings(settings),
            db=db or Database(settings.database_url),
            store=store
            or LocalStore(
                settings.media_root,
                fsync=settings.fsync,
                min_free_bytes=settings.min_free_disk_bytes,
                direct_io=settings.direct_io,
                thumbnails_per_file=settings.thumbnail_cache_per_file,
            ),
            cloud=make_cloud_store(settings),
            transcode_slots=asyncio.Semaphore(settings.transcode_concurrency),
            ingest=IngestConfig.from_settings(settings),
        )
