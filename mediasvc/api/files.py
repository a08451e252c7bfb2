"""Files API: list, metadata, download (Range, conditionals, budget, cloud fallback), delete."""

from __future__ import annotations

import base64
import binascii
import logging
import time
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from mediasvc.api.access import ReadableFile, ReadableRow, check_owner, live_record
from mediasvc.api.caching import file_cache_control
from mediasvc.api.common import Caller, base_url_of, services_of
from mediasvc.api.openapi import bytes_responses, problem_responses
from mediasvc.api.schemas import FileList, FileMetadata, SignedLink
from mediasvc.db import repository
from mediasvc.db.file_row import FileRow
from mediasvc.db.models import CloudStatus, FileRecord, GoneReason
from mediasvc.delivery import signing
from mediasvc.delivery.budget import budget_bytes, is_prefetch, remaining_downloads
from mediasvc.delivery.disposition import content_disposition
from mediasvc.delivery.locate import CloudCopy, open_source
from mediasvc.delivery.offload import accel_redirect
from mediasvc.delivery.reservation import reserve
from mediasvc.delivery.response import SourceResponse
from mediasvc.delivery.serve import Representation, deliver
from mediasvc.delivery.sources import ByteSource
from mediasvc.errors import (
    DatabaseUnavailable,
    Forbidden,
    Gone,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
)
from mediasvc.ids import is_valid_uid, token_matches
from mediasvc.ingest.checksum import repr_digest_header
from mediasvc.jobs.cleanup import purge
from mediasvc.services import Services

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")


@router.get(
    "/files",
    response_model=FileList,
    summary="Live files, newest first (uploads; derived files with include_derived)",
    responses=problem_responses(401, 403, 422, 431, 503),
)
async def list_files(
    request: Request,
    caller: Caller,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    kind: Annotated[
        Literal["video", "audio", "image", "other"] | None,
        Query(
            description="Only files whose format (MIME type) is video/…, audio/…, image/…, "
            "or none of these"
        ),
    ] = None,
    include_derived: Annotated[
        bool,
        Query(
            description="Also list the files made from others (renditions, storyboard sheets, "
            "HLS rungs, faststart copies: those with `derived_from`). They are left out by "
            "default, and always reachable by UID and from their original's metadata."
        ),
    ] = False,
) -> FileList:
    services = services_of(request)
    page_size = limit or services.settings.list_default_limit
    async with services.db.session() as session:
        records = await repository.list_live(
            session,
            limit=page_size + 1,
            after=_decode_cursor(cursor) if cursor else None,
            now=datetime.now(UTC),
            # A key sees its own files; an admin key, and everyone when keys are off, sees all.
            owner=caller.name if caller and not caller.admin else None,
            kind=kind,
            include_derived=include_derived,
        )
    page = records[:page_size]
    base_url = base_url_of(request)
    return FileList(
        items=[FileMetadata.from_record(record, base_url=base_url) for record in page],
        next_cursor=_encode_cursor(page[-1]) if len(records) > page_size else None,
    )


@router.get(
    "/files/{uid}/metadata",
    response_model=FileMetadata,
    summary="A file's metadata",
    # 401/403 as for the download: the sha256 and size confirm a guess of the content.
    responses=problem_responses(401, 403, 404, 410, 422, 431, 503),
)
async def file_metadata(request: Request, record: ReadableFile) -> FileMetadata:
    return FileMetadata.from_record(record, base_url=base_url_of(request))


_DOWNLOAD_RESPONSES = bytes_responses("*/*")  # the file's own type (its `format`)


@router.get(
    "/files/{uid}",
    response_class=Response,
    operation_id="download_file",
    summary="Download a file (Range, conditional requests)",
    responses=_DOWNLOAD_RESPONSES,
)
@router.head(
    "/files/{uid}",
    response_class=Response,
    operation_id="download_file_headers",
    summary="A download's headers, without the body",
    responses=_DOWNLOAD_RESPONSES,
)
async def download(
    request: Request,
    uid: str,
    record: ReadableRow,
    inline: Annotated[bool, Query(description="Content-Disposition: inline")] = False,
) -> Response:
    services = services_of(request)
    budget = budget_bytes(record)
    if budget is not None and is_prefetch(request.headers):
        raise Forbidden("prefetches of a file with a download limit are refused")

    async def open_file() -> ByteSource:
        path = services.store.path_for(record.uid)
        return await open_source(path, services.cloud, partial(cloud_copy, services, record))

    response = await deliver(
        request,
        _representation(record, inline=inline),
        open_file,
        services.send_config,
    )
    if not isinstance(response, SourceResponse):
        return response  # 304: no access recorded, nothing charged
    if request.method == "GET":
        services.access_log.record(record, datetime.now(UTC))  # best effort, written later
    if budget is not None:
        try:
            await _charge(services, record, response, request, budget)
        except BaseException:
            await response.discard()
            raise
        return response
    offloaded = accel_redirect(
        request.headers,
        response,
        prefix=services.settings.accel_redirect_prefix,
        relative_path=services.store.relative_path_for(record.uid),
    )
    if offloaded is None:
        return response
    await response.discard()  # the edge opens the file itself
    return offloaded


async def _charge(
    services: Services,
    record: FileRow,
    response: SourceResponse,
    request: Request,
    budget: int,
) -> None:
    """Reserve a GET's bytes (settled with what it sent) and say how many downloads are left."""
    bytes_served = record.bytes_served
    if request.method == "GET":
        reservation, bytes_served = await reserve(
            services.db,
            record,
            response.body_bytes or 1,  # an empty file's download still counts (budget.unit_bytes)
            budget,
            lease_s=services.settings.download_reservation_lease_s,
            wait_s=services.settings.download_budget_wait_s,
        )
        response.charge_to(reservation)
    response.headers["X-Remaining-Downloads"] = str(remaining_downloads(record, bytes_served))


async def cloud_copy(services: Services, record: FileRecord | FileRow) -> CloudCopy:
    """The file is not on this disk: its cloud copy, as the row says now (410, 503 if none)."""
    async with services.db.session() as session:
        current = await repository.get(session, record.uid, fresh=True)
    if current is None or current.gone_reason is not None:
        raise Gone(f"the file is gone: {current.gone_reason if current else 'deleted'}")
    if current.cloud_status != CloudStatus.UPLOADED.value or not current.cloud_path:
        raise ServiceUnavailable("the file's bytes are not on this node and not yet in the cloud")
    return CloudCopy(key=current.cloud_path, size=current.size, mtime=current.created_at)


@router.delete(
    "/files/{uid}",
    status_code=204,
    summary="Delete a file (X-Delete-Token)",
    responses=problem_responses(401, 403, 404, 410, 422, 431, 503),
)
async def delete_file(
    request: Request,
    uid: str,
    x_delete_token: Annotated[str | None, Header(description="Token from the upload")] = None,
) -> Response:
    services = services_of(request)
    record = await live_record(request, uid)
    if x_delete_token is not None:
        if not token_matches(x_delete_token, record.delete_token_hash):
            raise Forbidden("the X-Delete-Token does not match this file")
    elif services.keyring.enabled:
        # With keys on, no token and no Authorization is a missing credential: 401 with the
        # Bearer challenge (docs/design.md, status codes), as a malformed Authorization already was.
        caller = services.keyring.identify(request.headers)
        if caller is None or not caller.admin:
            raise Forbidden("only an admin key deletes without the file's X-Delete-Token")
    else:
        raise Forbidden("deleting a file needs its X-Delete-Token (or an admin API key)")
    async with services.db.session() as session:
        if not await repository.mark_gone(session, uid, GoneReason.DELETED, datetime.now(UTC)):
            raise Gone("the file was deleted")
    # The file is deleted: its row is a tombstone. Its bytes go now, best effort: what fails here
    # (the disk, or the database recording the purge) the cleanup cron finishes, as it does
    # when the cloud store is down.
    try:
        await purge(services.jobs, record)
    except (OSError, DatabaseUnavailable) as exc:
        logger.warning("purge of deleted %s failed, the next cleanup retries: %s", uid, exc)
    return Response(status_code=204)


@router.get(
    "/files/{uid}/link",
    response_model=SignedLink,
    summary="A signed download link",
    responses=problem_responses(401, 403, 404, 410, 422, 431, 503),
)
async def signed_link(
    request: Request,
    uid: str,
    caller: Caller,
    expires_in: Annotated[int, Query(ge=1, description="Seconds the link stays valid")] = 3600,
    inline: Annotated[bool, Query(description="Link for inline display")] = False,
) -> SignedLink:
    services = services_of(request)
    secret = services.settings.signing_secret
    if secret is None:
        raise NotFound("signed links are not configured (MEDIASVC_SIGNING_SECRET)")
    if expires_in > services.settings.max_link_expires_s:
        raise InvalidInput(f"expires_in may be at most {services.settings.max_link_expires_s} s")
    record = await live_record(request, uid)
    check_owner(caller, record)
    expires_at = int(time.time()) + expires_in
    query = signing.signed_query(
        secret.get_secret_value(), uid, expires_at_s=expires_at, inline=inline
    )
    return SignedLink(
        url=f"{base_url_of(request)}/api/v1/files/{uid}?{query}",
        expires_at=datetime.fromtimestamp(expires_at, UTC),
    )


def _representation(record: FileRow, *, inline: bool) -> Representation:
    return Representation(
        etag=f'"{record.sha256}"',
        # created_at, not a file's mtime: every node and the cloud path agree.
        last_modified=record.created_at,
        media_type=record.format,
        headers={
            "Cache-Control": file_cache_control(record),
            "Content-Disposition": content_disposition(
                record.original_name, media_type=record.format, inline=inline
            ),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
            "Repr-Digest": repr_digest_header(record.sha256),
        },
    )


def _encode_cursor(record: FileRecord) -> str:
    raw = f"{record.created_at.isoformat()}|{record.uid}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
        created_at, uid = raw.split("|", 1)
        parsed = datetime.fromisoformat(created_at)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("the cursor is not one this service made") from exc
    if parsed.tzinfo is None or not is_valid_uid(uid):
        raise InvalidInput("the cursor is not one this service made")
    return parsed, uid
