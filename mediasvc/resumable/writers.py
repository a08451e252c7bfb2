"""One writer per upload: a newer request for an upload ends the one writing it, rather than
waiting for it or writing beside it (the IETF draft's takeover rule, and tus clients that retry
while their first request still hangs on a dead connection).

Three things, because uvicorn may run several worker processes on a node:

- In this process, a registry of the running writers: a new request ends the older one at once
  (its body read is cancelled; what it received is flushed and checkpointed, then it answers).
- Across processes, the row's ``generation``: a new request raises it, and every writer looks at
  it every ``check_s`` (and at each checkpoint) and ends itself once it changed.
- The mutual exclusion itself, an ``flock`` on the upload's file, held for the whole request:
  the new request waits (at most ``wait_s``, then 423) until the older one let go, so two never
  write at once even when the older one looks late. The kernel drops the lock of a killed
  process, so a crash never leaves an upload locked.

The older writer's last checkpoint happens while it still holds the lock, so the new request,
which reads the row only once it has the lock, sees every byte the older one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio

from mediasvc.db.session import Database
from mediasvc.errors import Locked, MediaServiceError, NotFound
from mediasvc.resumable import repository

LOCK_POLL_S = 0.02


class Lease:
    """The running request's hold on an upload."""

    def __init__(self, uid: str, generation: int) -> None:
        self.uid = uid
        self.generation = generation
        self.ended = False  # a newer request took the upload over
        self._on_end: Callable[[], None] | None = None

    def on_end(self, callback: Callable[[], None] | None) -> None:
        """What ends this request's body read (None: nothing to end right now)."""
        self._on_end = callback
        if self.ended and callback is not None:
            callback()

    def end(self) -> None:
        self.ended = True
        if self._on_end is not None:
            self._on_end()


class Arrival:
    """A request that will write an upload, from its first step until it holds the upload (or
    gave up before): ``Writers.after_arrivals`` waits for it."""

    def __init__(self, arriving: dict[str, set[Arrival]], uid: str) -> None:
        self._arriving = arriving
        self._uid = uid
        self.held = asyncio.Event()  # set once it holds the upload, or gave up
        arriving.setdefault(uid, set()).add(self)

    def done(self) -> None:
        if self.held.is_set():
            return
        self.held.set()
        others = self._arriving[self._uid]
        others.discard(self)
        if not others:
            del self._arriving[self._uid]


class Writers:
    def __init__(self, db: Database, *, wait_s: float, check_s: float) -> None:
        self._db = db
        self._wait_s = wait_s
        self._check_s = check_s
        self._running: dict[str, Lease] = {}
        self._arriving: dict[str, set[Arrival]] = {}  # per upload: requests on their way to it

    def arrive(self, uid: str) -> Arrival:
        """Count a request that will write the upload from now (no await before this), until
        ``hold`` has it or it calls ``done()``."""
        return Arrival(self._arriving, uid)

    async def after_arrivals(self, uid: str) -> None:
        """Until no request of this process that came earlier is still on its way to hold the
        upload (``wait_s`` at most). Its client may be gone already (a PATCH cut mid-body while
        its handler was still reading the row): an answer about the upload given before it
        holds the upload would miss the bytes it then records."""
        with anyio.move_on_after(self._wait_s):
            for earlier in list(self._arriving.get(uid, ())):
                await earlier.held.wait()

    @contextlib.asynccontextmanager
    async def hold(
        self, uid: str, path: Path, arrival: Arrival | None = None
    ) -> AsyncIterator[Lease]:
        """Take the upload over (404 if it is gone) and hold it while the block runs;
        ``arrival`` is done once it is held."""
        async with self._db.session() as session:
            generation = await repository.take_over(session, uid)
        if generation is None:
            raise NotFound(f"no upload {uid}")
        if (older := self._running.get(uid)) is not None:
            older.end()
        fd = await self._lock(uid, path)
        lease = Lease(uid, generation)
        self._running[uid] = lease
        if arrival is not None:
            arrival.done()
        watcher = asyncio.create_task(self._watch(lease), name=f"mediasvc-lease-{uid}")
        try:
            yield lease
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if self._running.get(uid) is lease:
                del self._running[uid]
            os.close(fd)  # lets go of the flock

    @contextlib.asynccontextmanager
    async def holding_finished(
        self, uids: list[str], path_for: Callable[[str], Path]
    ) -> AsyncIterator[None]:
        """Hold the locks of finished uploads (a final upload's partials) while the block runs,
        ending nobody: no request writes a finished upload, and one that holds it (another final
        naming it, a DELETE) is waited for (``wait_s``, then 423). Taken in uid order, so two
        final uploads naming the same partials never wait on each other in a circle. 404 for an
        upload whose file is gone."""
        fds: list[int] = []
        try:
            for uid in sorted(set(uids)):
                fds.append(await self._lock(uid, path_for(uid)))
            yield
        finally:
            for fd in fds:
                os.close(fd)  # lets go of the flock

    def still_holds(self, lease: Lease, generation: int | None) -> None:
        """A checkpoint read ``generation`` from the row: end the lease if it moved on."""
        if generation != lease.generation:
            lease.end()

    async def _lock(self, uid: str, path: Path) -> int:
        try:
            fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise NotFound(f"no upload {uid}") from exc
        try:
            with anyio.fail_after(self._wait_s):
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # never blocks
                        return fd
                    except BlockingIOError:
                        await asyncio.sleep(LOCK_POLL_S)
        except TimeoutError as exc:
            os.close(fd)
            raise Locked(
                f"another request still writes upload {uid}; try again in a few seconds"
            ) from exc
        except BaseException:
            os.close(fd)
            raise

    async def _watch(self, lease: Lease) -> None:
        while not lease.ended:
            await asyncio.sleep(self._check_s)
            try:
                async with self._db.session() as session:
                    generation = await repository.generation(session, lease.uid)
            except MediaServiceError:
                continue  # the database is away: look again later
            self.still_holds(lease, generation)


def try_lock(path: Path) -> int | None:
    """The upload's lock if nobody holds it (cleanup never waits for a writer); blocking."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
