"""Batch body chunks on the event loop and hand the batches to a worker thread, in order.

uvicorn hands the app ~64–256 KiB per ``receive()`` and stops reading the socket while the app
is busy (docs/facts.md, "Uploads"), so anything slow between two receives stalls the upload.
Here the loop only copies chunks into page-aligned buffers from the process's pool
(ingest/buffers.py); full buffers queue up for one thread of this upload, which runs
``process`` on each (hash + write, or multipart parsing). ``process`` returns a future that is
done once the batch is no longer read (its write may still run when ``process`` returns); the
buffer goes back to the pool then, and only then. An upload holds at most ``depth`` buffers, and
the loop waits only when all of them are queued, so the socket keeps being read while the
thread works.

A slow body must not hold what a fast one needs: when the body idles, ``release()`` hands the
whole 4 KiB blocks received so far to the thread and gives the buffer back, keeping the rest
(under 4 KiB) aside, so every batch still starts on a block boundary (O_DIRECT). The thread
starts when the first batch is queued and ends once it had nothing to do for
``THREAD_LINGER_S``, after ``on_idle`` (the part file ends its writer thread): an idle upload
holds no thread.

A thread per busy upload, not a shared pool: batches must be processed in order, one at a time,
and the loop and the thread must overlap rather than take turns (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

import anyio

from mediasvc.ingest.buffers import Buffer, BufferPool
from mediasvc.storage.direct import ALIGN

# One buffer filling on the loop, one being hashed, one being written: three keep all stages
# busy (a fourth measured no faster: docs/performance.md).
DEFAULT_DEPTH = 3
# A worker thread with no batch for this long ends; the next batch starts another.
THREAD_LINGER_S = 2.0

_Batch = tuple[Buffer, int]


class BatchingFeeder:
    def __init__(
        self,
        process: Callable[[memoryview], Future[None]],
        *,
        pool: BufferPool,
        depth: int = DEFAULT_DEPTH,
        on_idle: Callable[[], None] | None = None,
        linger_s: float = THREAD_LINGER_S,
    ) -> None:
        self._process = process
        self._pool = pool
        self._on_idle = on_idle
        self._linger_s = linger_s
        self._loop = asyncio.get_running_loop()
        self._held = asyncio.Semaphore(depth)
        self._work: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread_running = False  # guarded by _lock
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._error: BaseException | None = None
        self._abandoned = False
        self._ended = False
        self._current: Buffer | None = None
        self._fill = 0
        self._carry = b""  # under one block, kept aside by release()

    async def feed(self, chunk: bytes) -> None:
        self._raise_failure()
        view = memoryview(chunk)
        while view:
            if self._current is None:
                await self._take()
            buffer = self._current
            assert buffer is not None
            n = min(len(view), len(buffer) - self._fill)
            buffer[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == len(buffer):
                self._current = None
                self._submit((buffer, self._fill))

    def release(self) -> None:
        """The body idles: hand over the whole blocks received so far and give the buffer back.

        Call on the loop, between two ``feed()`` calls.
        """
        buffer, fill = self._current, self._fill
        if buffer is None:
            return
        self._current = None
        whole = fill - fill % ALIGN
        self._carry = bytes(buffer[whole:fill])
        if whole:
            self._submit((buffer, whole))  # the thread gives it back once processed
        else:
            self._give_back(buffer)

    async def close(self) -> None:
        """Process what is buffered and wait for the thread; raises what the thread raised."""
        if self._carry and self._current is None:
            await self._take()  # copies the carry into a buffer
        if self._current is not None:
            buffer, self._current = self._current, None
            self._submit((buffer, self._fill))
        self._end()
        await asyncio.shield(self._done)
        self._raise_failure()

    async def drain(self) -> None:
        """Stop (skipping queued batches) and wait, even if cancelled, until the thread is done.

        Writes the thread queued may still be running: PartFile.discard() waits for them.
        """
        self._abandoned = True
        self._carry = b""
        if self._current is not None:
            buffer, self._current = self._current, None
            self._give_back(buffer)
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

    async def _take(self) -> None:
        await self._held.acquire()
        try:
            buffer = await self._pool.take()
        except BaseException:
            self._held.release()
            raise
        self._current = buffer
        self._fill = len(self._carry)
        if self._carry:
            buffer[: self._fill] = self._carry
            self._carry = b""
        self._raise_failure()

    def _give_back(self, buffer: Buffer) -> None:
        self._pool.give(buffer)
        self._held.release()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._submit(None)

    def _submit(self, item: _Batch | None) -> None:
        self._work.put(item)
        with self._lock:
            if self._thread_running:
                return
            self._thread_running = True
        threading.Thread(target=self._run, name="mediasvc-ingest", daemon=True).start()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            try:
                item = self._work.get(timeout=self._linger_s)
            except queue.Empty:
                if self._on_idle is not None:
                    self._on_idle()  # before leaving: no other thread of ours runs meanwhile
                with self._lock:
                    if self._work.empty():
                        self._thread_running = False
                        return
                continue
            if item is None:
                self._call_loop(self._finish)
                return
            self._handle(*item)

    def _handle(self, buffer: Buffer, n: int) -> None:
        if self._error is not None or self._abandoned:
            self._call_loop(self._give_back, buffer)
            return
        try:
            done = self._process(memoryview(buffer)[:n])
        except BaseException as exc:  # handed to the loop, raised there
            self._error = exc
            self._call_loop(self._give_back, buffer)
            return
        done.add_done_callback(functools.partial(self._release, buffer))

    def _release(self, buffer: Buffer, done: Future[None]) -> None:
        if not done.cancelled() and (exc := done.exception()) is not None and self._error is None:
            self._error = exc
        self._call_loop(self._give_back, buffer)

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    def _call_loop(self, callback: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(callback, *args)
