"""What the bench does to the mediasvc under test: upload, delete, push with a worker, evict."""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.base import BenchError
from bench.children import Child
from bench.context import Run
from bench.curl import curl
from bench.services import flush_redis


def mediasvc_delete(base: str, meta: dict[str, Any]) -> None:
    response = httpx.delete(
        f"{base}/api/v1/files/{meta['uid']}",
        headers={"X-Delete-Token": meta["delete_token"]},
        timeout=120,
    )
    if response.status_code != 204:
        raise BenchError(f"DELETE {meta['uid']}: {response.status_code} {response.text[:300]}")


def mediasvc_upload(r: Run, path: Path, *, name: str = "data.bin") -> dict[str, Any]:
    body = r.tmp / f"resp-{secrets.token_hex(4)}.json"
    curl(
        [
            *("-X", "POST", "-T", str(path), "-H", f"X-Filename: {name}"),
            r.servers["mediasvc"].base + "/api/v1/files/stream",
        ],
        body_out=str(body),
    )
    meta = json.loads(body.read_text())
    body.unlink()
    return meta


def start_worker(r: Run, env: dict[str, str], cwd: Path, name: str) -> Child:
    child = r.children.start(name, [sys.executable, "-m", "mediasvc", "worker"], env=env, cwd=cwd)
    time.sleep(2.0)
    if child.proc.poll() is not None:
        raise BenchError(f"{name} exited:\n{child.log_tail()}")
    return child


def wait_pushed(
    base: str, uid: str, timeout: float, on_start: Callable[[], None] | None = None
) -> tuple[float, float]:
    """Poll the metadata every 20 ms; (uploading seen, uploaded seen) as monotonic times."""
    started = None
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, timeout=10) as client:
        while time.monotonic() < deadline:
            meta = client.get(f"/api/v1/files/{uid}/metadata").json()
            now = time.monotonic()
            status = meta["cloud_status"]
            if status == "uploading" and started is None:
                started = now
                if on_start:
                    on_start()
            elif status == "uploaded":
                return (started or now), now
            elif status == "failed":
                raise BenchError(f"push of {uid} failed: {meta}")
            time.sleep(0.02)
    raise BenchError(f"push of {uid} did not finish in {timeout:.0f} s")


def evict(r: Run, uid: str) -> None:
    """What cleanup's eviction does once the cloud copy is confirmed: local = false, then rm."""
    db = Path(r.env_single["MEDIASVC_DATABASE_URL"].split("///", 1)[1])
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE files SET local = 0 WHERE uid = ?", (uid,))
        conn.commit()
    path = Path(r.env_single["MEDIASVC_MEDIA_ROOT"]) / uid[:2] / uid
    path.unlink()


def ensure_download_files(r: Run) -> None:
    if "cloud" not in r.uids:
        flush_redis(r.redis_dbs[0])
        worker = start_worker(r, r.env_single, r.tmp / "single", "push-worker")
        try:
            meta = mediasvc_upload(r, r.files["data"], name="cloud.bin")
            wait_pushed(r.servers["mediasvc"].base, meta["uid"], timeout=1800)
            r.uids["cloud"] = meta["uid"]
        finally:
            r.children.stop(worker)
    if "disk" not in r.uids:
        r.uids["disk"] = mediasvc_upload(r, r.files["data"], name="disk.bin")["uid"]
        flush_redis(r.redis_dbs[0])  # no worker will push it; drop the job
    meta = httpx.get(f"{r.servers['mediasvc'].base}/api/v1/files/{r.uids['cloud']}/metadata").json()
    if meta["local"]:
        evict(r, r.uids["cloud"])
        meta = httpx.get(
            f"{r.servers['mediasvc'].base}/api/v1/files/{r.uids['cloud']}/metadata"
        ).json()
        if meta["local"] or meta["cloud_status"] != "uploaded":
            raise BenchError(f"eviction did not take: {meta}")
