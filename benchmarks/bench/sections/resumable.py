"""Section resumable: tus uploads against the plain raw upload, the cost of a resume, memory.

Every contender sends with the same client (http.client, the body by sendfile(2) from the page
cache), so the ratios compare the server's work, not two clients:

- plain raw POST /api/v1/files/stream of SIZE (the baseline);
- tus: POST (creation), then the whole file in one PATCH;
- tus: the same in 64 MiB PATCHes (each one request: headers, offset check, checkpoint);
- a resume, HEAD + a PATCH of one byte appended (a new request reopening the upload), at
  100 MiB and at SIZE into an unfinished upload: both should cost the same (nothing reread);
- the server's peak RSS growth over one chunked tus upload.

Interleaved rounds (the contenders' order reversed every other round); ratios per round, then
their median.
"""

from __future__ import annotations

import base64
import http.client
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.base import MB, BenchError, MiB, log
from bench.context import Run
from bench.mediasvc_ops import mediasvc_delete
from bench.procfs import RSS_LABEL, RSS_UNIT, RssProbe
from bench.stats import round_order
from mediasvc.client import DELETE_TOKEN_HEADER

TITLE = "resumable uploads (tus)"
TUS = {"Tus-Resumable": "1.0.0"}
PATCH_BYTES = 64 * MiB
RESUME_PREFIXES = (("100M", 100 * MiB), ("big", None))  # None: the run's SIZE
RESUME_REPEATS = 5


class Sender:
    """One keep-alive connection to the server; bodies go by sendfile(2) from a file."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)

    def close(self) -> None:
        self.conn.close()

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: tuple[Path, int, int] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body); ``body`` is (file, offset, count)."""
        self.conn.putrequest(method, path, skip_accept_encoding=True)
        length = body[2] if body else 0
        for name, value in {**headers, "Content-Length": str(length)}.items():
            self.conn.putheader(name, value)
        self.conn.endheaders()
        if body:
            path_, offset, count = body
            with path_.open("rb") as source:
                assert self.conn.sock is not None
                sent = self.conn.sock.sendfile(source, offset, count)
            if sent != count:
                raise BenchError(f"sendfile sent {sent} of {count} bytes")
        response = self.conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def expect(status: int, wanted: int, what: str, data: bytes) -> None:
    if status != wanted:
        raise BenchError(f"{what}: {status} {data[:300]!r}")


def create(sender: Sender, length: int, name: str) -> str:
    status, headers, data = sender.request(
        "POST",
        "/api/v1/uploads",
        {**TUS, "Upload-Length": str(length), "Upload-Metadata": "filename " + b64(name)},
    )
    expect(status, 201, "tus creation", data)
    return urlsplit(headers["location"]).path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def patch(
    sender: Sender, path: str, source: Path, offset: int, count: int, *, at: int | None = None
) -> dict[str, str]:
    """PATCH ``count`` bytes at ``offset``, taken from the source at ``at`` (default: offset)."""
    headers = {
        **TUS,
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": str(offset),
    }
    body = (source, offset if at is None else at, count)
    status, got, data = sender.request("PATCH", path, headers, body)
    expect(status, 204, f"PATCH at {offset}", data)
    return got


def tus_upload(base: str, source: Path, size: int, patch_bytes: int) -> dict[str, str]:
    """Create and send; the completing response's headers."""
    sender = Sender(base)
    try:
        path = create(sender, size, "tus.bin")
        offset, last = 0, {}
        while offset < size:
            count = min(patch_bytes, size - offset)
            last = patch(sender, path, source, offset, count)
            offset += count
        return last
    finally:
        sender.close()


def raw_upload(base: str, source: Path, size: int) -> dict[str, Any]:
    sender = Sender(base)
    try:
        status, _, data = sender.request(
            "POST", "/api/v1/files/stream", {"X-Filename": "raw.bin"}, (source, 0, size)
        )
        expect(status, 201, "raw upload", data)
        meta: dict[str, Any] = json.loads(data)
        return meta
    finally:
        sender.close()


def delete_completed(base: str, headers: dict[str, str]) -> None:
    uid = headers["content-location"].rstrip("/").rsplit("/", 1)[-1]
    mediasvc_delete(base, {"uid": uid, "delete_token": headers[DELETE_TOKEN_HEADER.lower()]})


def resume_cost_ms(base: str, source: Path, prefix: int) -> float:
    """Median ms of HEAD + a one-byte PATCH on a new connection, ``prefix`` bytes in."""
    sender = Sender(base)
    path = create(sender, prefix + RESUME_REPEATS + 1, "resume.bin")
    try:
        patch(sender, path, source, 0, prefix)
        costs = []
        for i in range(RESUME_REPEATS):
            sender.close()
            sender = Sender(base)  # a new connection, as a client coming back
            t0 = time.perf_counter()
            status, headers, data = sender.request("HEAD", path, TUS)
            if status not in (200, 204):
                raise BenchError(f"HEAD: {status} {data[:300]!r}")
            if int(headers["upload-offset"]) != prefix + i:
                raise BenchError(f"HEAD says {headers['upload-offset']}, sent {prefix + i}")
            patch(sender, path, source, prefix + i, 1, at=i)  # any byte will do
            costs.append((time.perf_counter() - t0) * 1000)
        return statistics.median(costs)
    finally:
        sender.close()
        cleanup = Sender(base)
        cleanup.request("DELETE", path, TUS)
        cleanup.close()


def section_resumable(r: Run) -> None:
    cfg = r.cfg
    base = r.servers["mediasvc"].base
    source, size = r.files["data"], cfg.size
    pid = r.servers["mediasvc"].pid

    def run_raw() -> None:
        mediasvc_delete(base, raw_upload(base, source, size))

    def run_tus(patch_bytes: int) -> Callable[[], None]:
        return lambda: delete_completed(base, tus_upload(base, source, size, patch_bytes))

    contenders: list[tuple[str, str, Callable[[], None]]] = [
        ("raw", "mediasvc raw POST (same client)", run_raw),
        ("one", "tus, one PATCH", run_tus(size)),
        ("chunked", "tus, 64 MiB PATCHes", run_tus(PATCH_BYTES)),
    ]
    for rnd in range(cfg.rounds):
        for key, label, run in round_order(contenders, rnd):
            with RssProbe(pid) as probe:
                t0 = time.perf_counter()
                run()
                elapsed = time.perf_counter() - t0
                rss = probe.read()
            r.samples.put(f"tus.{key}.mbps", rnd, size / elapsed / MB)
            if rss:
                r.samples.put(f"tus.{key}.rss", rnd, rss)
            log(f"{TITLE} r{rnd + 1} {label}: {size / elapsed / MB:,.0f} MB/s")
        for key, prefix in RESUME_PREFIXES:
            ms = resume_cost_ms(base, source, prefix or size)
            r.samples.put(f"tus.resume.{key}.ms", rnd, ms)
            log(f"{TITLE} r{rnd + 1} resume at {(prefix or size) // MiB} MiB: {ms:.1f} ms")

    for key, label, _ in contenders:
        r.metric(TITLE, label, f"tus.{key}.mbps", "MB/s")
    for key, label, _ in contenders:
        r.metric(TITLE, f"{label}: {RSS_LABEL}", f"tus.{key}.rss", RSS_UNIT)

    def v(key: str, rnd: int) -> float:
        return float(r.v(f"tus.{key}.mbps", rnd))

    r.derived(
        TITLE,
        "tus one PATCH / raw",
        lambda rnd: v("one", rnd) / v("raw", rnd),
        target="≥ 0.9",
        check=lambda x: x >= 0.9,
    )
    r.derived(
        TITLE,
        "tus 64 MiB PATCHes / raw",
        lambda rnd: v("chunked", rnd) / v("raw", rnd),
        target="≥ 0.8",
        check=lambda x: x >= 0.8,
    )
    r.metric(TITLE, "resume (HEAD + 1-byte PATCH) at 100 MiB", "tus.resume.100M.ms", "ms", digits=1)
    r.metric(
        TITLE, f"resume (HEAD + 1-byte PATCH) at {cfg.size_label}", "tus.resume.big.ms", "ms",
        digits=1,
    )  # fmt: skip
    r.derived(
        TITLE,
        f"resume at {cfg.size_label} / resume at 100 MiB (no prefix reread)",
        lambda rnd: r.v("tus.resume.big.ms", rnd) / r.v("tus.resume.100M.ms", rnd),
        target="≤ 2",
        check=lambda x: x <= 2,
    )
    r.derived(
        TITLE,
        "mediasvc RSS growth, one tus upload (worst of one PATCH / 64 MiB PATCHes)",
        lambda rnd: max(r.v(f"tus.{k}.rss", rnd)[1] for k in ("one", "chunked")),
        "MB",
        digits=0,
        target="< 64 MB (worst round)",
        check=lambda x: x < 64,
        worst="max",
    )
