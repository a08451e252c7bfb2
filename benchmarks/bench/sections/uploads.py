"""Section uploads: curl -T and --data-binary into mediasvc and its peers and baselines."""

from __future__ import annotations

import fcntl
import hashlib
import json
import mmap
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.base import MB, BenchError, MiB, log
from bench.context import Run
from bench.curl import curl
from bench.mediasvc_ops import mediasvc_delete
from bench.procfs import RSS_LABEL, RSS_UNIT, RssProbe
from bench.servers import rss_pid
from bench.stats import round_order
from bench.testfiles import MP_BOUNDARY


@dataclass
class Upload:
    key: str
    label: str
    server: str | None  # whose RSS to watch
    path: str  # url path
    args: Callable[[Path], list[str]]
    source: str = "data"  # which test file
    after: str = ""  # "mediasvc" | "naive": what to clean up from the response


def copy_fsync(src: Path, dst: Path) -> float:
    buf = bytearray(MiB)
    view = memoryview(buf)
    t0 = time.perf_counter()
    with src.open("rb", buffering=0) as fin, dst.open("wb", buffering=0) as fout:
        while n := fin.readinto(buf):
            fout.write(view[:n])
        os.fsync(fout.fileno())
    elapsed = time.perf_counter() - t0
    dst.unlink()
    return elapsed


def copy_direct_fsync(src: Path, dst: Path) -> float:
    """The same with O_DIRECT (what mediasvc writes with): page-aligned buffer, no page cache."""
    buf = mmap.mmap(-1, MiB)
    view = memoryview(buf)
    t0 = time.perf_counter()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    try:
        with src.open("rb", buffering=0) as fin:
            while n := fin.readinto(buf):
                if n % 4096:  # the unaligned tail goes through the page cache
                    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                os.write(fd, view[:n])
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    view.release()
    dst.unlink()
    return elapsed


def sha256_file(src: Path) -> float:
    buf = bytearray(MiB)
    view = memoryview(buf)
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    with src.open("rb", buffering=0) as fin:
        while n := fin.readinto(buf):
            digest.update(view[:n])
    return time.perf_counter() - t0


def upload_contenders(mode: str, hostile_mib: int) -> list[Upload]:
    """mode "T": curl -T (streamed); "D": curl --data-binary (the whole body in curl's memory)."""
    if mode == "T":

        def raw(p: Path) -> list[str]:
            return ["-X", "POST", "-T", str(p)]

        def form(p: Path) -> list[str]:
            return ["-F", f"file=@{p};filename=data.bin;type=application/octet-stream"]

        return [
            Upload("discard", "curl → discarding socket", None, "/", raw),
            Upload("disk", "disk write + fsync (1 MiB writes)", None, "", raw),
            Upload("direct", "disk write, O_DIRECT, + fsync (1 MiB writes)", None, "", raw),
            Upload("sha256", "sha256, hashlib, 1 thread", None, "", raw),
            Upload("count", "uvicorn pure ASGI, count only", "count", "/", raw),
            Upload("nginx", "nginx body → disk", "nginx", "/upload", raw),
            Upload(
                "naive",
                "FastAPI UploadFile + copy (multipart)",
                "naive",
                "/upload",
                form,
                after="naive",
            ),
            Upload(
                "raw",
                "mediasvc raw POST",
                "mediasvc",
                "/api/v1/files/stream",
                raw,
                after="mediasvc",
            ),
            Upload(
                "graw",
                "mediasvc raw POST, under granian",
                "mediasvc_granian",
                "/api/v1/files/stream",
                raw,
                after="mediasvc",
            ),
            Upload(
                "put",
                "mediasvc PUT",
                "mediasvc",
                "/api/v1/files/stream/data.bin",
                lambda p: ["-T", str(p)],
                after="mediasvc",
            ),
            Upload("mp", "mediasvc multipart", "mediasvc", "/api/v1/files", form, after="mediasvc"),
            Upload(
                "hostile",
                f"mediasvc multipart, hostile data (\\r\\n--), {hostile_mib} MiB",
                "mediasvc",
                "/api/v1/files",
                form,
                source="hostile",
                after="mediasvc",
            ),
        ]

    def binary(p: Path) -> list[str]:
        return ["--data-binary", f"@{p}", "-H", "Content-Type: application/octet-stream"]

    def mp_binary(p: Path) -> list[str]:
        ctype = f"Content-Type: multipart/form-data; boundary={MP_BOUNDARY}"
        return ["--data-binary", f"@{p}", "-H", ctype]

    return [
        Upload("discard", "curl → discarding socket", None, "/", binary, source="small"),
        Upload("sha256", "sha256, hashlib, 1 thread", None, "", binary, source="small"),
        Upload("count", "uvicorn pure ASGI, count only", "count", "/", binary, source="small"),
        Upload("nginx", "nginx body → disk", "nginx", "/upload", binary, source="small"),
        Upload(
            "naive",
            "FastAPI UploadFile + copy (multipart)",
            "naive",
            "/upload",
            mp_binary,
            source="small_mp",
            after="naive",
        ),
        Upload(
            "raw",
            "mediasvc raw POST",
            "mediasvc",
            "/api/v1/files/stream",
            binary,
            source="small",
            after="mediasvc",
        ),
        Upload(
            "mp",
            "mediasvc multipart",
            "mediasvc",
            "/api/v1/files",
            mp_binary,
            source="small_mp",
            after="mediasvc",
        ),
    ]


def run_upload(r: Run, up: Upload, prefix: str, rnd: int, size: int) -> None:
    src = r.files[up.source]
    if up.source == "hostile":
        size = r.cfg.hostile_size
    if up.key in ("disk", "direct"):
        copy = copy_fsync if up.key == "disk" else copy_direct_fsync
        elapsed = copy(src, r.tmp / "disk-write.bin")
        r.samples.put(f"{prefix}.{up.key}.mbps", rnd, size / elapsed / MB)
        return
    if up.key == "sha256":
        elapsed = sha256_file(src)
        r.samples.put(f"{prefix}.{up.key}.mbps", rnd, size / elapsed / MB)
        return
    server = "discard" if up.key == "discard" else up.server
    assert server is not None
    url = r.servers[server].base + up.path
    body = r.tmp / "upload-response.json"
    with RssProbe(rss_pid(r, up.server)) as probe:
        info = curl([*up.args(src), url], body_out=str(body), timeout=1800)
        rss = probe.read()
    r.samples.put(f"{prefix}.{up.key}.mbps", rnd, size / float(info["time_total"]) / MB)
    if rss:
        r.samples.put(f"{prefix}.{up.key}.rss", rnd, rss)
    response = json.loads(body.read_text())
    if up.after == "mediasvc":
        if response.get("size") != size:
            raise BenchError(f"mediasvc stored {response.get('size')} bytes, sent {size}")
        mediasvc_delete(r.servers["mediasvc"].base, response)
    elif up.after == "naive":
        Path(response["path"]).unlink()
        if response["size"] != size:
            raise BenchError(f"naive FastAPI stored {response['size']} bytes, sent {size}")
    elif up.key in ("discard", "count") and response.get("size") not in (size, None):
        raise BenchError(f"{up.key} counted {response.get('size')} bytes, sent {size}")


def section_uploads(r: Run) -> None:
    cfg = r.cfg
    for prefix, mode, size, title in (
        ("upT", "T", cfg.size, f"upload {cfg.size_label}, curl -T"),
        ("upD", "D", cfg.small, "upload 512 MiB, curl --data-binary"),
    ):
        contenders = upload_contenders(mode, cfg.hostile_size // MiB)
        for rnd in range(cfg.rounds):
            for up in round_order(contenders, rnd):
                t0 = time.monotonic()
                run_upload(r, up, prefix, rnd, size)
                mbps = r.v(f"{prefix}.{up.key}.mbps", rnd)
                took = time.monotonic() - t0
                log(f"{title} r{rnd + 1} {up.label}: {mbps:,.0f} MB/s ({took:.1f} s)")
        upload_rows(r, prefix, title, contenders)
    # The big hostile file is no longer needed: give its page cache back.
    r.files["hostile"].unlink()


def upload_rows(r: Run, prefix: str, title: str, contenders: list[Upload]) -> None:
    for up in contenders:
        r.metric(title, up.label, f"{prefix}.{up.key}.mbps", "MB/s")
    for up in contenders:
        r.metric(title, f"{up.label}: {RSS_LABEL}", f"{prefix}.{up.key}.rss", RSS_UNIT)

    def v(name: str, rnd: int) -> float:
        return float(r.v(f"{prefix}.{name}.mbps", rnd))

    def ratio(name: str, over: str) -> Callable[[int], float]:
        return lambda rnd: v(name, rnd) / v(over, rnd)

    r.derived(
        title,
        "raw / min(count only, sha256)",
        lambda rnd: v("raw", rnd) / min(v("count", rnd), v("sha256", rnd)),
        target="≥ 0.85",
        check=lambda x: x >= 0.85,
    )
    r.derived(
        title,
        "raw / nginx body → disk",
        ratio("raw", "nginx"),
        target="≥ 0.75",
        check=lambda x: x >= 0.75,
    )
    r.derived(
        title, "raw / naive FastAPI", ratio("raw", "naive"), target="≥ 3", check=lambda x: x >= 3
    )
    r.derived(
        title, "multipart / raw", ratio("mp", "raw"), target="≥ 0.85", check=lambda x: x >= 0.85
    )
    r.derived(
        title,
        "hostile multipart / raw",
        ratio("hostile", "raw"),
        target="≥ 0.25",
        check=lambda x: x >= 0.25,
    )
    r.derived(title, "PUT / raw", ratio("put", "raw"))
    if any(up.key == "graw" for up in contenders):
        r.derived(title, "granian raw / uvicorn raw (serve --server)", ratio("graw", "raw"))
    r.derived(title, "count only / nginx (uvicorn's ceiling vs nginx)", ratio("count", "nginx"))
    r.derived(title, "raw / curl → discarding socket", ratio("raw", "discard"))
    if any(up.key == "direct" for up in contenders):
        r.derived(title, "raw / disk write, O_DIRECT, + fsync", ratio("raw", "direct"))
    if prefix == "upT":
        keys = [k for k in ("raw", "put", "mp", "hostile") if r.samples.get(f"{prefix}.{k}.rss")]
        r.derived(
            title,
            "mediasvc RSS growth, one upload (worst of raw/PUT/multipart/hostile)",
            lambda rnd: max(r.v(f"{prefix}.{k}.rss", rnd)[1] for k in keys),
            "MB",
            digits=0,
            target="< 64 MB (worst round)",
            check=lambda x: x < 64,
            worst="max",
        )
