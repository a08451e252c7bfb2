"""Section processing: a transcode by `mediasvc worker` against the same ffmpeg by hand, the
API's metadata latency during a transcode against idle, a storyboard of an hour of 1080p against
a full decode.

The clip is HEVC in Matroska made here (PROCESSING_CLIP_S seconds of CLIP_SIZE: long enough
that the rendition takes seconds, short enough for a few minutes on two shared cores). Each
round:
- the clip uploaded to mediasvc with no worker running: GET /metadata of it, one request every
  POLL_EVERY_S for IDLE_REQUESTS, is the idle latency;
- the rendition's ffmpeg command (media/rendition.py: the same argv behind the same wrappers,
  media/tools.bounded_command) run by hand while the same loop polls, timed; again after the
  job; the mean of the two is the time by hand;
- then a worker starts and the same loop runs until the transcode is done: the samples taken
  while the worker's rendition ffmpeg was alive are the latency under a transcode, and that
  ffmpeg's life (from its start time in /proc, through the wrappers the worker execs, to the
  last poll that saw it) is the rendition's time through the job (its throughput: media
  seconds per wall second);
- the storyboard command (media/storyboard.py: keyframes only) on an hour of 1080p, against a
  full decode. The hour is made cheaply: HOUR_SEGMENT_S of 1080p testsrc2 (libx264 ultrafast,
  HOUR_BIT_RATE, a keyframe every HOUR_GOP frames, x264's default), then `-stream_loop` with
  `-c copy` to an hour. The full decode of the hour is estimated, and reported as such: the
  segment's full decode, timed, times the number of copies (the hour is those very packets
  over again, so decoding it costs that many times the segment).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench.base import BenchError, log
from bench.context import Run
from bench.latency import percentile
from bench.mediasvc_ops import mediasvc_delete, mediasvc_upload, start_worker
from bench.procfs import descendants_of
from bench.services import flush_redis
from mediasvc.media.config import MediaConfig
from mediasvc.media.probe import analyse
from mediasvc.media.rendition import plan, rendition_command
from mediasvc.media.storyboard import layout, storyboard_command
from mediasvc.media.tools import bounded_command

PROCESSING_CLIP_S = 60
IDLE_REQUESTS = 500
POLL_EVERY_S = 0.02  # 50 requests a second: a busy player page, not a load test
CLIP_SIZE = "1280x720"  # x264 veryfast on two cores: ~15 s by hand, ~700 samples under it
TITLE = f"processing: HEVC/MKV {CLIP_SIZE}, {PROCESSING_CLIP_S} s"
HOUR_SEGMENT_S = 60
HOUR_COPIES = 60
HOUR_GOP = 250  # frames: 10 s at 25 fps
HOUR_BIT_RATE = "5M"
HOUR_TITLE = "processing: storyboard of 1 h of 1080p H.264"


def section_processing(r: Run) -> None:
    clip = r.tmp / "clip.mkv"
    _run([
        "ffmpeg", "-v", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={CLIP_SIZE}:rate=25:duration={PROCESSING_CLIP_S}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={PROCESSING_CLIP_S}",
        "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
        "-c:a", "aac", str(clip),
    ])  # fmt: skip
    config = MediaConfig()  # the defaults the worker runs with
    facts = asyncio.run(analyse(config, clip, expects_media=True))
    assert facts is not None and facts.duration_s and facts.width and facts.height
    # Behind the very wrappers the worker puts around it (memory, niceness, parent death).
    by_hand = bounded_command(
        rendition_command(config, clip, r.tmp / "by-hand.mp4", plan(facts)),
        max_memory_bytes=config.tool_max_memory_bytes,
        niceness=config.transcode_nice,
        tied_to_parent=True,
    )
    log(f"{TITLE}: by hand: {shlex.join(by_hand)}")
    segment, hour = _hour_of_1080p(r)
    hour_facts = asyncio.run(analyse(config, hour, expects_media=True))
    assert hour_facts is not None and hour_facts.duration_s
    tiles = layout(config, hour_facts.duration_s, 1920, 1080)
    storyboard = storyboard_command(config, hour, r.tmp / "sheet.jpg", 0, tiles)
    log(f"{HOUR_TITLE}: {hour.stat().st_size / 1e9:.2f} GB, {hour_facts.duration_s:.0f} s; "
        f"command: {shlex.join(storyboard)}")  # fmt: skip
    segment_decode = [
        "ffmpeg", "-v", "error", "-nostdin", "-threads", str(config.transcode_threads),
        "-i", str(segment), "-map", "0:v:0", "-f", "null", "-",
    ]  # fmt: skip
    for rnd in range(r.cfg.rounds):
        hand_s, job_s, idle, busy = _through_the_job(r, clip, by_hand)
        r.samples.put("processing.hand", rnd, facts.duration_s / hand_s)
        r.samples.put("processing.job", rnd, facts.duration_s / job_s)
        r.samples.put("processing.p99", rnd, (percentile(idle, 99), percentile(busy, 99)))
        storyboard_s = _timed(storyboard)
        full_s = _timed(segment_decode) * HOUR_COPIES
        r.samples.put("processing.storyboard", rnd, (storyboard_s, full_s))
        log(
            f"{TITLE} r{rnd + 1}: by hand {hand_s:.1f} s, job {job_s:.1f} s; metadata p99 idle "
            f"{percentile(idle, 99):.1f} ms, busy {percentile(busy, 99):.1f} ms ({len(busy)}); "
            f"storyboard of the hour {storyboard_s:.1f} s, full decode (estimated) {full_s:.0f} s"
        )
    hour.unlink()
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
    r.metric(
        HOUR_TITLE,
        "storyboard (keyframes only) / full decode (estimated: the 60 s segment's × 60)",
        "processing.storyboard",
        "s",
        digits=1,
    )
    r.derived(
        HOUR_TITLE,
        "storyboard time / full decode time",
        lambda rnd: r.v("processing.storyboard", rnd)[0] / r.v("processing.storyboard", rnd)[1],
        digits=3,
    )


def _hour_of_1080p(r: Run) -> tuple[Path, Path]:
    """(the segment, the hour): HOUR_SEGMENT_S encoded once, copied HOUR_COPIES times."""
    segment, hour = r.tmp / "segment-1080p.mp4", r.tmp / "hour-1080p.mp4"
    _run([
        "ffmpeg", "-v", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=25:duration={HOUR_SEGMENT_S}",
        "-c:v", "libx264", "-preset", "ultrafast", "-b:v", HOUR_BIT_RATE, "-g", str(HOUR_GOP),
        "-pix_fmt", "yuv420p", str(segment),
    ])  # fmt: skip
    _run([
        "ffmpeg", "-v", "error", "-nostdin", "-y", "-stream_loop", str(HOUR_COPIES - 1),
        "-i", str(segment), "-c", "copy", str(hour),
    ])  # fmt: skip
    return segment, hour


def _through_the_job(
    r: Run, clip: Path, by_hand: list[str]
) -> tuple[float, float, list[float], list[float]]:
    """(the rendition by hand, through the job (wall time s), metadata latencies (ms) idle, and
    during the job's rendition).

    The API is polled the same way while the command runs by hand (once before the job, once
    after: the mean), so both runs share the machine with the same service load.
    """
    flush_redis(r.redis_dbs[0])
    base = r.servers["mediasvc"].base
    meta = mediasvc_upload(r, clip, name="clip.mkv")
    url = f"/api/v1/files/{meta['uid']}/metadata"
    idle: list[float] = []
    busy: list[float] = []  # latencies (ms) while the rendition's ffmpeg runs
    hand: list[float] = []
    worker = None
    rendition = _Rendition()
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            # Idle: the probe is queued, no worker takes it.
            for _ in range(IDLE_REQUESTS):
                idle.append(_get_ms(client, url)[0])
            hand.append(_by_hand(client, url, by_hand))
            worker = start_worker(r, r.env_single, r.tmp / "single", "processing-worker")
            deadline = time.monotonic() + 600
            while True:
                took_ms, body = _get_ms(client, url)
                if rendition.running(worker.pid):
                    busy.append(took_ms)
                processing = body.get("processing") or {}
                if processing.get("state") in ("done", "failed", "skipped"):
                    break
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"no transcode within 600 s: probe {body.get('probe_status')}, "
                        f"processing {processing}; worker log: {worker.log_tail(1000)}"
                    )
            r.children.stop(worker)
            worker = None
            hand.append(_by_hand(client, url, by_hand))
    finally:
        if worker is not None:
            r.children.stop(worker)
        mediasvc_delete(base, meta)
    if rendition.started_s is None or len(busy) < 2:
        raise RuntimeError(f"the rendition was seen running {len(busy)} times: too short")
    job_s = rendition.last_seen_s - rendition.started_s
    return sum(hand) / len(hand), job_s, idle, busy


def _by_hand(client: httpx.Client, url: str, argv: list[str]) -> float:
    """Run ``argv`` while polling ``url`` as during the job; its wall time."""
    start = time.perf_counter()
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while process.poll() is None:
            _get_ms(client, url)
        took = time.perf_counter() - start
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited with {process.returncode}")
    return took


class _Rendition:
    """The worker's rendition ffmpeg (libx264 among its arguments), as /proc shows it: its start
    (the fork of the first wrapper, on the boot clock) and the last time it was seen alive."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.started_s: float | None = None
        self.last_seen_s = 0.0

    def running(self, worker_pid: int) -> bool:
        if self.pid is None:
            self.pid = next((pid for pid in descendants_of(worker_pid) if _is_rendition(pid)), None)
            if self.pid is None:
                return False
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
        try:
            with open(f"/proc/{self.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return False
        if fields[0] == "Z":  # exited, not yet reaped
            return False
        if self.started_s is None:
            self.started_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        self.last_seen_s = now
        return True


def _is_rendition(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except FileNotFoundError:
        return False
    return argv[0].endswith(b"ffmpeg") and b"libx264" in argv


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
