"""Where jobs go: arq on Redis in production, in-process tasks in the embedded default.

One call for every kind, ``enqueue(kind, uid)``; what each kind is and runs is in jobs/table.py.
Enqueueing never fails an upload: if Redis is down the row stays ``pending`` and the reconciler
enqueues it once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import default_queue_name
from redis.exceptions import RedisError

from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import Kind
from mediasvc.jobs.runner import run_job
from mediasvc.jobs.table import CRONS, JOBS, CronSpec

logger = logging.getLogger(__name__)

# In-process probes and remuxes at once: each is an ffprobe/ffmpeg process beside the API.
IN_PROCESS_MEDIA_JOBS = 2
# A readiness probe must answer before the balancer's own timeout, even when Redis hangs.
READY_PING_TIMEOUT_S = 2.0
REDIS_ERRORS = (TimeoutError, RedisError, OSError)


class JobQueue(Protocol):
    async def enqueue(self, kind: Kind, uid: str) -> bool:
        """True if the job was queued; False if the same job is already queued or running, or
        the queue is down (then the reconciler enqueues it later). Never raises."""
        ...

    async def depth(self) -> int:
        """Jobs waiting (for /metrics); 0 when it cannot tell."""
        ...

    async def ping(self) -> bool:
        """Whether the queue's store answers (readiness); True when there is none to ask."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def enqueue_on(redis: ArqRedis, kind: Kind, uid: str) -> bool:
    """Enqueue into arq; never raises (a Redis error is logged and is a refusal)."""
    spec = JOBS[kind]
    try:
        job = await redis.enqueue_job(kind.value, uid, _job_id=spec.job_id(uid))
    except REDIS_ERRORS as exc:
        logger.warning("could not enqueue %s (the reconciler will): %s", spec.job_id(uid), exc)
        return False
    return job is not None


class ArqQueue:
    """Enqueues into arq's Redis; the pool is made on first use so Redis may start later."""

    def __init__(self, redis_url: str) -> None:
        self._settings = RedisSettings.from_dsn(redis_url)
        # Fail fast: the upload must not wait for Redis, the reconciler catches up.
        self._settings.conn_retries = 0
        self._settings.conn_timeout = 1
        self._redis: ArqRedis | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        pass

    async def _pool(self) -> ArqRedis:
        async with self._lock:
            if self._redis is None:
                self._redis = await create_pool(self._settings)
            return self._redis

    async def enqueue(self, kind: Kind, uid: str) -> bool:
        try:
            redis = await self._pool()
        except REDIS_ERRORS as exc:
            logger.warning(
                "could not enqueue the %s of %s (the reconciler will): %s", kind, uid, exc
            )
            return False
        return await enqueue_on(redis, kind, uid)

    async def depth(self) -> int:
        try:
            return int(await (await self._pool()).zcard(default_queue_name))
        except REDIS_ERRORS:
            return 0

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(READY_PING_TIMEOUT_S):
                return bool(await (await self._pool()).ping())
        except REDIS_ERRORS:
            return False

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


class InProcessQueue:
    """The embedded default: the jobs of the table as asyncio tasks of the API process."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self._running: dict[str, asyncio.Task[None]] = {}  # by job id, as arq dedupes
        self._media_slots = asyncio.Semaphore(IN_PROCESS_MEDIA_JOBS)
        self._periodic: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._periodic = [asyncio.create_task(self._every(cron)) for cron in CRONS]

    async def ping(self) -> bool:
        return True  # no Redis: the jobs run in this process

    async def enqueue(self, kind: Kind, uid: str) -> bool:
        job_id = JOBS[kind].job_id(uid)
        if job_id in self._running:
            return False
        self._running[job_id] = asyncio.create_task(self._run(kind, uid, job_id))
        return True

    async def depth(self) -> int:
        return len(self._running)

    async def _run(self, kind: Kind, uid: str, job_id: str) -> None:
        spec = JOBS[kind]
        try:
            attempt = 1
            while True:
                async with self._slot(spec.media_tool):
                    result = await run_job(
                        spec, self._ctx, uid, attempt=attempt, enqueue=self.enqueue
                    )
                if result.retry_in_s is None:
                    return
                await asyncio.sleep(result.retry_in_s)
                attempt += 1
        except Exception:
            logger.exception("%s crashed; the reconciler will try again", job_id)
        finally:
            self._running.pop(job_id, None)

    @contextlib.asynccontextmanager
    async def _slot(self, media_tool: bool) -> AsyncIterator[None]:
        if not media_tool:
            yield
            return
        async with self._media_slots:
            yield

    async def _every(self, cron: CronSpec) -> None:
        while True:
            await asyncio.sleep(cron.every_s(self._ctx.config))
            try:
                async with asyncio.timeout(cron.timeout_s(self._ctx.config)):
                    await cron.run(self._ctx, self.enqueue)
            except Exception:
                logger.exception("periodic job %s failed", cron.name)

    async def close(self) -> None:
        tasks = [*self._periodic, *self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
