"""What every job needs: settings, database, local store, cloud store. Built per worker."""

from __future__ import annotations

from dataclasses import dataclass

from mediasvc.config import Settings
from mediasvc.db.session import Database
from mediasvc.storage.cloud import CloudStore, make_cloud_store
from mediasvc.storage.local import LocalStore


@dataclass(slots=True)
class JobContext:
    settings: Settings
    db: Database
    store: LocalStore
    cloud: CloudStore

    @classmethod
    def build(
        cls, settings: Settings, *, db: Database | None = None, store: LocalStore | None = None
    ) -> JobContext:
        return cls(
            settings=settings,
            db=db or Database(settings.database_url),
            store=store
            or LocalStore(
                settings.media_root,
                fsync=settings.fsync,
                min_free_bytes=settings.min_free_disk_bytes,
                direct_io=settings.direct_io,
            ),
            cloud=make_cloud_store(settings),
        )
