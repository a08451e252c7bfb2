"""``POST /api/v1/files/import``: a file from a URL, fetched by a job; ``GET
/api/v1/imports/{uid}``: how that goes.

The answer is 202 at once, with the uid the file will have and its delete token; the URL is
checked by the address guard before anything is queued (a refused URL is 422 and nothing is
kept), and again by the job on every hop (imports/guard.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from mediasvc.api.access import check_owner
from mediasvc.api.common import Caller, services_of
from mediasvc.api.openapi import problem_responses
from mediasvc.api.uploads import MAX_DOWNLOADS_LIMIT, MAX_EXPIRES_IN_S
from mediasvc.db import imports
from mediasvc.db.models import ImportRecord
from mediasvc.errors import NotFound
from mediasvc.events.metadata import check_metadata
from mediasvc.ids import hash_token, is_valid_uid, new_delete_token, new_uid
from mediasvc.imports import job
from mediasvc.imports.guard import AddressGuard
from mediasvc.ingest.names import validate_name
from mediasvc.jobs.kinds import Kind

router = APIRouter(prefix="/api/v1")


class ImportRequest(BaseModel):
    url: str = Field(max_length=2048, description="http or https URL of the file")
    filename: str | None = Field(default=None, max_length=255)
    expected_sha256: str | None = Field(default=None, pattern="^[0-9a-fA-F]{64}$")
    max_downloads: int | None = Field(default=None, ge=1, le=MAX_DOWNLOADS_LIMIT)
    expires_in: int | None = Field(default=None, ge=1, le=MAX_EXPIRES_IN_S)
    metadata: dict[str, Any] | None = Field(
        default=None, description="Your own JSON object, as X-Metadata on an upload"
    )


class ImportState(BaseModel):
    uid: str = Field(description="The file's uid once imported")
    status: Literal["importing", "done", "failed"]
    error: str | None = Field(default=None, description="Why it failed")
    url: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: ImportRecord) -> ImportState:
        return cls.model_validate(record, from_attributes=True)


class ImportStarted(ImportState):
    delete_token: str = Field(description="Shown once: X-Delete-Token of the file once imported")


@router.post(
    "/files/import",
    status_code=202,
    response_model=ImportStarted,
    summary="Import a file from a URL (fetched by a job)",
    responses=problem_responses(401, 403, 422, 431, 503),
)
async def start_import(
    request: Request, caller: Caller, body: Annotated[ImportRequest, Body()]
) -> Response:
    services = services_of(request)
    if body.metadata is not None:
        check_metadata(body.metadata)
    if body.filename is not None:
        validate_name(body.filename)
    config = services.jobs.config
    # Refused here already (422, nothing kept) when it leads nowhere an import may go.
    await AddressGuard(config.import_allowed_networks, job.resolver).admit(body.url)
    uid, token = new_uid(), new_delete_token()
    options = body.model_dump(exclude={"url"}, exclude_none=True)
    async with services.db.session() as session:
        record = await imports.add(
            session,
            uid=uid,
            url=body.url,
            options=options,
            owner=caller.name if caller else None,
            delete_token_hash=hash_token(token),
            now=datetime.now(UTC),
        )
    # Refused only when the queue is down: the reconciler enqueues it later.
    await services.queue.enqueue(Kind.IMPORT, uid)
    started = ImportStarted(**ImportState.of(record).model_dump(), delete_token=token)
    return Response(
        started.model_dump_json(),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"/api/v1/imports/{uid}"},
    )


@router.get(
    "/imports/{uid}",
    response_model=ImportState,
    summary="How an import goes (with keys on: the key that started it, or an admin's)",
    responses=problem_responses(401, 403, 404, 422, 431, 503),
)
async def import_state(request: Request, caller: Caller, uid: str) -> ImportState:
    if not is_valid_uid(uid):
        raise NotFound("no import has this uid")
    async with services_of(request).db.session() as session:
        record = await imports.get(session, uid)
    if record is None:
        raise NotFound("no import has this uid")
    # The URL may carry a secret of its own (a presigned link): only its owner sees it.
    check_owner(caller, record)
    return ImportState.of(record)
