"""A request's checkpoints, from the upload's worker thread into the row, in order, on the loop.

The sink (sink.py) makes bytes durable in its thread and hands (offset, hash state) over with
``submit_threadsafe``; one task writes them to the row, one at a time. Only the latest one
waiting matters (each includes the earlier bytes). Each write reads back the row's generation,
handed to ``on_generation``: a newer request took the upload over if it moved (writers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from mediasvc.db.models import UploadRecord
from mediasvc.db.session import Database
from mediasvc.resumable import repository
from mediasvc.resumable.sink import Checkpoint


class RowSaver:
    def __init__(
        self,
        db: Database,
        row: UploadRecord,
        *,
        expires_after_s: int,
        on_generation: Callable[[int | None], None],
    ) -> None:
        self._db = db
        self._row = row  # kept up to date with what was written
        self._expires_after = timedelta(seconds=expires_after_s)
        self._on_generation = on_generation
        self.saved_offset = row.offset
        self._loop = asyncio.get_running_loop()
        self._waiting: Checkpoint | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"mediasvc-checkpoint-{row.uid}")

    def submit_threadsafe(self, point: Checkpoint) -> None:
        """From the worker thread: record ``point`` soon."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._submit, point)

    async def save(self, point: Checkpoint) -> None:
        """Record the request's last checkpoint (it also moves the expiry), after any still on
        its way (never cancelled midway: its transaction ends first)."""
        self._stopping = True
        self._wake.set()
        await self._task
        await self._write(point)

    async def settle(self) -> None:
        """Stop once what is on its way landed or failed (an error path: the file is cut back
        to ``saved_offset`` next, which must be what the row names); never raises."""
        self._stopping = True
        self._wake.set()
        await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        """Stop (on an error path: what is on its way may be dropped); never raises."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def _submit(self, point: Checkpoint) -> None:
        self._waiting = point
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            point, self._waiting = self._waiting, None
            if point is not None:
                await self._write(point)
            if self._stopping:
                return

    async def _write(self, point: Checkpoint) -> None:
        now = datetime.now(UTC)
        expires_at = now + self._expires_after
        async with self._db.session() as session:
            generation = await repository.checkpoint(
                session,
                self._row.uid,
                offset=point.offset,
                hash_state=point.hash_state,
                hash_start=self._row.hash_start,
                now=now,
                expires_at=expires_at,
            )
        self.saved_offset = self._row.offset = point.offset
        self._row.hash_state = point.hash_state
        self._row.expires_at = expires_at
        self._on_generation(generation)
