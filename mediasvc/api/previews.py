"""``GET /api/v1/files/{uid}/preview``: the poster frame or thumbnail the probe job made.

Served from this node's disk when it has the preview, else from the cloud copy (another node
probed the file, or the local copy is gone); 404 until the probe job has made one.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from mediasvc.api.access import ReadableFile
from mediasvc.api.common import services_of
from mediasvc.api.files import CACHE_NO_STORE, CACHE_PRIVATE_DAY
from mediasvc.api.openapi import problem_responses
from mediasvc.db.models import FileRecord, ProbeStatus
from mediasvc.delivery.cloud import cloud_file_response
from mediasvc.delivery.response import FileBodyResponse, body_options
from mediasvc.delivery.sources import LocalFile
from mediasvc.errors import NotFound, ServiceUnavailable
from mediasvc.media.preview import PREVIEW_MEDIA_TYPE
from mediasvc.storage.cloud import CloudError

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")

_PREVIEW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {PREVIEW_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
    206: {"description": "Partial content"},
    304: {"description": "Not modified"},
    **problem_responses(400, 401, 403, 404, 410, 412, 416, 422, 431, 503),
}


@router.get(
    "/files/{uid}/preview",
    response_class=Response,
    operation_id="file_preview",
    summary="A file's poster frame (video) or thumbnail (image), as JPEG",
    responses=_PREVIEW_RESPONSES,
)
async def preview(request: Request, uid: str, record: ReadableFile) -> Response:
    # A preview shows the file's content: the same rule as the download (the file's signed
    # link opens it too).
    services = services_of(request)
    limited = record.max_downloads is not None or record.expires_at is not None
    options: dict[str, Any] = {
        "media_type": PREVIEW_MEDIA_TYPE,
        "headers": {
            "Cache-Control": CACHE_NO_STORE if limited else CACHE_PRIVATE_DAY,
            "X-Content-Type-Options": "nosniff",
        },
        "content_disposition_type": "inline",
        "filename": f"{uid}.preview.jpg",
        **body_options(services.settings),
    }
    path = services.store.preview_path_for(uid)
    try:
        source = await LocalFile.open(path)
    except FileNotFoundError:
        pass
    else:
        return FileBodyResponse(source, stat_result=source.stat_result, **options)
    if record.preview_path is None:
        raise NotFound(_why_no_preview(record))
    try:
        info = await services.cloud.stat(record.preview_path)
    except CloudError as exc:
        raise ServiceUnavailable("the preview is not on this node and the cloud is down") from exc
    if info is None:
        raise NotFound("the file's preview is missing from the cloud")
    return cloud_file_response(
        cloud=services.cloud,
        key=record.preview_path,
        size=info.size,
        last_modified=record.probe_updated_at or record.created_at,
        **options,
    )


def _why_no_preview(record: FileRecord) -> str:
    if record.probe_status == ProbeStatus.PENDING.value:
        return "no preview yet: the file has not been probed"
    return "this file has no preview (it is not a video or an image, or none could be made)"
