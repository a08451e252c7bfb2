"""What every route needs: the app's services, the public base URL, the calling key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mediasvc.auth import Principal
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
