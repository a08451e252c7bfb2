"""Webhook endpoints: ``MEDIASVC_WEBHOOKS``, a JSON list of ``{"url", "secret", "events"}``.

``secret`` is the Standard Webhooks form ``whsec_<base64>`` (one per endpoint: the receiver
verifies with it); ``events`` lists the types the endpoint wants, none or empty for all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, model_validator

from mediasvc.events.types import EventType

SECRET_PREFIX = "whsec_"
#: The shortest secret accepted once decoded, in bytes (HMAC-SHA256's own size is 32).
MIN_SECRET_BYTES = 24


class WebhookEndpoint(BaseModel):
    url: str = Field(description="Where events are POSTed (http or https)")
    secret: SecretStr = Field(description="whsec_<base64> (Standard Webhooks)")
    events: list[EventType] | None = Field(default=None, description="None or empty: every type")

    @model_validator(mode="after")
    def _check(self) -> WebhookEndpoint:
        # Here, not in field validators: a field's error line would show the secret.
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a webhook url must be an absolute http or https URL")
        secret = self.secret.get_secret_value()
        if not secret.startswith(SECRET_PREFIX):
            raise ValueError(f"a webhook secret must look like {SECRET_PREFIX}<base64>")
        encoded = secret.removeprefix(SECRET_PREFIX)
        try:  # padded or not, as the library takes it
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error:
            raise ValueError("a webhook secret's part after whsec_ must be base64") from None
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"a webhook secret must hold at least {MIN_SECRET_BYTES} bytes")
        return self

    @property
    def id(self) -> str:
        """A delivery's key for this endpoint: the sha256 of its URL."""
        return hashlib.sha256(self.url.encode("utf-8")).hexdigest()

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type in self.events
