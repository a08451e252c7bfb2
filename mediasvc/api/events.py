"""Admin endpoints of the webhook deliveries: list them with their attempts, redeliver one.

An admin API key is needed (``MEDIASVC_API_KEYS`` with ``"admin": true``); with keys off these
routes are 403: nobody could be told apart from an admin.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from mediasvc.api.common import services_of
from mediasvc.api.openapi import problem_responses
from mediasvc.auth import Principal
from mediasvc.db import outbox
from mediasvc.db.models import AttemptRecord, DeliveryRecord, EventRecord
from mediasvc.errors import Forbidden, NotFound
from mediasvc.jobs.kinds import Kind

router = APIRouter(prefix="/api/v1/admin")


def require_admin(request: Request) -> Principal:
    """The caller if its key is an admin's: 401 without a key, 403 otherwise or with keys off."""
    keyring = services_of(request).keyring
    if not keyring.enabled:
        raise Forbidden("admin endpoints need MEDIASVC_API_KEYS with an admin key")
    caller = keyring.identify(request.headers)
    if caller is None or not caller.admin:
        raise Forbidden("this endpoint needs an admin API key")
    return caller


Admin = Annotated[Principal, Depends(require_admin)]


class AttemptInfo(BaseModel):
    at: datetime
    status_code: int | None = Field(description="The endpoint's answer; null: none came")
    error: str | None = Field(description="Why the try failed; null: delivered")
    duration_ms: int


class EventInfo(BaseModel):
    msg_id: str = Field(description="The webhook-id header of every delivery of the event")
    type: str
    subject: str = Field(description="The file (or upload) the event is about")
    created_at: datetime


class DeliveryInfo(BaseModel):
    id: int
    url: str
    status: Literal["pending", "delivered", "dead"]
    tries: int = Field(description="Tries since the delivery was opened or last redelivered")
    next_attempt_at: datetime
    last_error: str | None
    delivered_at: datetime | None
    event: EventInfo
    attempts: list[AttemptInfo] = Field(description="Every try, oldest first")

    @classmethod
    def of(
        cls, delivery: DeliveryRecord, event: EventRecord, attempts: list[AttemptRecord]
    ) -> DeliveryInfo:
        return cls.model_validate(
            {
                **{name: getattr(delivery, name) for name in _DELIVERY_FIELDS},
                "event": EventInfo.model_validate(event, from_attributes=True),
                "attempts": [AttemptInfo.model_validate(a, from_attributes=True) for a in attempts],
            }
        )


_DELIVERY_FIELDS = ("id", "url", "status", "tries", "next_attempt_at", "last_error", "delivered_at")


class DeliveryList(BaseModel):
    items: list[DeliveryInfo]
    next_before: int | None = Field(description="Pass as ?before= for the next (older) page")


@router.get(
    "/deliveries",
    response_model=DeliveryList,
    summary="Webhook deliveries, newest first, with their attempts (admin)",
    responses=problem_responses(401, 403, 422, 431, 503),
)
async def list_deliveries(
    request: Request,
    _admin: Admin,
    status: Annotated[Literal["pending", "delivered", "dead"] | None, Query()] = None,
    file: Annotated[str | None, Query(max_length=64, description="Only this file's")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1)] = None,
) -> DeliveryList:
    async with services_of(request).db.session() as session:
        rows = await outbox.list_deliveries(
            session, status=status, subject=file, limit=limit, before=before
        )
    items = [DeliveryInfo.of(*row) for row in rows]
    return DeliveryList(items=items, next_before=items[-1].id if len(items) == limit else None)


class Redelivery(BaseModel):
    id: int
    msg_id: str
    status: Literal["pending"] = "pending"


@router.post(
    "/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=Redelivery,
    summary="Deliver an event to an endpoint again, tries from zero (admin)",
    responses=problem_responses(401, 403, 404, 422, 431, 503),
)
async def redeliver(request: Request, _admin: Admin, delivery_id: int) -> Redelivery:
    services = services_of(request)
    async with services.db.session() as session:
        msg_id = await outbox.redeliver(session, delivery_id, datetime.now(UTC))
    if msg_id is None:
        raise NotFound("no delivery has this id")
    # If the queue refuses it (a job of the event is queued or down), that job or the
    # reconciler takes the delivery: it is pending in the database.
    await services.queue.enqueue(Kind.DELIVER, msg_id)
    return Redelivery(id=delivery_id, msg_id=msg_id)
