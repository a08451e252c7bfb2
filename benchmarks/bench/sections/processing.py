"""Section processing: a transcode by `mediasvc worker` against the same ffmpeg by hand, the
API's metadata latency during a transcode against idle, a storyboard against a full decode.

The clip is HEVC in Matroska made here (PROCESSING_CLIP_S seconds of 640x360: small, so the
section takes a minute on two shared cores). Each round:
- the rendition's ffmpeg command (media/rendition.py, the same argv, at the same niceness, as
  the machine is shared) run by hand, timed;
- the same file uploaded to mediasvc with no worker running: GET /metadata of it, one request
  every POLL_EVERY_S for IDLE_REQUESTS, is the idle latency; then a worker starts and the same
  loop runs
  until the transcode is done: the samples taken while the rendition step was running are the
  latency under a transcode, and the time from the first to the last of them is the
  rendition's time through the job (its throughput: media seconds per wall second);
- the storyboard command (media/storyboard.py: keyframes only) and a full decode of the same
  file (`ffmpeg -threads N -i clip -f null -`), timed.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench.base import log
from bench.context import Run
from bench.latency import percentile
from bench.mediasvc_ops import mediasvc_delete, mediasvc_upload, start_worker
from bench.services import flush_redis
from mediasvc.media.config import MediaConfig
from mediasvc.media.probe import analyse
from mediasvc.media.rendition import plan, rendition_command
from mediasvc.media.storyboard import layout, storyboard_command

PROCESSING_CLIP_S = 20
IDLE_REQUESTS = 300
POLL_EVERY_S = 0.02  # 50 requests a second: a busy player page, not a load test
TITLE = f"processing: HEVC/MKV 640x360, {PROCESSING_CLIP_S} s"


def section_processing(r: Run) -> None:
    clip = r.tmp / "clip.mkv"
    _run([
        "ffmpeg", "-v", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25:duration={PROCESSING_CLIP_S}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={PROCESSING_CLIP_S}",
        "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
        "-c:a", "aac", str(clip),
    ])  # fmt: skip
    config = MediaConfig()  # the defaults the worker runs with
    facts = asyncio.run(analyse(config, clip, expects_media=True))
    assert facts is not None and facts.duration_s and facts.width and facts.height
    by_hand = [
        "nice", "-n", str(config.transcode_nice),
        *rendition_command(config, clip, r.tmp / "by-hand.mp4", plan(facts)),
    ]  # fmt: skip
    tiles = layout(config, facts.duration_s, facts.width, facts.height)
    storyboard = storyboard_command(config, clip, r.tmp / "sheet.jpg", 0, tiles)
    full_decode = [
        "ffmpeg", "-v", "error", "-nostdin", "-threads", str(config.transcode_threads),
        "-i", str(clip), "-map", "0:v:0", "-f", "null", "-",
    ]  # fmt: skip
    for rnd in range(r.cfg.rounds):
        hand_s = _timed(by_hand)
        r.samples.put("processing.hand", rnd, facts.duration_s / hand_s)
        job_s, idle, busy = _through_the_job(r, clip)
        r.samples.put("processing.job", rnd, facts.duration_s / job_s)
        r.samples.put("processing.p99", rnd, (percentile(idle, 99), percentile(busy, 99)))
        r.samples.put("processing.storyboard", rnd, (_timed(storyboard), _timed(full_decode)))
        log(
            f"{TITLE} r{rnd + 1}: by hand {hand_s:.1f} s, job {job_s:.1f} s; metadata p99 idle "
            f"{percentile(idle, 99):.1f} ms, busy {percentile(busy, 99):.1f} ms ({len(busy)})"
        )
    r.metric(TITLE, "rendition by hand (media s per s)", "processing.hand", "×", digits=1)
    r.metric(
        TITLE, "rendition by the transcode job (media s per s)", "processing.job", "×", digits=1
    )
    r.derived(
        TITLE,
        "transcode job / the same ffmpeg by hand",
        lambda rnd: r.v("processing.job", rnd) / r.v("processing.hand", rnd),
        target="≥ 0.95",
        check=lambda x: x >= 0.95,
    )
    r.metric(
        TITLE, "GET /metadata p99: idle / during a transcode", "processing.p99", "ms", digits=1
    )
    r.derived(
        TITLE,
        "metadata p99 during a transcode / idle",
        lambda rnd: r.v("processing.p99", rnd)[1] / r.v("processing.p99", rnd)[0],
        target="≤ 2",
        check=lambda x: x <= 2,
    )
    r.metric(TITLE, "storyboard (keyframes) / full decode", "processing.storyboard", "s", digits=2)
    r.derived(
        TITLE,
        "storyboard time / full decode time",
        lambda rnd: r.v("processing.storyboard", rnd)[0] / r.v("processing.storyboard", rnd)[1],
        digits=3,
    )


def _through_the_job(r: Run, clip: Path) -> tuple[float, list[float], list[float]]:
    """(the rendition step's wall time, metadata latencies idle, during the rendition)."""
    flush_redis(r.redis_dbs[0])
    base = r.servers["mediasvc"].base
    meta = mediasvc_upload(r, clip, name="clip.mkv")
    url = f"/api/v1/files/{meta['uid']}/metadata"
    idle: list[float] = []
    busy: list[tuple[float, float]] = []  # (when, latency ms) while the rendition runs
    worker = None
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            # Idle: the probe is queued, no worker takes it.
            for _ in range(IDLE_REQUESTS):
                idle.append(_get_ms(client, url)[0])
            worker = start_worker(r, r.env_single, r.tmp / "single", "processing-worker")
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                took_ms, body = _get_ms(client, url)
                processing = body.get("processing") or {}
                if processing.get("state") == "running" and processing.get("step") == "rendition":
                    busy.append((time.monotonic(), took_ms))
                if processing.get("state") in ("done", "failed", "skipped"):
                    break
    finally:
        if worker is not None:
            r.children.stop(worker)
        mediasvc_delete(base, meta)
    if len(busy) < 2:
        raise RuntimeError(f"the rendition was seen running {len(busy)} times: too short")
    return busy[-1][0] - busy[0][0], idle, [ms for _, ms in busy]


def _get_ms(client: httpx.Client, url: str) -> tuple[float, dict[str, Any]]:
    """One GET's latency (ms) and body, then a pause to the next POLL_EVERY_S."""
    start = time.perf_counter()
    response = client.get(url)
    took = (time.perf_counter() - start) * 1000
    time.sleep(max(0.0, POLL_EVERY_S - took / 1000))
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return took, body


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    _run(argv)
    return time.perf_counter() - start


def _run(argv: list[str]) -> None:
    # stdout: ffmpeg's -progress lines, which the job reads and we do not.
    subprocess.run(
        argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=600
    )
