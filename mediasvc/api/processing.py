"""What the transcode job made, as a player asks for it: the storyboard's WebVTT, thumbnails,
HLS playlists.

``GET /api/v1/files/{uid}/hls/master.m3u8`` and ``…/hls/{height}.m3u8``: the master playlist of
the rungs made (media/hls.py) and each rung's byte-range media playlist, whose init section and
segments are ranges of the rung's own file, served by the download route (Range, from disk or
the cloud, like any file).

``GET /api/v1/files/{uid}/storyboard.vtt``: cues built from the storyboard's facts, each naming
the sprite sheet (a file of its own, served with Range like any) with a ``#xywh=`` fragment.

``GET /api/v1/files/{uid}/thumbnail?time=S&width=W``: one frame of a video as JPEG. ``time`` is
taken down to a tenth of a second and clamped to the last frame (a time past the end of the
video is a 422 that names its duration); ``width`` is 16 … ``thumbnail_max_width`` (rounded
to an even number, never wider than the video). Each (uid, time, width) is rendered once, then
served from the disk cache (storage/thumbnails.py: at most ``thumbnail_cache_per_file`` per
file, least recently used out; the file's purge removes it) with a strong ETag, the sha256 of
the JPEG's bytes, so a revalidation is a 304. At most ``THUMBNAIL_RENDERS`` renders run at once
per process; each is bounded like a preview. A video evicted from this node's disk is read
from its cloud copy: ffmpeg opens a presigned URL (or the bucket directory's path) and seeks;
over https it checks the certificate (media/tools.py). The URL stands in ffmpeg's argv, readable
by any user of the node, so it is made once a render slot is ours and expires with the run
(``probe_timeout_s`` + ``URL_SPARE_S``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from mediasvc.api.access import ReadableFile, live_row
from mediasvc.api.caching import file_cache_control
from mediasvc.api.common import base_url_of, services_of
from mediasvc.api.files import cloud_copy, download
from mediasvc.api.openapi import bytes_responses, problem_responses
from mediasvc.db.models import FileRecord, ProbeStatus
from mediasvc.delivery import conditional
from mediasvc.delivery.disposition import content_disposition
from mediasvc.delivery.response import not_modified
from mediasvc.delivery.serve import Representation, deliver
from mediasvc.delivery.sources import ByteSource, LocalFile
from mediasvc.errors import InvalidInput, NotFound, ServiceUnavailable
from mediasvc.media.hls import MASTER_MEDIA_TYPE, master_playlist, media_playlist
from mediasvc.media.playability import main_video
from mediasvc.media.preview import PREVIEW_MEDIA_TYPE, render_frame
from mediasvc.media.probe import MediaFacts
from mediasvc.media.storyboard import Layout, vtt
from mediasvc.media.tools import MediaInput
from mediasvc.services import Services
from mediasvc.storage.cloud import CloudError
from mediasvc.storage.thumbnails import ThumbnailGone

router = APIRouter(prefix="/api/v1")

VTT_MEDIA_TYPE = "text/vtt; charset=utf-8"
MIN_THUMBNAIL_WIDTH = 16
# A cloud copy's URL outlives the render that reads it by this much (clock skew with the store).
URL_SPARE_S = 60.0
READ_BYTES = 64 * 1024


@router.get(
    "/files/{uid}/storyboard.vtt",
    response_class=Response,
    operation_id="file_storyboard",
    summary="A video's storyboard: WebVTT cues pointing at sprite-sheet tiles (#xywh=)",
    responses={
        200: {"content": {"text/vtt": {"schema": {"type": "string"}}}},
        304: {"description": "Not modified"},
        **problem_responses(401, 403, 404, 410, 422, 431, 503),
    },
)
async def storyboard_vtt(request: Request, record: ReadableFile) -> Response:
    storyboard = (record.processing or {}).get("storyboard")
    if not storyboard or not record.media or not record.media.get("duration_s"):
        raise NotFound(_why_no_storyboard(record))
    tiles = Layout(**{k: v for k, v in storyboard.items() if k != "uid"})
    etag = f'"{storyboard["uid"]}"'  # the sheet is immutable: its uid names this text
    headers = {"ETag": etag, "Cache-Control": file_cache_control(record)}
    if _not_modified(request, etag, record.created_at):
        return not_modified(headers)
    sheet_url = f"{base_url_of(request)}/api/v1/files/{storyboard['uid']}"
    body = vtt(tiles, sheet_url, float(record.media["duration_s"]))
    return Response(body, media_type=VTT_MEDIA_TYPE, headers=headers)


@router.get(
    "/files/{uid}/thumbnail",
    response_class=Response,
    operation_id="file_thumbnail",
    summary="One frame of a video as JPEG, at a time and width (cached)",
    responses=bytes_responses(PREVIEW_MEDIA_TYPE),
)
async def thumbnail(
    request: Request,
    record: ReadableFile,
    time: Annotated[float, Query(ge=0, description="Seconds from the start")] = 0.0,
    width: Annotated[int, Query(description="Pixels; 16 up to the configured maximum")] = 320,
) -> Response:
    services = services_of(request)
    facts = _video_facts(record)
    max_width = services.settings.thumbnail_max_width
    if not MIN_THUMBNAIL_WIDTH <= width <= max_width:
        raise InvalidInput(f"width must be from {MIN_THUMBNAIL_WIDTH} to {max_width} pixels")
    seek_s = _clamped(facts, time)
    video = main_video(facts)
    upright_width = (video.height if video.rotation % 180 == 90 else video.width) if video else None
    width = min(width, upright_width or width) // 2 * 2
    time_ms = round(seek_s * 1000)
    cache = services.store.thumbnails
    path = cache.path_for(record.uid, time_ms, width)
    # From here on the entry is read through this descriptor only: another request's prune, or
    # the file's purge, may unlink it at any moment (storage/thumbnails.py).
    fd = await anyio.to_thread.run_sync(cache.hit, path)
    if fd is None:
        fd = await _render(request, services, record, path, seek_s, width)
    try:
        digest = await anyio.to_thread.run_sync(_sha256_of, fd)
        entry = LocalFile(fd, os.fstat(fd), str(path))
    except BaseException:
        os.close(fd)
        raise

    async def open_thumbnail() -> ByteSource:
        return entry

    representation = Representation(
        etag=f'"{digest}"',
        last_modified=record.created_at,
        media_type=PREVIEW_MEDIA_TYPE,
        headers={
            "Cache-Control": file_cache_control(record),
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": content_disposition(
                f"{record.uid}.{time_ms}ms.{width}w.jpg", media_type=PREVIEW_MEDIA_TYPE, inline=True
            ),
        },
    )
    try:
        return await deliver(request, representation, open_thumbnail, services.send_config)
    except BaseException:
        await entry.aclose()  # idempotent: deliver may have closed it already
        raise


def _video_facts(record: FileRecord) -> MediaFacts:
    if record.probe_status == ProbeStatus.PENDING.value:
        raise NotFound("no thumbnails yet: the file has not been probed")
    if not record.media or record.media.get("kind") != "video":
        raise NotFound("this file is not a video: it has no frames to show")
    facts = MediaFacts.from_json(record.media)
    if main_video(facts) is None:
        raise NotFound("this file is not a video: it has no frames to show")
    return facts


def _clamped(facts: MediaFacts, time_s: float) -> float:
    """``time_s`` down to a tenth of a second, no later than the last frame; 422 past the end."""
    duration = facts.duration_s or 0.0
    if time_s > duration:
        raise InvalidInput(f"time {time_s:g} s is past the end of the video ({duration:g} s)")
    video = main_video(facts)
    frame_s = 1 / video.frame_rate if video and video.frame_rate else 0.04
    last_frame = max(0.0, duration - frame_s)
    return math.floor(min(time_s, last_frame) * 10 + 1e-6) / 10  # 2.3 * 10 is 22.999…


async def _render(
    request: Request,
    services: Services,
    record: FileRecord,
    final: Path,
    seek_s: float,
    width: int,
) -> int:
    """Render into the cache; an open descriptor of the entry made. A file purged under the
    render (its cache directory gone) is answered as the file is: 410, or 404."""
    cache = services.store.thumbnails
    part = final.with_name(f"{final.name}.{secrets.token_hex(6)}.part")
    try:
        async with services.thumbnail_slots:
            # The cloud copy's URL is made once a slot is ours: it lives for the run, not the
            # wait for a slot, and no longer (it is in ffmpeg's argv: docs/design.md).
            source = await _media_input(services, record)
            await anyio.to_thread.run_sync(cache.prepare, final)
            reason = await render_frame(services.jobs.media, source, part, seek_s, width)
        if reason is not None:
            if not await anyio.to_thread.run_sync(final.parent.is_dir):
                raise ThumbnailGone(reason)  # ffmpeg's output went with the directory
            raise NotFound(f"no frame at {seek_s:g} s could be rendered: {reason}")
        return await anyio.to_thread.run_sync(cache.store, part, final)
    except ThumbnailGone:
        await live_row(request, record.uid)  # 410 (or 404) for the file purged meanwhile
        raise NotFound("the file is gone") from None  # its cache removed by hand: as if purged
    finally:
        await anyio.to_thread.run_sync(functools.partial(part.unlink, missing_ok=True))


async def _media_input(services: Services, record: FileRecord) -> MediaInput:
    """Where ffmpeg reads the video: this node's disk, else the cloud copy by URL (ffmpeg seeks
    with Range requests, so only the index and the frames around ``time`` are fetched)."""
    source = services.store.path_for(record.uid)
    if await anyio.to_thread.run_sync(source.is_file):
        return MediaInput.local(source)
    copy = await cloud_copy(services, record)  # 410, or 503 when it is not in the cloud yet
    try:
        if await services.cloud.stat(copy.key) is None:
            raise ServiceUnavailable("the video is neither on this node nor in the cloud")
        url = await services.cloud.reader_url(
            copy.key, expires_s=services.jobs.media.probe_timeout_s + URL_SPARE_S
        )
    except CloudError as exc:
        raise ServiceUnavailable(
            "the video is not on this node and the cloud cannot be read now"
        ) from exc
    return MediaInput.of_url(url)


def _sha256_of(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, READ_BYTES, offset):  # pread: the descriptor's offset is unused
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _not_modified(request: Request, etag: str, last_modified: datetime) -> bool:
    outcome = conditional.evaluate(
        request.headers,
        method=request.method,
        etag=etag,
        last_modified=last_modified.astimezone(UTC).replace(microsecond=0),
    )
    return outcome is conditional.Outcome.NOT_MODIFIED


HLS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {MASTER_MEDIA_TYPE: {"schema": {"type": "string"}}}},
    304: {"description": "Not modified"},
    **problem_responses(401, 403, 404, 410, 422, 431, 503),
}


@router.get(
    "/files/{uid}/hls/master.m3u8",
    response_class=Response,
    operation_id="file_hls_master",
    summary="HLS master playlist: the rungs made of the video (CODECS, BANDWIDTH, RESOLUTION)",
    responses=HLS_RESPONSES,
)
async def hls_master(request: Request, record: ReadableFile) -> Response:
    variants = _hls_variants(record)
    base = f"{base_url_of(request)}/api/v1/files/{record.uid}/hls"
    body = master_playlist(variants, lambda height: f"{base}/{height}.m3u8")
    return _playlist(request, record, "-".join(v["uid"] for v in variants), body)


@router.get(
    "/files/{uid}/hls/{height}.m3u8",
    response_class=Response,
    operation_id="file_hls_variant",
    summary="HLS media playlist of one rung: byte ranges of its fMP4 file",
    responses=HLS_RESPONSES,
)
async def hls_variant(request: Request, record: ReadableFile, height: int) -> Response:
    variant = _rung(record, height)
    media_url = f"{base_url_of(request)}/api/v1/files/{record.uid}/hls/{height}.mp4"
    return _playlist(
        request, record, variant["uid"], media_playlist(variant["playlist"], media_url)
    )


@router.get(
    "/files/{uid}/hls/{height}.mp4",
    response_class=Response,
    operation_id="file_hls_media",
    summary="The fMP4 file of one HLS rung (the download of its own UID, with Range)",
    responses=bytes_responses("video/mp4"),
)
@router.head(
    "/files/{uid}/hls/{height}.mp4",
    response_class=Response,
    operation_id="file_hls_media_headers",
    summary="The headers of an HLS rung's file",
    responses=bytes_responses("video/mp4"),
)
async def hls_media(request: Request, record: ReadableFile, height: int) -> Response:
    # Players (ffmpeg's hls demuxer among them) want segment URLs that end in a media
    # extension: this names the rung's file so, and serves it as its own download does.
    rung = await live_row(request, _rung(record, height)["uid"])
    return await download(request, rung.uid, rung)


def _rung(record: FileRecord, height: int) -> dict[str, Any]:
    variant = next((v for v in _hls_variants(record) if v["height"] == height), None)
    if variant is None:
        raise NotFound(f"this video has no HLS rung of height {height}")
    return variant


def _hls_variants(record: FileRecord) -> list[dict[str, Any]]:
    variants: list[dict[str, Any]] = ((record.processing or {}).get("hls") or {}).get(
        "variants"
    ) or []
    if not variants:
        state = (record.processing or {}).get("state")
        if state in ("pending", "running"):
            raise NotFound("no HLS yet: the file is being processed")
        raise NotFound("this file has no HLS (not a video, or MEDIASVC_HLS_LADDER is empty)")
    return variants


def _playlist(request: Request, record: FileRecord, names: str, body: str) -> Response:
    """A playlist named by the files it lists (immutable): its ETag, 304."""
    etag = f'"{hashlib.sha256(names.encode()).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": file_cache_control(record)}
    if _not_modified(request, etag, record.created_at):
        return not_modified(headers)
    return Response(body, media_type=MASTER_MEDIA_TYPE, headers=headers)


def _why_no_storyboard(record: FileRecord) -> str:
    state = (record.processing or {}).get("state")
    if state in ("pending", "running"):
        return "no storyboard yet: the file is being processed"
    return "this file has no storyboard (it is not a video, or none could be made)"
