"""One webhook request: the event's body, signed as Standard Webhooks says, POSTed once.

Headers ``webhook-id`` (the event's msg id, the same on every retry so receivers can drop
repeats), ``webhook-timestamp`` (this try, in Unix seconds) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``), made by the ``standardwebhooks`` library.
A 2xx is a delivery; anything else, a redirect included (never followed: the endpoint is what
was configured), a timeout or a connection error is a failed try.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from mediasvc.events.endpoints import WebhookEndpoint

#: What a failed try records of the endpoint's answer.
MAX_ERROR_CHARS = 500
USER_AGENT = "mediasvc-webhooks"


@dataclass(frozen=True, slots=True)
class TryResult:
    delivered: bool
    status_code: int | None
    error: str | None
    duration_ms: int


def signed_headers(
    endpoint: WebhookEndpoint, msg_id: str, body: str, at: datetime
) -> dict[str, str]:
    signature = Webhook(endpoint.secret.get_secret_value()).sign(msg_id, at, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


async def send(
    client: httpx.AsyncClient,
    endpoint: WebhookEndpoint,
    msg_id: str,
    body: str,
    *,
    timeout_s: float,
) -> TryResult:
    """POST ``body`` to ``endpoint`` once, within ``timeout_s`` from connect to the status line.
    The answer's body is never read (an endpoint cannot make us hold a large one)."""
    headers = signed_headers(endpoint, msg_id, body, datetime.now(UTC))
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            request = client.build_request(
                "POST", endpoint.url, content=body.encode("utf-8"), headers=headers
            )
            response = await client.send(request, stream=True)
            await response.aclose()
    except (httpx.HTTPError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        return TryResult(False, None, error, _ms_since(started))
    if response.is_success:
        return TryResult(True, response.status_code, None, _ms_since(started))
    error = f"HTTP {response.status_code}"
    if response.is_redirect:
        error += " (a redirect: not followed)"
    return TryResult(False, response.status_code, error, _ms_since(started))


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


@functools.cache
def _tls() -> ssl.SSLContext:
    # Made once: loading the CA bundle costs milliseconds of CPU, too much for every job.
    return ssl.create_default_context()


def client(timeout_s: float) -> httpx.AsyncClient:
    """The client deliveries go through: no redirects, one timeout for each phase."""
    return httpx.AsyncClient(
        follow_redirects=False, timeout=httpx.Timeout(timeout_s), trust_env=False, verify=_tls()
    )
