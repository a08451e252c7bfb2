"""What a running app holds: settings, database, local store, ingest pipeline."""

from __future__ import annotations

from dataclasses import dataclass

from mediasvc.config import Settings
from mediasvc.db.session import Database
from mediasvc.ingest.pipeline import Ingestor
from mediasvc.storage.local import LocalStore


@dataclass(slots=True)
class Services:
    settings: Settings
    db: Database
    store: LocalStore
    ingestor: Ingestor

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(settings.database_url)
        store = LocalStore(
            settings.media_root, fsync=settings.fsync, min_free_bytes=settings.min_free_disk_bytes
        )
        return cls(settings=settings, db=db, store=store, ingestor=Ingestor(settings, store, db))

    async def close(self) -> None:
        await self.db.dispose()
