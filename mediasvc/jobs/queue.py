"""Where jobs go: arq on Redis in production, in-process tasks in the embedded default.

Enqueueing never fails an upload: if Redis is down the row stays ``pending`` and the
reconciler enqueues it once Redis is back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import default_queue_name
from redis.exceptions import RedisError

from mediasvc.jobs.cleanup import cleanup
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.probe import probe_file
from mediasvc.jobs.push import push_file
from mediasvc.jobs.reconcile import reconcile, reconcile_probes
from mediasvc.jobs.remux import remux_file

logger = logging.getLogger(__name__)

PUSH_FUNCTION = "push_to_cloud"
PROBE_FUNCTION = "probe_media"
REMUX_FUNCTION = "remux_faststart"
# In-process probes and remuxes at once: each is an ffprobe/ffmpeg process beside the API.
IN_PROCESS_MEDIA_JOBS = 2
# A readiness probe must answer before the balancer's own timeout, even when Redis hangs.
READY_PING_TIMEOUT_S = 2.0


def push_job_id(uid: str) -> str:
    """One id per file: arq refuses a second copy while one is queued or running."""
    return f"push:{uid}"


def probe_job_id(uid: str) -> str:
    return f"probe:{uid}"


def remux_job_id(uid: str) -> str:
    return f"remux:{uid}"


class JobQueue(Protocol):
    async def enqueue_push(self, uid: str) -> bool:
        """True if a push job was queued (False: one is already queued, or the queue is down)."""
        ...

    async def enqueue_probe(self, uid: str) -> bool:
        """True if a probe_media job was queued; as for pushes, never raises."""
        ...

    async def enqueue_remux(self, uid: str) -> bool:
        """True if a faststart remux job was queued; never raises."""
        ...

    async def depth(self) -> int:
        """Jobs waiting (for /metrics); 0 when it cannot tell."""
        ...

    async def ping(self) -> bool:
        """Whether the queue's store answers (readiness); True when there is none to ask."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def enqueue_push_on(redis: ArqRedis, uid: str) -> bool:
    job = await redis.enqueue_job(PUSH_FUNCTION, uid, _job_id=push_job_id(uid))
    return job is not None


async def enqueue_probe_on(redis: ArqRedis, uid: str) -> bool:
    job = await redis.enqueue_job(PROBE_FUNCTION, uid, _job_id=probe_job_id(uid))
    return job is not None


async def enqueue_remux_on(redis: ArqRedis, uid: str) -> bool:
    job = await redis.enqueue_job(REMUX_FUNCTION, uid, _job_id=remux_job_id(uid))
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

    async def enqueue_push(self, uid: str) -> bool:
        try:
            return await enqueue_push_on(await self._pool(), uid)
        except (TimeoutError, RedisError, OSError) as exc:
            logger.warning("could not enqueue the push of %s (the reconciler will): %s", uid, exc)
            return False

    async def enqueue_probe(self, uid: str) -> bool:
        try:
            return await enqueue_probe_on(await self._pool(), uid)
        except (TimeoutError, RedisError, OSError) as exc:
            logger.warning("could not enqueue the probe of %s (the reconciler will): %s", uid, exc)
            return False

    async def enqueue_remux(self, uid: str) -> bool:
        try:
            return await enqueue_remux_on(await self._pool(), uid)
        except (TimeoutError, RedisError, OSError) as exc:
            logger.warning("could not enqueue the remux of %s: %s", uid, exc)
            return False

    async def depth(self) -> int:
        try:
            return int(await (await self._pool()).zcard(default_queue_name))
        except (TimeoutError, RedisError, OSError):
            return 0

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(READY_PING_TIMEOUT_S):
                return bool(await (await self._pool()).ping())
        except (TimeoutError, RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


class InProcessQueue:
    """The embedded default: the same job functions as asyncio tasks of the API process."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self._pushing: dict[str, asyncio.Task[None]] = {}
        self._media_jobs: dict[str, asyncio.Task[None]] = {}  # "probe:<uid>", "remux:<uid>"
        self._media_slots = asyncio.Semaphore(IN_PROCESS_MEDIA_JOBS)
        self._periodic: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        settings = self._ctx.settings
        self._periodic = [
            asyncio.create_task(self._every(settings.cleanup_every_s, self._cleanup)),
            asyncio.create_task(self._every(settings.reconcile_every_s, self._reconcile)),
        ]

    async def ping(self) -> bool:
        return True  # no Redis: the jobs run in this process

    async def enqueue_push(self, uid: str) -> bool:
        if uid in self._pushing:
            return False
        self._pushing[uid] = asyncio.create_task(self._push(uid))
        return True

    async def enqueue_probe(self, uid: str) -> bool:
        return self._start_media_job(probe_job_id(uid), functools.partial(self._probe, uid))

    async def enqueue_remux(self, uid: str) -> bool:
        return self._start_media_job(remux_job_id(uid), functools.partial(self._remux, uid))

    def _start_media_job(self, job_id: str, job: Callable[[], Awaitable[None]]) -> bool:
        if job_id in self._media_jobs:
            return False

        async def run() -> None:
            try:
                async with self._media_slots:
                    await job()
            except Exception:
                logger.exception("%s crashed; the reconciler will try again", job_id)
            finally:
                self._media_jobs.pop(job_id, None)

        self._media_jobs[job_id] = asyncio.create_task(run())
        return True

    async def _probe(self, uid: str) -> None:
        if (await probe_file(self._ctx, uid)).remux:
            await self.enqueue_remux(uid)

    async def _remux(self, uid: str) -> None:
        derived_uid = await remux_file(self._ctx, uid)
        if derived_uid is not None:
            await self.enqueue_push(derived_uid)
            await self.enqueue_probe(derived_uid)

    async def depth(self) -> int:
        return len(self._pushing) + len(self._media_jobs)

    async def _push(self, uid: str) -> None:
        try:
            attempt = 1
            while True:
                outcome = await push_file(self._ctx, uid, attempt=attempt)
                if outcome.retry_in_s is None:
                    return
                await asyncio.sleep(outcome.retry_in_s)
                attempt += 1
        except Exception:
            logger.exception("push of %s crashed; the reconciler will try again", uid)
        finally:
            self._pushing.pop(uid, None)

    async def _cleanup(self) -> None:
        await cleanup(self._ctx)

    async def _reconcile(self) -> None:
        await reconcile(self._ctx, self.enqueue_push)
        await reconcile_probes(self._ctx, self.enqueue_probe)

    @staticmethod
    async def _every(interval_s: int, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except Exception:
                logger.exception("periodic job %s failed", getattr(job, "__name__", job))

    async def close(self) -> None:
        tasks = [*self._periodic, *self._pushing.values(), *self._media_jobs.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
