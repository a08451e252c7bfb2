"""The job table alone: every spec complete, each kind's follow-ups, the one runner, the same
rules in-process and on a real arq worker (real Redis, burst mode, as tests/test_jobs.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis

from mediasvc.config import Settings
from mediasvc.jobs import runner
from mediasvc.jobs.config import JobsConfig
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import Enqueue, FollowUp, JobResult, Kind, after_new_file
from mediasvc.jobs.queue import InProcessQueue, enqueue_on
from mediasvc.jobs.runner import enqueue_all, run_job
from mediasvc.jobs.table import CRONS, JOBS, JobSpec
from mediasvc.jobs.worker import worker_settings
from mediasvc.media.config import MediaConfig
from tests.helpers import row, run_worker, started, stopped, wait_for
from tests.mediafiles import MediaFiles

pytestmark = pytest.mark.timeout(180)

REDIS_URL = os.environ.get("MEDIASVC_TEST_REDIS", "redis://127.0.0.1:6379/13")
DEAD_REDIS_URL = "redis://127.0.0.1:9/0"  # the discard port: nothing listens


class Recorder:
    """An ``Enqueue`` that records what it is asked and refuses what it is told to."""

    def __init__(self, refuse: Iterable[Kind] = ()) -> None:
        self.asked: list[FollowUp] = []
        self._refuse = set(refuse)

    async def __call__(self, kind: Kind, uid: str) -> bool:
        self.asked.append(FollowUp(kind, uid))
        return kind not in self._refuse


# --- the table ----------------------------------------------------------------------------------


@pytest.mark.parametrize("push_timeout_s", [60, 3600])
def test_every_kind_has_one_complete_spec(push_timeout_s: int) -> None:
    config = JobsConfig(push_timeout_s=push_timeout_s)
    assert set(JOBS) == set(Kind)
    prefixes = set()
    for kind, spec in JOBS.items():
        assert spec.kind is kind
        assert inspect.iscoroutinefunction(spec.run)
        assert set(inspect.signature(spec.run).parameters) == {"ctx", "uid", "attempt"}
        # Capped at the push's timeout: arq keeps every in-progress key for the longest one.
        assert 1 <= spec.timeout_s(config) <= push_timeout_s
        assert spec.max_tries(config) >= 1
        assert spec.job_id("u" * 26) == f"{spec.id_prefix}:{'u' * 26}"
        prefixes.add(spec.id_prefix)
    assert len(prefixes) == len(JOBS)  # one job of each kind per file, never one for another
    assert JOBS[Kind.PUSH].max_tries(config) > config.push_max_tries  # the job gives up first
    media_jobs = {Kind.PROBE, Kind.REMUX, Kind.TRANSCODE}
    assert {spec.kind for spec in JOBS.values() if spec.media_tool} == media_jobs
    assert [cron.name for cron in CRONS] == ["cleanup", "reconcile"]
    for cron in CRONS:
        assert inspect.iscoroutinefunction(cron.run)
        assert 1 <= cron.timeout_s(config) <= push_timeout_s
        assert cron.every_s(config) >= 1


def test_the_arq_worker_registers_exactly_the_table(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url=REDIS_URL, push_timeout_s=900, probe_timeout_s=5)
    config = JobsConfig.from_settings(settings)
    cls = worker_settings(settings)
    functions = {function.name: function for function in cls.functions}
    assert set(functions) == {kind.value for kind in Kind}
    for kind, spec in JOBS.items():
        function = functions[kind.value]
        assert function.timeout_s == spec.timeout_s(config)
        assert function.max_tries == spec.max_tries(config)
        assert function.keep_result_s == 0  # a kept result would block the reconciler's retry
    assert JOBS[Kind.PROBE].timeout_s(config) == 3 * 5 + 300  # three tool runs and a put
    crons = {job.name: job for job in cls.cron_jobs}
    assert set(crons) == {cron.name for cron in CRONS}
    for cron in CRONS:
        assert crons[cron.name].timeout_s == cron.timeout_s(config)


def test_the_small_configs_come_from_settings(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        redis_url=REDIS_URL,
        push_max_tries=3,
        s3_timeout_s=7.5,
        orphan_grace_s=123,
        remux_faststart=True,
        media_tool_max_memory_bytes=0,
        ffmpeg_path="/opt/ffmpeg",
        probe_timeout_s=4.0,
    )
    jobs, media = JobsConfig.from_settings(settings), MediaConfig.from_settings(settings)
    assert (jobs.redis_url, jobs.push_max_tries, jobs.orphan_grace_s) == (REDIS_URL, 3, 123)
    assert jobs.cloud_request_timeout_s == 7.5 and jobs.remux_faststart is True
    assert jobs.probe_timeout_s == media.probe_timeout_s == 4.0
    assert (media.tool_max_memory_bytes, media.ffmpeg_path) == (0, "/opt/ffmpeg")
    assert JobsConfig.from_settings(Settings(_env_file=None)) == JobsConfig()  # same defaults
    assert MediaConfig.from_settings(Settings(_env_file=None)) == MediaConfig()


def test_a_new_file_is_pushed_then_probed() -> None:
    assert after_new_file("u") == (FollowUp(Kind.PUSH, "u"), FollowUp(Kind.PROBE, "u"))


# --- the runner ---------------------------------------------------------------------------------


def _spec_returning(result: JobResult, seen: list[tuple[str, int]]) -> JobSpec:
    async def job(ctx: JobContext, uid: str, *, attempt: int) -> JobResult:
        seen.append((uid, attempt))
        return result

    return dataclasses.replace(JOBS[Kind.PROBE], run=job)


async def test_the_runner_enqueues_what_a_job_returns_in_order(settings: Settings) -> None:
    follow_ups = (FollowUp(Kind.REMUX, "a"), FollowUp(Kind.PUSH, "b"), FollowUp(Kind.PROBE, "b"))
    seen: list[tuple[str, int]] = []
    enqueue = Recorder()
    ctx = JobContext.build(settings)
    try:
        spec = _spec_returning(JobResult("done", follow_ups=follow_ups), seen)
        result = await run_job(spec, ctx, "a", attempt=3, enqueue=enqueue)
    finally:
        await ctx.db.dispose()
    assert result.status == "done" and seen == [("a", 3)]
    assert enqueue.asked == list(follow_ups)


async def test_a_refused_follow_up_leaves_the_rest_to_the_reconciler() -> None:
    enqueue = Recorder(refuse=[Kind.PUSH])
    assert await enqueue_all(enqueue, after_new_file("u")) == 0
    assert enqueue.asked == [FollowUp(Kind.PUSH, "u")]  # the probe would wait for nothing


async def test_enqueue_on_a_dead_redis_is_a_refusal_not_an_error() -> None:
    pool = aioredis.ConnectionPool.from_url(DEAD_REDIS_URL, socket_connect_timeout=1)
    redis = ArqRedis(connection_pool=pool)
    try:
        assert await enqueue_on(redis, Kind.PUSH, "u" * 26) is False
    finally:
        await redis.aclose()


# --- follow-ups of each kind, from the real jobs on real rows -----------------------------------


async def _upload(client: httpx.AsyncClient, path: Path) -> str:
    body = await asyncio.to_thread(path.read_bytes)
    response = await client.post(
        "/api/v1/files/stream", content=body, headers={"X-Filename": path.name}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["uid"])


@contextlib.asynccontextmanager
async def _app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app, client = await started(settings)
    try:
        yield client
    finally:
        await stopped(app, client)


@contextlib.asynccontextmanager
async def _one_upload_not_queued(
    settings: Settings, path: Path
) -> AsyncIterator[tuple[JobContext, str]]:
    """A job context and the uid of ``path`` uploaded with Redis down: its row is committed
    and no job runs until the test runs one."""
    async with _app(settings.model_copy(update={"redis_url": DEAD_REDIS_URL})) as client:
        uid = await _upload(client, path)
    ctx = JobContext.build(settings)
    try:
        yield ctx, uid
    finally:
        await ctx.db.dispose()
        await ctx.cloud.close()


async def test_follow_ups_of_each_kind(
    make_settings: Callable[..., Settings], media_files: MediaFiles
) -> None:
    settings = make_settings(remux_faststart=True)
    enqueue = Recorder()
    async with _one_upload_not_queued(settings, media_files.slow_mp4) as (ctx, uid):
        push = await run_job(JOBS[Kind.PUSH], ctx, uid, attempt=1, enqueue=enqueue)
        assert (push.status, push.follow_ups, push.retry_in_s) == ("uploaded", (), None)
        probe = await run_job(JOBS[Kind.PROBE], ctx, uid, attempt=1, enqueue=enqueue)
        # The faststart copy stands in for a rendition; the transcode makes the storyboard.
        processed = (FollowUp(Kind.REMUX, uid), FollowUp(Kind.TRANSCODE, uid))
        assert probe.status == "done" and probe.follow_ups == processed
        remux = await run_job(JOBS[Kind.REMUX], ctx, uid, attempt=1, enqueue=enqueue)
        derived = (await row(settings, uid)).faststart_uid
        assert derived is not None and remux.follow_ups == after_new_file(derived)
        assert enqueue.asked == [*processed, *after_new_file(derived)]
        # The copy is faststart: its probe asks for nothing more, and a second remux of the
        # original finds it linked and makes none.
        assert (await run_job(JOBS[Kind.PROBE], ctx, derived, attempt=1, enqueue=enqueue)) == (
            JobResult("done")
        )
        again = await run_job(JOBS[Kind.REMUX], ctx, uid, attempt=1, enqueue=enqueue)
        assert again.follow_ups == ()
        # The transcode's product is a new file too; a second run finds the job done.
        transcode = await run_job(JOBS[Kind.TRANSCODE], ctx, uid, attempt=1, enqueue=enqueue)
        sheet = ((await row(settings, uid)).processing or {})["storyboard"]["uid"]
        assert transcode == JobResult("done", follow_ups=after_new_file(sheet))
        again = await run_job(JOBS[Kind.TRANSCODE], ctx, uid, attempt=1, enqueue=enqueue)
        assert again == JobResult("done")
    assert len(enqueue.asked) == 6


async def test_a_probe_asks_for_no_remux_when_it_is_off(
    make_settings: Callable[..., Settings], media_files: MediaFiles
) -> None:
    settings = make_settings(remux_faststart=False, transcode=False)
    async with _one_upload_not_queued(settings, media_files.slow_mp4) as (ctx, uid):
        probe = await run_job(JOBS[Kind.PROBE], ctx, uid, attempt=1, enqueue=Recorder())
    assert probe == JobResult("done")


# --- the in-process queue runs the table's rules ------------------------------------------------


async def test_in_process_retries_with_the_next_attempt_until_done(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[int] = []

    async def flaky(ctx: JobContext, uid: str, *, attempt: int) -> JobResult:
        attempts.append(attempt)
        return JobResult("pending", retry_in_s=0) if attempt < 3 else JobResult("uploaded")

    monkeypatch.setitem(JOBS, Kind.PUSH, dataclasses.replace(JOBS[Kind.PUSH], run=flaky))
    ctx = JobContext.build(settings)
    queue = InProcessQueue(ctx)
    try:
        assert await queue.enqueue(Kind.PUSH, "u") is True
        assert await queue.enqueue(Kind.PUSH, "u") is False  # one per job id, as on arq

        async def finished() -> bool:
            return await queue.depth() == 0

        await wait_for(finished)
    finally:
        await queue.close()
        await ctx.db.dispose()
    assert attempts == [1, 2, 3]


async def test_in_process_a_crashed_or_overdue_job_frees_its_id_and_slot(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crashes(ctx: JobContext, uid: str, *, attempt: int) -> JobResult:
        raise RuntimeError("boom")

    async def hangs(ctx: JobContext, uid: str, *, attempt: int) -> JobResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    probe, remux = JOBS[Kind.PROBE], JOBS[Kind.REMUX]
    monkeypatch.setitem(JOBS, Kind.PROBE, dataclasses.replace(probe, run=crashes))
    monkeypatch.setitem(
        JOBS, Kind.REMUX, dataclasses.replace(remux, run=hangs, timeout_s=lambda config: 1)
    )
    ctx = JobContext.build(settings)
    queue = InProcessQueue(ctx)
    try:
        # More media jobs than slots: each must give its slot back for the next to run.
        for n in range(3):
            assert await queue.enqueue(Kind.PROBE, f"p{n}") is True
            assert await queue.enqueue(Kind.REMUX, f"r{n}") is True

        async def drained() -> bool:
            return await queue.depth() == 0

        await wait_for(drained, timeout_s=60)
        assert await queue.enqueue(Kind.PROBE, "p0") is True  # the id is free again
        await wait_for(drained)
    finally:
        await queue.close()
        await ctx.db.dispose()


# --- the same rules in-process and on arq -------------------------------------------------------


async def _jobs_of_an_upload(
    settings: Settings,
    path: Path,
    run: Callable[[], Awaitable[None]],
    monkeypatch: pytest.MonkeyPatch,
) -> list[tuple[Kind, str]]:
    """The follow-ups the runner enqueued for one upload, with uids named by role."""
    asked: list[FollowUp] = []

    async def recording(enqueue: Enqueue, follow_ups: Iterable[FollowUp]) -> int:
        follow_ups = tuple(follow_ups)
        asked.extend(follow_ups)
        return await enqueue_all(enqueue, follow_ups)

    monkeypatch.setattr(runner, "enqueue_all", recording)
    async with _app(settings) as client:
        uid = await _upload(client, path)
        await run()

        async def settled() -> bool:
            original = await row(settings, uid)
            if original.faststart_uid is None or original.cloud_status != "uploaded":
                return False
            if original.processing_state != "done":
                return False
            for made in (original.faststart_uid, (original.processing or {})["storyboard"]["uid"]):
                derived = await row(settings, made)
                if derived.cloud_status != "uploaded" or derived.probe_status != "done":
                    return False
            return True

        await wait_for(settled, timeout_s=90)
        original = await row(settings, uid)
    sheet = (original.processing or {})["storyboard"]["uid"]
    names = {uid: "original", original.faststart_uid: "copy", sheet: "storyboard"}
    return [(follow_up.kind, names[follow_up.uid]) for follow_up in asked]


@pytest.mark.usefixtures("redis_url")  # REDIS_URL, flushed before and after
async def test_the_same_follow_ups_in_process_and_on_arq(
    make_settings: Callable[..., Settings],
    media_files: MediaFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def nothing() -> None:
        return None

    in_process = make_settings(remux_faststart=True)
    local = await _jobs_of_an_upload(in_process, media_files.slow_mp4, nothing, monkeypatch)

    on_arq = make_settings(remux_faststart=True, redis_url=REDIS_URL)

    async def burst() -> None:
        await run_worker(on_arq)

    remote = await _jobs_of_an_upload(on_arq, media_files.slow_mp4, burst, monkeypatch)
    expected = [
        (Kind.REMUX, "original"),  # the original's probe; its push asks for nothing
        (Kind.TRANSCODE, "original"),
        (Kind.PUSH, "copy"),  # the remux: a new file
        (Kind.PROBE, "copy"),
        (Kind.PUSH, "storyboard"),  # the transcode: a new file
        (Kind.PROBE, "storyboard"),
    ]
    # In-process the jobs run concurrently: the order across jobs may differ, the set may not.
    assert sorted(local) == sorted(expected)
    assert sorted(remote) == sorted(expected)
