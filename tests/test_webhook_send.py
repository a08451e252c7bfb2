"""One webhook request (events/send.py): a redirect is a failed try and is not followed; an
endpoint that never answers is a failed try at the timeout; the signature verifies."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from mediasvc.config import SETTINGS_ERRORS, Settings, describe_error
from mediasvc.events import send
from mediasvc.events.endpoints import WebhookEndpoint
from tests.receiver import new_secret


class Redirecting(ThreadingHTTPServer):
    """Answers every POST with a 307 to ``/elsewhere`` and counts what reaches it."""

    def __init__(self) -> None:
        self.posts: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                server.posts.append(self.path)
                self.send_response(307)
                self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.daemon_threads = True


@pytest.fixture
def redirecting() -> Iterator[Redirecting]:
    server = Redirecting()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def endpoint(url: str) -> WebhookEndpoint:
    return WebhookEndpoint(url=url, secret=new_secret())  # type: ignore[arg-type]


async def test_a_redirect_is_a_failed_try_and_is_not_followed(redirecting: Redirecting) -> None:
    target = endpoint(f"http://127.0.0.1:{redirecting.server_address[1]}/hooks")
    async with send.client(5.0) as http:
        result = await send.send(http, target, "msg_1", '{"a":1}', timeout_s=5.0)
    assert not result.delivered
    assert result.status_code == 307
    assert result.error == "HTTP 307 (a redirect: not followed)"
    assert redirecting.posts == ["/hooks"]


async def test_an_endpoint_that_never_answers_is_a_failed_try() -> None:
    with socket.socket() as silent:  # accepts (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        target = endpoint(f"http://127.0.0.1:{silent.getsockname()[1]}/hooks")
        async with send.client(0.3) as http:
            result = await send.send(http, target, "msg_1", "{}", timeout_s=0.3)
    assert not result.delivered
    assert result.status_code is None
    assert result.error is not None and "Timeout" in result.error


def test_the_signature_verifies_with_the_library() -> None:
    target = endpoint("http://127.0.0.1:9/hooks")
    headers = send.signed_headers(target, "msg_abc", '{"type":"file.created"}', datetime.now(UTC))
    verified = Webhook(target.secret.get_secret_value()).verify('{"type":"file.created"}', headers)
    assert verified == {"type": "file.created"}
    assert headers["webhook-id"] == "msg_abc"


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"url": "ftp://x/y", "secret": new_secret()}, "http or https"),
        ({"url": "http://x/y", "secret": "s3cr3t-not-whsec"}, "whsec_"),
        ({"url": "http://x/y", "secret": "whsec_!!not-base64!!"}, "base64"),
        ({"url": "http://x/y", "secret": "whsec_c2hvcnQ="}, "at least 24 bytes"),
        ({"url": "http://x/y", "secret": new_secret(), "events": ["file.nope"]}, "EVENTS"),
    ],
)
def test_a_bad_endpoint_stops_the_start_without_printing_its_secret(
    monkeypatch: pytest.MonkeyPatch, entry: dict[str, Any], says: str
) -> None:
    monkeypatch.setenv("MEDIASVC_WEBHOOKS", json.dumps([entry]))
    with pytest.raises(SETTINGS_ERRORS) as refused:
        Settings(_env_file=None)  # type: ignore[call-arg]
    message = describe_error(refused.value)
    assert says in message
    assert entry["secret"] not in message
