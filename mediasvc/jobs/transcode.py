"""transcode_media: what a browser needs of an original video or audio file, after its probe.

The probe decides (``plan_processing``) and writes the original's ``processing`` document with
state ``pending`` and its steps; this job makes them in order, each a derived file (own UID,
``derived_from``, pushed and probed like any new file) committed together with the document
that lists it, so a product exists exactly when its original names it:
- ``rendition``: the browser-playable MP4/M4A (media/rendition.py), when the original does not
  play as it is (media/playability.py) and no faststart copy will stand in for it;
- ``storyboard``: the sprite sheet of a video (media/storyboard.py);
- ``hls``: one fMP4 file per rung of ``MEDIASVC_HLS_LADDER`` (media/hls.py), each committed
  with its media playlist.

States: pending → running → done, failed (``error`` says why: the first step that failed;
what earlier steps made stays), or skipped (no local copy, no ffmpeg). ``percent`` comes from
ffmpeg's ``-progress`` and is written once a second, which is also when the job looks whether
its file still exists: a file deleted mid-job has its ffmpeg killed and its part file removed,
and its purge removes what was already committed.

Bounds: at most ``transcode_concurrency`` runs per process (a job that finds every slot taken
asks to run again shortly, freeing its queue slot); each ffmpeg run's bounds are in
media/encode.py. A run cut by a worker crash runs again (arq, once its lock expires; or the
reconciler) until ``transcode_max_attempts`` runs have started; each start is counted in the
row first. The job id (one per file) keeps two runs from overlapping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mediasvc.db import repository
from mediasvc.db.models import FileRecord, ProcessingState
from mediasvc.db.repository import Processing
from mediasvc.errors import InsufficientStorage
from mediasvc.ingest.commit import commit_part
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.derive import (
    derived_name,
    derived_record,
    discard,
    make_part,
    public_reason,
)
from mediasvc.jobs.kinds import FollowUp, JobResult, after_new_file
from mediasvc.media.config import MediaConfig
from mediasvc.media.encode import EncodeFailed
from mediasvc.media.hls import AAC_LC, avc_codec, bandwidth, make_variant, rungs
from mediasvc.media.playability import Action, Playback, decide, main_video
from mediasvc.media.probe import LocalCopyMissing, MediaFacts, ProbeFailed, analyse
from mediasvc.media.rendition import make_rendition, plan
from mediasvc.media.storyboard import layout, make_storyboard
from mediasvc.media.tools import ToolMissing
from mediasvc.storage.part import PartFile

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0
# A rendition shorter than its original by more than this (seconds, share of the duration) is
# not made: the original is cut short or damaged. Good files differ by a frame or an audio packet.
MAX_MISSING_S = 0.5
MAX_MISSING_SHARE = 0.02
SLOT_WAIT_S = 5.0  # a job that found no free slot runs again after this
MAX_ERROR_CHARS = 500
RENDITION, STORYBOARD, HLS = "rendition", "storyboard", "hls"


class FileGone(Exception):
    """The original was deleted (or expired) while the job ran."""


def plan_processing(
    config: MediaConfig, facts: MediaFacts, *, faststart_copy_coming: bool
) -> tuple[Playback | None, Processing | None]:
    """The probe's decision, and the processing document to start with (None: nothing to do).

    ``faststart_copy_coming``: the remux job will copy an MP4 whose only fault is its layout,
    and that copy plays: no rendition besides it.
    """
    playback = decide(facts)
    if playback is None:
        return None, None
    steps: list[str] = []
    if playback.action is not Action.NONE and not (
        playback.action is Action.REMUX and faststart_copy_coming
    ):
        steps.append(RENDITION)
    video = main_video(facts) if facts.kind == "video" else None
    if video is not None and facts.duration_s:
        steps.append(STORYBOARD)
        if config.ladder:
            steps.append(HLS)
    if not steps:
        return playback, None
    document: Processing = {
        "state": ProcessingState.PENDING.value,
        "steps": steps,
        "step": None,
        "percent": 0.0,
        "attempts": 0,
        "error": None,
        "renditions": [],
        "storyboard": None,
        "hls": None,
    }
    return playback, document


def products_of(document: Processing | None) -> set[str]:
    """The uids of the files the transcode made (renditions, storyboard sheet)."""
    if document is None:
        return set()
    uids = {r["uid"] for r in document.get("renditions", [])}
    if document.get("storyboard"):
        uids.add(document["storyboard"]["uid"])
    uids |= {v["uid"] for v in (document.get("hls") or {}).get("variants", [])}
    return uids


async def transcode_job(ctx: JobContext, uid: str, *, attempt: int) -> JobResult:
    """The job: wait for a slot (by asking to run again), then ``transcode_file``."""
    if ctx.transcode_slots.locked():
        return JobResult("waiting for a slot", retry_in_s=SLOT_WAIT_S)
    async with ctx.transcode_slots:
        return await transcode_file(ctx, uid)


async def transcode_file(ctx: JobContext, uid: str) -> JobResult:
    async with ctx.db.session() as session:
        original = await repository.get(session, uid)
    if original is None or original.gone_reason is not None:
        return JobResult("gone")
    document = original.processing
    if document is None or document["state"] not in (
        ProcessingState.PENDING.value,
        ProcessingState.RUNNING.value,
    ):
        return JobResult(original.processing_state or "nothing to do")
    run = _Run(ctx, original, dict(document))
    return await run.go()


class _Run:
    """One run of the job on one original: its document, its progress, what it made."""

    def __init__(self, ctx: JobContext, original: FileRecord, document: Processing) -> None:
        self.ctx = ctx
        self.original = original
        self.uid = original.uid
        self.document = document
        self.made: list[str] = []
        self.step_number = 0  # steps before the current one
        self.fraction = 0.0  # of the current step

    async def go(self) -> JobResult:
        document = self.document
        if not self.original.local:
            return await self._end(ProcessingState.SKIPPED, "no local copy to process (evicted)")
        document["attempts"] = int(document.get("attempts") or 0) + 1
        if document["attempts"] > self.ctx.config.transcode_max_attempts:
            return await self._end(
                ProcessingState.FAILED,
                f"stopped after {document['attempts'] - 1} runs that did not finish "
                "(the worker died during each)",
            )
        document["state"] = ProcessingState.RUNNING.value
        try:
            if not await self._write():
                raise FileGone
            facts = MediaFacts.from_json(self.original.media or {})
            for number, step in enumerate(document["steps"]):
                if self._done(step):
                    continue
                document["step"] = step
                self.step_number = number
                self.fraction = 0.0
                await self._step(step, facts)
            document["step"] = None
            return await self._end(ProcessingState.DONE, None)
        except FileGone:
            logger.info("%s went during its transcode; stopped", self.uid)
            return JobResult("gone", follow_ups=self._follow_ups())
        except ToolMissing as exc:
            return await self._end(ProcessingState.SKIPPED, f"not processed: {exc}")
        except LocalCopyMissing:
            return await self._end(ProcessingState.SKIPPED, "the local copy went (evicted)")
        except (EncodeFailed, ProbeFailed, InsufficientStorage, OSError) as exc:
            reason = exc.reason if isinstance(exc, ProbeFailed) else public_reason(exc)
            logger.warning("%s of %s failed: %s", document.get("step"), self.uid, reason)
            return await self._end(ProcessingState.FAILED, f"{document.get('step')}: {reason}")

    def _done(self, step: str) -> bool:
        if step == RENDITION:
            return any(r["role"] == "playback" for r in self.document["renditions"])
        if step == HLS:
            return bool((self.document.get(HLS) or {}).get("complete"))
        return self.document.get(step) is not None

    async def _step(self, step: str, facts: MediaFacts) -> None:
        ctx, source = self.ctx, self.ctx.store.path_for(self.uid)
        if not await _exists(source):
            raise LocalCopyMissing(str(source))
        if step == RENDITION:
            streams = plan(facts)

            async def write(target: Path) -> None:
                await make_rendition(ctx.media, source, target, facts, streams, self._on_progress)

            part, sha256 = await self._make(write)
            made = await self._facts_of(part)
            if (reason := _short_by(facts, made)) is not None:
                await discard(part)
                raise ProbeFailed(reason)
            entry = {"uid": part.uid, "role": "playback", **_codec_facts(made, part.size)}
            entry["kept"] = streams.kept()
            self.document["renditions"] = [*self.document["renditions"], entry]
            await self._commit(
                part, sha256, name=derived_name(self.original, streams.extension),
                media_type=streams.media_type, extension=streams.extension,
            )  # fmt: skip
        elif step == HLS:
            await self._hls(facts, source)
        elif step == STORYBOARD:
            video = main_video(facts)
            assert video is not None and facts.duration_s and video.width and video.height
            upright = video.rotation % 180 == 90
            width, height = (video.height, video.width) if upright else (video.width, video.height)
            tiles = layout(ctx.media, facts.duration_s, width, height)

            async def write(target: Path) -> None:
                await make_storyboard(
                    ctx.media, source, target, video_index=video.index,
                    duration_s=facts.duration_s or 0.0, tiles=tiles,
                    on_progress=self._on_progress,
                )  # fmt: skip

            part, sha256 = await self._make(write)
            self.document["storyboard"] = {"uid": part.uid, **tiles.to_json()}
            await self._commit(
                part, sha256, name=derived_name(self.original, "storyboard.jpg"),
                media_type="image/jpeg", extension="jpg",
            )  # fmt: skip

    async def _hls(self, facts: MediaFacts, source: Path) -> None:
        """One fMP4 file per rung, each committed with its playlist; rungs made by a run that
        was cut short are kept."""
        video = main_video(facts)
        assert video is not None and video.width and video.height
        upright_height = video.width if video.rotation % 180 == 90 else video.height
        heights = rungs(self.ctx.media, upright_height)
        audio = next((s.index for s in facts.streams if s.kind == "audio"), None)
        hls = self.document.get(HLS) or {"variants": [], "complete": False}
        self.document[HLS] = hls
        for number, height in enumerate(heights):
            if any(v["height"] == height for v in hls["variants"]):
                continue
            playlist: list[str] = []

            def on_progress(fraction: float, number: int = number) -> None:
                self.fraction = (number + fraction) / len(heights)

            async def write(
                target: Path, height: int = height, playlist: list[str] = playlist
            ) -> None:
                playlist.append(
                    await make_variant(
                        self.ctx.media, source, target, video_index=video.index,
                        audio_index=audio, height=height, duration_s=facts.duration_s,
                        on_progress=on_progress,
                    )
                )  # fmt: skip

            part, sha256 = await self._make(write)
            made = await self._facts_of(part)
            rates = bandwidth(playlist[0])
            codecs = avc_codec(height) + (f",{AAC_LC}" if audio is not None else "")
            hls["variants"] = [
                *hls["variants"],
                {
                    "uid": part.uid, "height": made.height or height, "width": made.width,
                    "bandwidth": rates.peak, "average_bandwidth": rates.average,
                    "codecs": codecs, "playlist": playlist[0],
                },
            ]  # fmt: skip
            hls["complete"] = len(hls["variants"]) == len(heights)
            await self._commit(
                part, sha256, name=derived_name(self.original, f"{height}p.mp4"),
                media_type="video/mp4", extension="mp4", fraction=(number + 1) / len(heights),
            )  # fmt: skip

    async def _make(self, write: Callable[[Path], Awaitable[None]]) -> tuple[PartFile, str]:
        """``make_part`` with the progress written once a second; cancelled (its ffmpeg killed,
        its part file removed) if the file goes meanwhile."""
        task = asyncio.ensure_future(make_part(self.ctx, self.original.size, write))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=PROGRESS_EVERY_S)
                if task in done:
                    return task.result()
                if not await self._write():
                    if task.done() and not task.cancelled() and task.exception() is None:
                        await discard(task.result()[0])  # made while we looked: not wanted
                    raise FileGone
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _facts_of(self, part: PartFile) -> MediaFacts:
        try:
            made = await analyse(self.ctx.media, part.path, expects_media=True)
        except BaseException:
            await discard(part)
            raise
        if made is None:
            await discard(part)
            raise ProbeFailed("ffmpeg's output is not readable as media")
        return made

    async def _commit(
        self,
        part: PartFile,
        sha256: str,
        *,
        name: str | None,
        media_type: str,
        extension: str,
        fraction: float = 1.0,
    ) -> None:
        record = derived_record(
            self.ctx, self.original, part, sha256,
            name=name, media_type=media_type, extension=extension,
        )  # fmt: skip
        self.fraction = fraction  # of the step, once this product is in
        self._stamp()
        if not await commit_part(self.ctx.db, part, record, processing=self.document):
            raise FileGone
        assert part.uid is not None
        self.made.append(part.uid)

    def _on_progress(self, fraction: float) -> None:
        self.fraction = fraction

    def _stamp(self) -> None:
        steps = len(self.document["steps"]) or 1
        overall = (self.step_number + self.fraction) / steps
        self.document["percent"] = round(100 * min(1.0, overall), 1)

    async def _write(self) -> bool:
        """Write the document on the live row; False if the file is gone."""
        self._stamp()
        async with self.ctx.db.session() as session:
            return await repository.record_processing(session, self.uid, self.document)

    async def _end(self, state: ProcessingState, error: str | None) -> JobResult:
        self.document["state"] = state.value
        self.document["error"] = error[:MAX_ERROR_CHARS] if error else None
        if state is ProcessingState.DONE:
            self.fraction, self.step_number = 0.0, len(self.document["steps"])
        await self._write()
        return JobResult(state.value, follow_ups=self._follow_ups())

    def _follow_ups(self) -> tuple[FollowUp, ...]:
        return tuple(follow_up for uid in self.made for follow_up in after_new_file(uid))


def _short_by(source: MediaFacts, made: MediaFacts) -> str | None:
    """Why the rendition does not stand for the original: it is missing a part of it (the file is
    cut short or damaged, and ffmpeg made what it could read). None if it is whole."""
    if not source.duration_s:
        return None
    missing = source.duration_s - (made.duration_s or 0.0)
    if missing <= max(MAX_MISSING_S, MAX_MISSING_SHARE * source.duration_s):
        return None
    return (
        f"only {made.duration_s or 0:g} s of {source.duration_s:g} s could be decoded: the file "
        "is cut short or damaged"
    )


def _codec_facts(facts: MediaFacts, size: int) -> dict[str, Any]:
    video = main_video(facts)
    audio = next((s for s in facts.streams if s.kind == "audio"), None)
    return {
        "format": "video/mp4" if video else "audio/mp4",
        "size": size,
        "duration_s": facts.duration_s,
        "bit_rate": facts.bit_rate,
        "width": facts.width,
        "height": facts.height,
        "video_codec": video.codec if video else None,
        "video_profile": video.profile if video else None,
        "pix_fmt": video.pix_fmt if video else None,
        "frame_rate": video.frame_rate if video else None,
        "audio_codec": audio.codec if audio else None,
        "faststart": facts.faststart,
    }


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.is_file)
