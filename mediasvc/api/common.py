"""What every route needs: the app's services, the public base URL, the calling key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.responses import Response

from mediasvc.api.schemas import FileMetadata, UploadedFile
from mediasvc.auth import Principal
from mediasvc.ingest.pipeline import StoredUpload
from mediasvc.services import Services


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def base_url_of(request: Request) -> str:
    configured = services_of(request).settings.public_base_url
    return configured or str(request.base_url).rstrip("/")


def identify_caller(request: Request) -> Principal | None:
    """The API key's owner when keys are configured (401/403 otherwise); None when they are off.

    A dependency, so it runs before an upload handler reads a single byte of the body.
    """
    return services_of(request).keyring.identify(request.headers)


Caller = Annotated[Principal | None, Depends(identify_caller)]


def file_created(request: Request, stored: StoredUpload) -> Response:
    """201 for a new file: its metadata and delete token (every upload protocol ends here)."""
    body = UploadedFile(
        **FileMetadata.from_record(stored.record, base_url=base_url_of(request)).model_dump(),
        delete_token=stored.delete_token,
    )
    return Response(
        body.model_dump_json(),
        status_code=201,
        media_type="application/json",
        headers={"Location": f"/api/v1/files/{stored.record.uid}"},
    )
