"""The web page plays what processing made, in a real browser (Debian's chromium, Playwright).

An HEVC clip in Matroska (which Chromium here does not play) is uploaded to a real `mediasvc
serve` (jobs in-process); once its transcode is done, its page plays the H.264 rendition and
seeks in it, and the pointer over the seek bar shows the storyboard tile of that moment. The
picture of that is the README's (docs/processing.png; MEDIASVC_TEST_UPDATE_SCREENSHOT=1 saves it).
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, ViewportSize, sync_playwright

from tests.conftest import PROJECT_ROOT, RunningServer, truncate
from tests.mediafiles import ffmpeg

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CHROMIUM = "/usr/bin/chromium"
# As tests/test_browser.py (docs/facts.md, "Browsers in tests").
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--no-first-run",
    "--disable-sync", "--disable-quic", "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip
WAIT_MS = 20_000
PICTURE = PROJECT_ROOT / "docs" / "processing.png"


def hevc_in_matroska(path: Path, size: str, duration_s: int) -> Path:
    """HEVC + AAC in Matroska (which Chromium here does not play), a keyframe a second."""
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={duration_s}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={duration_s}",
        "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error:keyint=25",
        "-c:a", "aac", str(path),
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def hevc_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s, 480x270: the tiles of its storyboard differ."""
    root = tmp_path_factory.mktemp("browser-processing")
    return hevc_in_matroska(root / "holiday (phone).mkv", "480x270", 10)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 s, 320x180: longer than hls.js buffers ahead (30 s)."""
    return hevc_in_matroska(tmp_path_factory.mktemp("browser-hls") / "long.mkv", "320x180", 40)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[tuple[Page, list[str]]]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make test does)")
    errors: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=ViewportSize(width=1200, height=800),
            locale="en-GB",
            timezone_id="UTC",
            color_scheme="light",
        )
        context.set_default_timeout(WAIT_MS)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
            yield page, errors
        finally:
            context.close()


def processed(server: RunningServer, uid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        meta: dict[str, Any] = httpx.get(
            f"{server.base_url}/api/v1/files/{uid}/metadata", timeout=5
        ).json()
        processing = meta["processing"]
        if processing and processing["state"] not in ("pending", "running"):
            return meta
        assert time.monotonic() < deadline, f"not processed in time: {meta}"
        time.sleep(0.2)


@pytest.fixture
def server(start_server: Callable[..., RunningServer], pg_url: str) -> RunningServer:
    """Started before the browser (Playwright's sync API runs its own loop)."""
    asyncio.run(truncate(pg_url))
    return start_server({"MEDIASVC_DATABASE_URL": pg_url})


@pytest.fixture
def hls_server(start_server: Callable[..., RunningServer], pg_url: str) -> RunningServer:
    asyncio.run(truncate(pg_url))
    return start_server({"MEDIASVC_DATABASE_URL": pg_url, "MEDIASVC_HLS_LADDER": "144,180,720"})


def upload(server: RunningServer, path: Path) -> str:
    response = httpx.post(
        f"{server.base_url}/api/v1/files/stream",
        content=path.read_bytes(),
        headers={"X-Filename": "holiday.mkv"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    uid: str = response.json()["uid"]
    return uid


def test_the_hevc_uploads_rendition_plays_seeks_and_previews_on_the_seek_bar(
    server: RunningServer, page: tuple[Page, list[str]], hevc_clip: Path, tmp_path: Path
) -> None:
    uid = upload(server, hevc_clip)
    meta = processed(server, uid)
    assert meta["processing"]["state"] == "done", meta["processing"]
    [rendition] = meta["renditions"]
    browser, errors = page

    browser.goto(f"{server.base_url}/#/files/{uid}")
    video = browser.locator("video#player")
    video.wait_for()
    assert video.get_attribute("src") == f"/api/v1/files/{rendition['uid']}?inline=true"
    browser.locator("#playing-rendition").wait_for()
    browser.wait_for_function(
        "() => { const v = document.querySelector('video#player');"
        " return v.readyState >= 1 && Number.isFinite(v.duration); }",
        timeout=WAIT_MS,
    )
    assert abs(video.evaluate("v => v.duration") - 10) < 0.2
    # Seek by clicking the seek bar at 80 %, then play to the end from there.
    bar = browser.locator("#seek-bar")
    box = bar.bounding_box()
    assert box is not None
    browser.mouse.click(box["x"] + box["width"] * 0.8, box["y"] + box["height"] / 2)
    browser.wait_for_function(
        "() => { const v = document.querySelector('video#player');"
        " return !v.seeking && v.readyState >= 2 && Math.abs(v.currentTime - 8) < 0.3; }",
        timeout=WAIT_MS,
    )
    video.evaluate("v => { v.muted = true; return v.play(); }")
    browser.wait_for_function("() => document.querySelector('video#player').ended")

    # The pointer over the seek bar at 32 %: 3.2 s, in the second tile (one every 2 s, 160x90).
    browser.mouse.move(box["x"] + box["width"] * 0.32, box["y"] + box["height"] / 2)
    tile = browser.locator("#storyboard-preview")
    tile.wait_for(state="visible")
    style = tile.evaluate(
        "t => ({ position: t.style.backgroundPosition, image: t.style.backgroundImage,"
        " width: t.offsetWidth, height: t.offsetHeight })"
    )
    sheet = meta["processing"]["storyboard"]["uid"]
    assert style["position"] == "-160px 0px", style
    assert sheet in style["image"] and (style["width"], style["height"]) == (160, 90)
    assert browser.locator(".seek-time").inner_text() == "0:03"
    # The sheet really loaded (an image the browser decoded, not a broken link).
    loaded = browser.evaluate(
        "url => new Promise(ok => { const i = new Image(); i.onload = () => ok(i.naturalWidth);"
        " i.onerror = () => ok(0); i.src = url; })",
        f"/api/v1/files/{sheet}",
    )
    assert loaded == 5 * 160
    shot = tmp_path / "processing.png"
    browser.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MEDIASVC_TEST_UPDATE_SCREENSHOT"):
        PICTURE.write_bytes(shot.read_bytes())
    assert errors == []


def test_hls_plays_with_hls_js_and_a_seek_fetches_a_later_byte_range(
    hls_server: RunningServer, page: tuple[Page, list[str]], long_clip: Path
) -> None:
    uid = upload(hls_server, long_clip)
    meta = processed(hls_server, uid)
    assert meta["processing"]["state"] == "done", meta["processing"]
    heights = [v["height"] for v in meta["processing"]["hls"]["variants"]]
    assert heights == [144, 180]  # 720 is above the source
    browser, errors = page
    ranges: list[tuple[str, int]] = []  # (url, first byte) of each rung-file request

    def on_request(request: Any) -> None:
        if "/hls/" in request.url and request.url.endswith(".mp4"):
            first = request.headers.get("range", "bytes=0-").removeprefix("bytes=").split("-")[0]
            ranges.append((request.url, int(first)))

    browser.on("request", on_request)
    browser.goto(f"{hls_server.base_url}/#/files/{uid}")
    video = browser.locator("video#player")
    browser.wait_for_function(
        "() => { const v = document.querySelector('video#player');"
        " return v && v.dataset.streaming === 'hls.js' && v.readyState >= 1"
        " && Number.isFinite(v.duration); }",
        timeout=WAIT_MS,
    )
    assert abs(video.evaluate("v => v.duration") - 40) < 0.3
    assert browser.locator("#playing-hls").inner_text() == "Streaming (HLS: 144p, 180p)."
    before = len(ranges)
    video.evaluate("v => { v.muted = true; v.currentTime = 38; }")
    browser.wait_for_function(
        "() => { const v = document.querySelector('video#player');"
        " return !v.seeking && v.readyState >= 2 && Math.abs(v.currentTime - 38) < 0.5; }",
        timeout=WAIT_MS,
    )
    # 38 s is in the last 4 s segment, past what hls.js buffers ahead: the seek asked for that
    # segment's byte range of a rung.
    last: dict[str, int] = {}
    for height in heights:
        playlist = httpx.get(f"{hls_server.base_url}/api/v1/files/{uid}/hls/{height}.m3u8").text
        offsets = [int(m) for m in re.findall(r"#EXT-X-BYTERANGE:\d+@(\d+)", playlist)]
        last[f"/hls/{height}.mp4"] = offsets[9]
    after = [(url.split(str(uid))[-1], first) for url, first in ranges[before:]]
    assert any(last.get(path) == first for path, first in after), (after, last)
    assert errors == []
