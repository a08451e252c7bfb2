"""A realistic mix against a running mediasvc, and its framework ceiling (GET /healthz).

``MixUser``: uploads of 1–50 MB (raw POST), metadata reads, Range reads of 1 MiB at random
offsets, full downloads, with a think time between requests. ``HealthzUser``: GET /healthz
back to back, the same app's trivial endpoint (what uvicorn + FastAPI can answer at most).

`benchmarks/run.py` runs both headless against the full stack (``mediasvc serve --workers 2`` on
PostgreSQL, Redis, a ``mediasvc worker``, s3rver), and reads the CSV stats. By hand:

    BENCH_SEED=seed.json locust -f benchmarks/locustfile.py --headless -u 100 -r 100 -t 60s \\
        -H http://127.0.0.1:8000 MixUser

Environment: ``BENCH_SEED`` a JSON list of ``{"uid", "size"}`` already uploaded (read targets
before the first upload lands); ``BENCH_UPLOADS_OUT`` where to write ``{"uid", "delete_token"}``
of the files this run uploaded, so the caller can delete them; ``BENCH_WAIT_MIN_S`` /
``BENCH_WAIT_MAX_S`` the think time of MixUser (default 0.5–1.5 s).
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from locust import FastHttpUser, between, constant, events, task

MB = 1_000_000
RANGE_BYTES = 1024 * 1024
MIN_UPLOAD = 1 * MB
MAX_UPLOAD = 50 * MB

_seed_path = os.environ.get("BENCH_SEED")
FILES: list[dict[str, Any]] = []
if _seed_path:
    with open(_seed_path) as fh:
        FILES.extend(json.load(fh))
UPLOADED: list[dict[str, str]] = []
# One random payload per process; uploads send a prefix of it.
PAYLOAD = random.randbytes(MAX_UPLOAD)


@events.quitting.add_listener
def _write_uploads(**_kwargs: Any) -> None:
    out = os.environ.get("BENCH_UPLOADS_OUT")
    if out:
        with open(out, "w") as fh:
            json.dump(UPLOADED, fh)


class MixUser(FastHttpUser):
    wait_time = between(
        float(os.environ.get("BENCH_WAIT_MIN_S", "0.5")),
        float(os.environ.get("BENCH_WAIT_MAX_S", "1.5")),
    )

    def _pick(self) -> dict[str, Any] | None:
        return random.choice(FILES) if FILES else None

    @task(1)
    def upload(self) -> None:
        size = random.randint(MIN_UPLOAD, MAX_UPLOAD)
        with self.client.post(
            "/api/v1/files/stream",
            data=PAYLOAD[:size],
            headers={"Content-Type": "application/octet-stream", "X-Filename": "locust.bin"},
            name="upload 1–50 MB",
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(f"status {response.status_code}")
                return
            meta = response.json()
            if meta.get("size") != size:
                response.failure(f"stored {meta.get('size')} bytes of {size}")
                return
            FILES.append({"uid": meta["uid"], "size": size})
            UPLOADED.append({"uid": meta["uid"], "delete_token": meta["delete_token"]})

    @task(10)
    def metadata(self) -> None:
        if (file := self._pick()) is None:
            return
        self.client.get(f"/api/v1/files/{file['uid']}/metadata", name="metadata")

    @task(5)
    def range_read(self) -> None:
        if (file := self._pick()) is None:
            return
        start = random.randrange(max(1, file["size"] - RANGE_BYTES))
        end = min(file["size"], start + RANGE_BYTES) - 1
        with self.client.get(
            f"/api/v1/files/{file['uid']}",
            headers={"Range": f"bytes={start}-{end}"},
            name="range 1 MiB",
            catch_response=True,
        ) as response:
            if response.status_code != 206 or len(response.content or b"") != end - start + 1:
                response.failure(f"status {response.status_code}")

    @task(2)
    def download(self) -> None:
        if (file := self._pick()) is None:
            return
        with self.client.get(
            f"/api/v1/files/{file['uid']}", name="full download", catch_response=True
        ) as response:
            if response.status_code != 200 or len(response.content or b"") != file["size"]:
                response.failure(f"status {response.status_code}")


class HealthzUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def healthz(self) -> None:
        self.client.get("/healthz", name="healthz")
