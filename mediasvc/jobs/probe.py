"""probe_media: read a file's media facts, check its MP4 layout, make and push its preview.

States: pending → done (media facts, or ``media`` null for a file that is not media), failed
(``probe_error`` says why: unreadable, cut short, hostile), or skipped (``probe_error`` says
why: no local copy, the file was evicted first; or ffprobe is not installed). A preview that
could not be put in the cloud leaves the row ``pending`` with the facts recorded, and the
reconciler runs the job again later. Idempotent: a job for a row that is no longer pending does
nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from mediasvc.db import repository
from mediasvc.db.models import ProbeStatus
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.kinds import FollowUp, JobResult, Kind
from mediasvc.jobs.transcode import plan_processing
from mediasvc.media.preview import PreviewFailed, make_preview
from mediasvc.media.probe import LocalCopyMissing, MediaFacts, ProbeFailed, analyse, expects_media
from mediasvc.media.tools import ToolMissing
from mediasvc.storage.cloud import CloudError, preview_key_for
from mediasvc.storage.files import size_and_sha256

logger = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 1024 * 1024
MAX_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    status: str
    #: The file is an MP4/MOV without faststart and ``remux_faststart`` is on: queue a remux.
    remux: bool = False
    #: The file has renditions or a storyboard to make: queue a transcode.
    transcode: bool = False


async def probe_file(ctx: JobContext, uid: str) -> ProbeOutcome:
    """Probe ``uid`` if its row is still pending; see the module docstring."""
    async with ctx.db.session() as session:
        record = await repository.get(session, uid)
    if record is None or record.gone_reason is not None:
        return ProbeOutcome("gone")
    if record.probe_status != ProbeStatus.PENDING.value:
        return ProbeOutcome(record.probe_status)
    if not record.local:
        await _record(ctx, uid, ProbeStatus.SKIPPED, error="no local copy to probe (evicted)")
        return ProbeOutcome(ProbeStatus.SKIPPED.value)

    path = ctx.store.path_for(uid)
    try:
        facts = await analyse(
            ctx.media, path, expects_media=expects_media(record.format, record.extension)
        )
    except ToolMissing as exc:
        # Not the file's fault, and no retry will help until an operator installs the tool:
        # pending would wait for ever (and the reconciler would run it again and again).
        logger.warning("cannot probe %s: %s", uid, exc)
        await _record(ctx, uid, ProbeStatus.SKIPPED, error=f"not examined: {exc}")
        return ProbeOutcome(ProbeStatus.SKIPPED.value)
    except LocalCopyMissing:
        return await _missing(ctx, uid)
    except ProbeFailed as exc:
        logger.info("probe of %s failed: %s", uid, exc.reason)
        await _record(ctx, uid, ProbeStatus.FAILED, error=exc.reason)
        return ProbeOutcome(ProbeStatus.FAILED.value)

    note: str | None = None
    preview_key: str | None = None
    if facts is not None and facts.picture is not None:
        try:
            preview_key = await _make_and_push_preview(ctx, uid, path, facts)
        except PreviewFailed as exc:
            note = f"no preview: {exc}"
        except (CloudError, OSError) as exc:
            error = f"preview not yet in the cloud: {type(exc).__name__}: {exc}"
            logger.warning("%s: %s; the reconciler tries again", uid, error)
            if not await _record(ctx, uid, ProbeStatus.PENDING, error=error, media=facts.to_json()):
                return await _not_recorded(ctx, uid)  # deleted meanwhile: no orphan preview
            return ProbeOutcome(ProbeStatus.PENDING.value)
        except ToolMissing as exc:
            note = f"no preview: {exc}"

    remux = (
        ctx.config.remux_faststart
        and facts is not None
        and facts.faststart is False
        and record.derived_from is None
        and record.faststart_uid is None
    )
    media = facts.to_json() if facts is not None else None
    processing = None
    if facts is not None and media is not None:
        playback, processing = plan_processing(ctx.media, facts, faststart_copy_coming=remux)
        if playback is not None:
            media["playback"] = playback.to_json()
        if record.derived_from is not None or not ctx.config.transcode:
            processing = None  # a product is not processed again; or processing is off
    if not await _record(
        ctx,
        uid,
        ProbeStatus.DONE,
        error=note,
        media=media,
        preview=preview_key,
        processing=processing,
    ):
        return await _not_recorded(ctx, uid)
    return ProbeOutcome(ProbeStatus.DONE.value, remux=remux, transcode=processing is not None)


async def probe_job(ctx: JobContext, uid: str, *, attempt: int) -> JobResult:
    """The job: a probe, followed by a faststart remux when the probe asks for one."""
    outcome = await probe_file(ctx, uid)
    follow_ups = [FollowUp(Kind.REMUX, uid)] if outcome.remux else []
    if outcome.transcode:
        follow_ups.append(FollowUp(Kind.TRANSCODE, uid))
    return JobResult(outcome.status, follow_ups=tuple(follow_ups))


async def _not_recorded(ctx: JobContext, uid: str) -> ProbeOutcome:
    async with ctx.db.session() as session:
        current = await repository.get(session, uid, fresh=True)
    if current is not None and current.gone_reason is None:
        return ProbeOutcome(current.probe_status)  # another run finished first
    # Deleted while we probed: the preview must not outlive the row.
    await _remove_preview(ctx, uid)
    return ProbeOutcome("gone")


async def _make_and_push_preview(ctx: JobContext, uid: str, path: Path, facts: MediaFacts) -> str:
    store = ctx.store
    final = store.preview_path_for(uid)
    await make_preview(ctx.media, path, store.preview_part_path_for(uid), final, facts)
    size, sha256 = await anyio.to_thread.run_sync(_measure, final)
    key = preview_key_for(uid)
    await ctx.cloud.put_file(key, final, size=size, sha256=sha256)
    return key


async def _missing(ctx: JobContext, uid: str) -> ProbeOutcome:
    """No file where the row says there is one: evicted meanwhile (skipped), or lost (failed)."""
    async with ctx.db.session() as session:
        record = await repository.get(session, uid, fresh=True)
    if record is None or record.gone_reason is not None:
        return ProbeOutcome("gone")
    if not record.local:
        await _record(ctx, uid, ProbeStatus.SKIPPED, error="no local copy to probe (evicted)")
        return ProbeOutcome(ProbeStatus.SKIPPED.value)
    await _record(ctx, uid, ProbeStatus.FAILED, error="the local copy is missing")
    return ProbeOutcome(ProbeStatus.FAILED.value)


async def _record(
    ctx: JobContext,
    uid: str,
    status: ProbeStatus,
    *,
    error: str | None,
    media: dict[str, Any] | None = None,
    preview: str | None = None,
    processing: dict[str, Any] | None = None,
) -> bool:
    """Write the outcome on a live, still pending row; False if there is none."""
    async with ctx.db.session() as session:
        return await repository.record_probe(
            session,
            uid,
            status,
            now=datetime.now(UTC),
            error=error[:MAX_ERROR_CHARS] if error else None,
            media=media,
            preview=preview,
            processing=processing,
        )


async def _remove_preview(ctx: JobContext, uid: str) -> None:
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(ctx.store.remove_preview, uid)
        try:
            await ctx.cloud.delete(preview_key_for(uid))
        except CloudError as exc:
            logger.warning("could not delete the preview of %s: %s", uid, exc)


def _measure(path: Path) -> tuple[int, str]:
    with path.open("rb") as file:
        return size_and_sha256(file, HASH_CHUNK_BYTES)
