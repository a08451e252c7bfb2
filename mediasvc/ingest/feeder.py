"""Batch body chunks on the event loop and hand the batches to a worker thread, in order.

uvicorn hands the app ~64–256 KiB per ``receive()`` and stops reading the socket while the app
is busy (docs/facts.md, "Uploads"), so anything slow between two receives stalls the upload.
Here the loop only copies chunks into preallocated buffers; full buffers queue up for one thread
of this upload (hash + write, or multipart parsing), which hands each buffer back when done.
The loop waits only when every buffer is queued, so the socket keeps being read while the
thread works. Memory stays at ``depth`` buffers whatever the body size, and reused buffers touch
no fresh pages.

Why a thread per upload rather than a shared pool: batches must be processed in order, one at a
time, and a one-batch-in-flight hand-off through a pool measured ~0.3 × the speed of uvicorn
counting the body (the loop and the thread took turns instead of overlapping).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import mmap
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

import anyio

from mediasvc.storage.direct import aligned_buffer

# One buffer filling on the loop, one being hashed, one being written (blob.py): three keep all
# stages busy; a fourth measured no faster (2 GiB curl -T, 4 MiB buffers: ~1.0 GB/s either way).
DEFAULT_DEPTH = 3

Buffer = mmap.mmap


class BatchingFeeder:
    def __init__(
        self,
        process: Callable[[memoryview], Future[None] | None],
        *,
        batch_bytes: int,
        depth: int = DEFAULT_DEPTH,
    ) -> None:
        self._process = process
        self._loop = asyncio.get_running_loop()
        # Page-aligned buffers: the blob writes them with O_DIRECT as they are, without a copy.
        self._free: asyncio.Queue[Buffer] = asyncio.Queue()
        for _ in range(depth):
            self._free.put_nowait(aligned_buffer(batch_bytes))
        self._work: queue.SimpleQueue[tuple[Buffer, int] | None] = queue.SimpleQueue()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._error: BaseException | None = None
        self._abandoned = False
        self._ended = False
        self._current: Buffer | None = None
        self._fill = 0
        self._thread = threading.Thread(target=self._run, name="mediasvc-ingest", daemon=True)
        self._thread.start()

    async def feed(self, chunk: bytes) -> None:
        self._raise_failure()
        view = memoryview(chunk)
        while view:
            if self._current is None:
                self._current = await self._free.get()
                self._raise_failure()
                self._fill = 0
            buffer = self._current
            n = min(len(view), len(buffer) - self._fill)
            buffer[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == len(buffer):
                self._work.put((buffer, self._fill))
                self._current = None

    async def close(self) -> None:
        """Process what is buffered and wait for the thread; raises what the thread raised."""
        if self._current is not None and self._fill:
            self._work.put((self._current, self._fill))
            self._current = None
        self._end()
        await asyncio.shield(self._done)
        self._raise_failure()

    async def drain(self) -> None:
        """Stop (skipping queued batches) and wait, even if cancelled, until the thread is done.

        Writes the thread queued may still be running: BlobFile.discard() waits for them.
        """
        self._abandoned = True
        self._end()
        cancelled = False
        with anyio.CancelScope(shield=True):
            # A plain task.cancel() still reaches us inside an anyio shield: keep waiting, or
            # the caller would close and delete the file while the thread still writes to it.
            while not self._done.done():
                try:
                    await asyncio.shield(self._done)
                except asyncio.CancelledError:
                    cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._work.put(None)

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            while (item := self._work.get()) is not None:
                buffer, n = item
                pending: Future[None] | None = None
                if self._error is None and not self._abandoned:
                    try:
                        pending = self._process(memoryview(buffer)[:n])
                    except BaseException as exc:  # handed to the loop, raised there
                        self._error = exc
                if pending is None:
                    self._call_loop(self._free.put_nowait, buffer)
                else:  # still being read (written): the buffer is free once that is done
                    pending.add_done_callback(functools.partial(self._release, buffer))
        finally:
            self._call_loop(self._finish)

    def _release(self, buffer: Buffer, done: Future[None]) -> None:
        if not done.cancelled() and (exc := done.exception()) is not None and self._error is None:
            self._error = exc
        self._call_loop(self._free.put_nowait, buffer)

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    def _call_loop(self, callback: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(callback, *args)
