"""A webhook receiver for the tests: a real HTTP server on loopback that verifies every request
with the ``standardwebhooks`` library, as a receiving service would, and records what came.

``always_fail`` answers 503 to every request.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.conftest import free_port
from tests.helpers import POLL_TIMEOUT_S


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


@dataclass(frozen=True, slots=True)
class Received:
    msg_id: str
    type: str
    uid: str
    body: dict[str, Any]
    at: float  # time.time() when it came (for the latency benchmark only)


class Receiver:
    def __init__(self, port: int | None = None, *, secret: str | None = None) -> None:
        """Nothing listens on ``port`` (a free one if None) until the receiver is entered."""
        self.port = port or free_port()
        self.secret = secret or new_secret()
        self.received: list[Received] = []  # verified deliveries, in arrival order
        self.requests = 0  # every request, answered or not
        self.bad_signatures = 0
        self.always_fail = False
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def endpoint(self, **extra: Any) -> dict[str, Any]:
        return {"url": self.url, "secret": self.secret, **extra}

    def __enter__(self) -> Receiver:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def types_for(self, uid: str) -> list[str]:
        with self._lock:
            return [r.type for r in self.received if r.uid == uid]

    def wait_for_types(self, uid: str, expected: list[str]) -> list[Received]:
        """Block (bounded) until ``uid`` has at least ``expected``'s count of deliveries."""
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while len(self.types_for(uid)) < len(expected):
            assert time.monotonic() < deadline, f"got {self.types_for(uid)}, want {expected}"
            time.sleep(0.02)
        with self._lock:
            return [r for r in self.received if r.uid == uid]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver._lock:
                    receiver.requests += 1
                if receiver.always_fail:
                    self._answer(503)
                    return
                try:
                    data = Webhook(receiver.secret).verify(body, dict(self.headers))
                except WebhookVerificationError:
                    with receiver._lock:
                        receiver.bad_signatures += 1
                    self._answer(400)
                    return
                got = Received(
                    self.headers["webhook-id"], data["type"], data["data"]["uid"], data, time.time()
                )
                with receiver._lock:
                    receiver.received.append(got)
                self._answer(204)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
