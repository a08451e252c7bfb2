"""``GET /api/v1/files/{uid}/preview``: the poster frame or thumbnail the probe job made.

Served like the file itself (``delivery.serve``: conditionals, ranges, one response), from this
node's disk when it has the preview, else from the cloud copy (another node probed the file, or
the local copy is gone); 404 until the probe job has made one.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from mediasvc.api.access import ReadableFile
from mediasvc.api.caching import file_cache_control
from mediasvc.api.common import services_of
from mediasvc.api.openapi import bytes_responses
from mediasvc.db.models import FileRecord, ProbeStatus
from mediasvc.delivery.disposition import content_disposition
from mediasvc.delivery.locate import CloudCopy, open_source
from mediasvc.delivery.serve import Representation, deliver
from mediasvc.delivery.sources import ByteSource
from mediasvc.errors import NotFound, ServiceUnavailable
from mediasvc.media.preview import PREVIEW_MEDIA_TYPE
from mediasvc.services import Services
from mediasvc.storage.cloud import CloudError

router = APIRouter(prefix="/api/v1")


@router.get(
    "/files/{uid}/preview",
    response_class=Response,
    operation_id="file_preview",
    summary="A file's poster frame (video) or thumbnail (image), as JPEG",
    responses=bytes_responses(PREVIEW_MEDIA_TYPE),
)
async def preview(request: Request, uid: str, record: ReadableFile) -> Response:
    # A preview shows the file's content: the same rule as the download (the file's signed
    # link opens it too).
    services = services_of(request)
    representation = _representation(record)

    async def open_preview() -> ByteSource:
        path = services.store.preview_path_for(uid)
        return await open_source(path, services.cloud, lambda: _cloud_copy(services, record))

    return await deliver(request, representation, open_preview, services.send_config)


def _representation(record: FileRecord) -> Representation:
    # The row, not the preview file, gives the validators, so every node (and the cloud path)
    # agrees. A preview is made once per probe; the probe's time names that making.
    made_at = record.probe_updated_at or record.created_at
    return Representation(
        etag=f'"{record.sha256}-preview-{int(made_at.timestamp())}"',
        last_modified=made_at,
        media_type=PREVIEW_MEDIA_TYPE,
        headers={
            "Cache-Control": file_cache_control(record),
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": content_disposition(
                f"{record.uid}.preview.jpg", media_type=PREVIEW_MEDIA_TYPE, inline=True
            ),
        },
    )


async def _cloud_copy(services: Services, record: FileRecord) -> CloudCopy:
    if record.preview_path is None:
        raise NotFound(_why_no_preview(record))
    try:
        info = await services.cloud.stat(record.preview_path)
    except CloudError as exc:
        raise ServiceUnavailable("the preview is not on this node and the cloud is down") from exc
    if info is None:
        raise NotFound("the file's preview is missing from the cloud")
    made_at = record.probe_updated_at or record.created_at
    return CloudCopy(key=record.preview_path, size=info.size, mtime=made_at)


def _why_no_preview(record: FileRecord) -> str:
    if record.probe_status == ProbeStatus.PENDING.value:
        return "no preview yet: the file has not been probed"
    return "this file has no preview (it is not a video or an image, or none could be made)"
