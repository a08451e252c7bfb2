"""The web page in a real browser: Debian's chromium, headless, driven by Playwright for Python.

Nothing is downloaded at run time (never `playwright install`): Playwright drives
/usr/bin/chromium, which `make test` installs from Debian. Each test starts a real uvicorn
(`mediasvc serve`) on PostgreSQL and a browser with a fresh profile. Every wait is bounded.

- Upload through the page (tus-js-client): the file input, a live progress bar with rate and
  time left (the upload is throttled by the browser's own network emulation so progress can be
  seen), Cancel (terminates the upload: the server keeps nothing), then a real upload that
  appears in the list.
- Resumable: offline mid-upload (Playwright's offline mode) and back, then a reload mid-upload
  and the same file chosen again: it finishes without starting over (bytes counted at a
  loopback proxy in front of the server); the pause and resume buttons.
- /docs (Swagger UI) renders with every request to another host refused: its assets are ours.
- A video of tens of MB (made by ffmpeg at test time, so the browser cannot have buffered it
  all): open its page from the list, seek near the end, and check that the player got there and
  that the server answered the seek with a 206 for a range that starts far past the beginning,
  even though downloads carry `Content-Security-Policy: sandbox` and nosniff.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, Response, ViewportSize, sync_playwright

from mediasvc.ids import hash_token
from tests.conftest import PROJECT_ROOT, RunningServer, leftovers, truncate
from tests.helpers import samples
from tests.tcp_proxy import proxy_to
from tests.tus_helpers import port_of, stored_file

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

CHROMIUM = "/usr/bin/chromium"
# docs/facts.md, "Browsers in tests"; Playwright adds --headless, the test a fresh profile dir.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
]
VIEWPORT = ViewportSize(width=1200, height=800)
WAIT_MS = 15_000  # the bound on any single wait in the browser
SCREENSHOT = PROJECT_ROOT / "docs" / "screenshot.png"
MiB = 1024 * 1024


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True, timeout=60)


@pytest.fixture(scope="module")
def big_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 s of H.264 in MP4 (faststart), ~44 MB: far more than a player buffers ahead.

    A little temporal noise keeps x264 at the asked bit rate (test patterns compress too well).
    """
    path = tmp_path_factory.mktemp("browser-media") / "seek test.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
        "-t", "30", "-vf", "noise=alls=3:allf=t",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25",
        "-b:v", "12M", "-maxrate", "12M", "-bufsize", "4M",
        "-movflags", "+faststart", str(path),
    )  # fmt: skip
    assert path.stat().st_size > 30 * MiB
    return path


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("browser-picture") / "Testbild – café.png"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=480x270", "-frames:v", "1", str(path))
    return path


@dataclass
class Browser:
    page: Page
    context: BrowserContext
    errors: list[str] = field(default_factory=list)  # page errors and console errors
    responses: list[Response] = field(default_factory=list)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make test does)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh profile for every test
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
            locale="en-GB",
            timezone_id="UTC",
            color_scheme="light",
        )
        context.set_default_timeout(WAIT_MS)
        context.set_default_navigation_timeout(WAIT_MS)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            seen = Browser(page=page, context=context)
            page.on("pageerror", lambda error: seen.errors.append(f"page error: {error}"))
            page.on(
                "console",
                lambda message: (
                    seen.errors.append(f"console {message.type}: {message.text}")
                    if message.type == "error"
                    else None
                ),
            )
            page.on("response", lambda response: seen.responses.append(response))
            yield seen
        finally:
            context.close()


@pytest.fixture
def server(start_server: Callable[..., RunningServer], pg_url: str) -> RunningServer:
    asyncio.run(truncate(pg_url))  # an empty list, so what the page shows is this test's
    return start_server({"MEDIASVC_DATABASE_URL": pg_url})


def upload_via_api(server: RunningServer, path: Path) -> dict[str, Any]:
    with path.open("rb") as body:
        response = httpx.post(
            f"{server.base_url}/api/v1/files/stream",
            content=body,
            headers={"X-Filename": quote(path.name)},
            timeout=60,
        )
    assert response.status_code == 201, response.text
    stored: dict[str, Any] = response.json()
    return stored


def wait_until_probed(server: RunningServer, uid: str) -> dict[str, Any]:
    """The probe job (in-process here) fills in media facts and the preview; bounded wait."""
    deadline = time.monotonic() + 20
    while True:
        metadata: dict[str, Any] = httpx.get(
            f"{server.base_url}/api/v1/files/{uid}/metadata", timeout=5
        ).json()
        if metadata["probe_status"] != "pending" or time.monotonic() > deadline:
            return metadata
        time.sleep(0.2)


def listed_names(server: RunningServer) -> list[str]:
    page = httpx.get(f"{server.base_url}/api/v1/files", timeout=5).json()
    return [item["original_name"] for item in page["items"]]


def throttle_uploads(browser: Browser, bytes_per_s: int) -> None:
    """Chromium's own network emulation (DevTools protocol); -1 lifts it."""
    cdp = browser.context.new_cdp_session(browser.page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": bytes_per_s,
        },
    )


def test_upload_through_the_page_with_progress_cancel_and_list(
    server: RunningServer, browser: Browser, picture: Path, tmp_path: Path
) -> None:
    page = browser.page
    page.goto(server.base_url + "/")
    page.get_by_text("No files yet.").wait_for()

    # A slow upload: the bar moves, rate and time left show, Cancel stops it.
    doomed = tmp_path / "cancel me.bin"
    doomed.write_bytes(os.urandom(12 * MiB))
    throttle_uploads(browser, 1 * MiB)  # 12 s for the whole file: ample time to see and cancel
    page.set_input_files("#file-input", str(doomed))
    page.wait_for_function(
        "() => { const bar = document.querySelector('#progress-bar');"
        " return bar.value > 0 && bar.value < bar.max; }",
        timeout=WAIT_MS,
    )
    progress = page.locator("#progress-text")
    page.wait_for_function(
        "() => / left$/.test(document.querySelector('#progress-text').textContent)",
        timeout=WAIT_MS,
    )
    assert re.search(
        r"of 12\.0 MiB · \d+ % · [\d.]+ (KiB|MiB)/s · \d+:\d\d left$", progress.inner_text()
    )
    page.click("#cancel")
    page.get_by_text("cancel me.bin: cancelled").wait_for()
    assert page.locator("#cancel").is_disabled()
    # The bar no longer promises a time left (it said "0:12 left" after Cancel).
    assert progress.inner_text() == "cancelled"
    assert page.locator("#progress-bar").evaluate("bar => bar.value") == 0
    # The server saw the connection drop and kept nothing: no row, no partial file.
    deadline = time.monotonic() + 10
    while leftovers(server.media_root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(server.media_root) == []
    assert listed_names(server) == []

    # At full speed: uploaded, named (a non-ASCII name goes as percent-encoded X-Filename), listed.
    throttle_uploads(browser, -1)
    page.set_input_files("#file-input", str(picture))
    page.locator("#upload-status", has_text="Uploaded Testbild – café.png").wait_for()
    assert page.locator("#progress-bar").evaluate("bar => bar.value === bar.max")
    item = page.locator("#file-list li", has_text="Testbild – café.png")
    item.wait_for()
    assert "image/png" in item.inner_text()
    assert listed_names(server) == [picture.name]

    # Drag and drop: a file dropped on the zone goes the same way.
    page.evaluate(
        """() => {
            const data = new DataTransfer();
            data.items.add(new File(["dropped, not chosen\\n"], "dropped note.txt",
                                    {type: "text/plain"}));
            const zone = document.querySelector("#drop");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type,
                    {dataTransfer: data, bubbles: true, cancelable: true}));
            }
        }"""
    )
    page.locator("#upload-status", has_text="Uploaded dropped note.txt").wait_for()
    page.locator("#file-list li", has_text="dropped note.txt").wait_for()
    assert listed_names(server) == ["dropped note.txt", picture.name]
    page.locator("#file-list li", has_text="dropped note.txt").locator("a").click()
    page.locator("#file-title", has_text="dropped note.txt").wait_for()
    page.locator("#detail").get_by_text("No preview for text/plain").wait_for()

    # Its page: the metadata and the picture inline.
    page.locator("#file-list li", has_text=picture.name).locator("a").click()
    page.locator("#file-title", has_text=picture.name).wait_for()
    page.wait_for_function(
        "() => { const img = document.querySelector('img#player');"
        " return img && img.complete && img.naturalWidth === 480; }",
        timeout=WAIT_MS,
    )
    facts = page.locator(".facts").inner_text()
    assert "image/png" in facts
    assert f"{picture.stat().st_size:,} bytes" in facts
    # Downloaded three times, without a limit: not counted, and the page says so (not "0").
    for _ in range(3):
        assert httpx.get(f"{server.base_url}/api/v1/files/{listed_uid(server, picture.name)}",
                         timeout=5).status_code == 200  # fmt: skip
    page.reload()
    page.locator("#file-title", has_text=picture.name).wait_for()
    assert re.search(r"Downloads\s+no limit", page.locator(".facts").inner_text())
    assert browser.errors == []


def listed_uid(server: RunningServer, name: str | None) -> str:
    page = httpx.get(f"{server.base_url}/api/v1/files", timeout=5).json()
    return next(str(item["uid"]) for item in page["items"] if item["original_name"] == name)


def test_a_file_without_a_name_is_listed_by_type_and_size(
    server: RunningServer, browser: Browser, picture: Path
) -> None:
    body = picture.read_bytes()
    response = httpx.post(f"{server.base_url}/api/v1/files/stream", content=body, timeout=10)
    assert response.status_code == 201 and response.json()["original_name"] is None
    uid = response.json()["uid"]
    page = browser.page
    page.goto(server.base_url + "/")
    item = page.locator(f'#file-list li[data-uid="{uid}"] .name')
    item.wait_for()
    size = f"{len(body) / 1024:.{2 if len(body) < 10 * 1024 else 1}f} KiB"
    assert item.inner_text() == f"Unnamed image/png ({size})"
    assert uid not in item.inner_text()
    item.click()
    page.locator("#file-title", has_text="Unnamed image/png").wait_for()
    assert browser.errors == []


@pytest.fixture
def server_without_ffprobe(
    start_server: Callable[..., RunningServer], pg_url: str
) -> RunningServer:
    asyncio.run(truncate(pg_url))  # before the browser's own event loop starts
    return start_server(
        {"MEDIASVC_DATABASE_URL": pg_url, "MEDIASVC_FFPROBE_PATH": "/nonexistent/ffprobe"}
    )


def test_a_file_the_server_could_not_examine_says_why(
    server_without_ffprobe: RunningServer, browser: Browser, big_video: Path
) -> None:
    server = server_without_ffprobe
    uid = upload_via_api(server, big_video)["uid"]
    assert wait_until_probed(server, uid)["probe_status"] == "skipped"
    page = browser.page
    page.goto(f"{server.base_url}/#/files/{uid}")
    page.locator("#file-title", has_text=big_video.name).wait_for()
    facts = page.locator(".facts").inner_text()
    assert "not examined: ffprobe is not installed" in facts


def zerocopy_bytes(server: RunningServer) -> float:
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    return samples(metrics)[("mediasvc_bytes_sent_zerocopy_total", ())]


def test_video_page_plays_and_seeks_with_a_range_request(
    server: RunningServer, browser: Browser, big_video: Path, picture: Path, tmp_path: Path
) -> None:
    page = browser.page
    size = big_video.stat().st_size
    wait_until_probed(server, upload_via_api(server, picture)["uid"])
    video = upload_via_api(server, big_video)
    uid = video["uid"]
    metadata = wait_until_probed(server, uid)
    assert metadata["format"] == "video/mp4"
    bit_rate = metadata["media"]["bit_rate"]

    page.goto(server.base_url + "/")
    link = page.locator(f'#file-list li[data-uid="{uid}"] a')
    link.click()
    page.locator("#file-title", has_text=big_video.name).wait_for()
    # Bit rates in bits per second (it showed bytes, as "1.4 MiB/s").
    bit_rate_row = re.search(r"Bit rate\s+(.+)", page.locator(".facts").inner_text())
    assert bit_rate_row is not None
    assert bit_rate_row[1] == f"{bit_rate / 1e6:.1f} Mbit/s"
    player = page.locator("video#player")
    player.wait_for()
    page.wait_for_function(
        "() => { const v = document.querySelector('video#player');"
        " return v.readyState >= 1 && Number.isFinite(v.duration); }",
        timeout=WAIT_MS,
    )
    duration = player.evaluate("v => v.duration")
    assert 29 < duration < 31
    target = duration - 1
    # What the browser holds before the seek ends well before the target: the seek must fetch.
    buffered_end = player.evaluate(
        "v => v.buffered.length ? v.buffered.end(v.buffered.length - 1) : 0"
    )
    assert buffered_end < target - 1, buffered_end

    zerocopy_before = zerocopy_bytes(server)
    first_after_seek = len(browser.responses)
    player.evaluate("(v, t) => { v.muted = true; v.currentTime = t; }", target)
    page.wait_for_function(
        "t => { const v = document.querySelector('video#player');"
        " return !v.seeking && v.readyState >= 2 && Math.abs(v.currentTime - t) < 0.5; }",
        arg=target,
        timeout=WAIT_MS,
    )
    # The player decodes from there to the end: it really got the data near the end.
    player.evaluate("v => v.play()")
    page.wait_for_function("() => document.querySelector('video#player').ended", timeout=WAIT_MS)

    media_url = f"{server.base_url}/api/v1/files/{uid}?inline=true"
    seeks = []
    for response in browser.responses[first_after_seek:]:
        if response.url != media_url:
            continue
        match = re.fullmatch(r"bytes=(\d+)-\d*", response.request.all_headers().get("range", ""))
        if response.status == 206 and match:
            seeks.append((int(match[1]), response.all_headers()))
    assert seeks, [(r.url, r.status) for r in browser.responses[first_after_seek:]]
    start, headers = seeks[0]
    # Seeking to 1 s before the end of a constant-rate file: a range near the end of the bytes.
    assert start > size // 2, (start, size)
    assert headers["content-range"].startswith(f"bytes {start}-")
    # The seek's bytes went from the page cache to the socket (the server's zero-copy send).
    assert zerocopy_bytes(server) > zerocopy_before
    # The download's own CSP and nosniff don't stop our page's <video> from playing it.
    assert headers["content-security-policy"] == "sandbox"
    assert headers["x-content-type-options"] == "nosniff"

    # The README's picture: an upload under way (throttled), the list with its thumbnails,
    # and the player at the end of the video. MEDIASVC_TEST_UPDATE_SCREENSHOT=1 saves it to docs/.
    page.locator(f'#file-list li[data-uid="{uid}"].active').wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#file-list img.thumb')]"
        ".every(img => img.complete && img.naturalWidth > 0)",
        timeout=WAIT_MS,
    )
    in_flight = tmp_path / "concert recording.wav"
    in_flight.write_bytes(os.urandom(24 * MiB))
    throttle_uploads(browser, 2 * MiB)  # 12 s: time for the picture and Cancel
    page.set_input_files("#file-input", str(in_flight))
    page.wait_for_function(
        "() => /[1-9]\\d* % .* left$/.test(document.querySelector('#progress-text').textContent)",
        timeout=WAIT_MS,
    )
    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot))
    page.click("#cancel")
    page.get_by_text(f"{in_flight.name}: cancelled").wait_for()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MEDIASVC_TEST_UPDATE_SCREENSHOT"):
        save_small_png(shot, SCREENSHOT)
    assert browser.errors == []


def save_small_png(source: Path, target: Path) -> None:
    """A 256-colour PNG (ffmpeg's palettegen): the README's picture at a third of the bytes."""
    target.parent.mkdir(exist_ok=True)
    ffmpeg(
        "-i", str(source),
        "-vf", "split[a][b];[a]palettegen=max_colors=256[p];[b][p]paletteuse=dither=none",
        str(target),
    )  # fmt: skip


SIGNED_PAGE_KEY = "web-page-owner-key"


@pytest.fixture
def signed_server(start_server: Callable[..., RunningServer], pg_url: str) -> RunningServer:
    """Signed downloads required, one API key; started before the browser (its own loop)."""
    asyncio.run(truncate(pg_url))
    return start_server(
        {
            "MEDIASVC_DATABASE_URL": pg_url,
            "MEDIASVC_REQUIRE_SIGNED_DOWNLOADS": "true",
            "MEDIASVC_SIGNING_SECRET": "browser-test-signing-secret-32-bytes",
            "MEDIASVC_API_KEYS": json.dumps(
                [{"name": "web", "sha256": hash_token(SIGNED_PAGE_KEY)}]
            ),
        }
    )


def test_signed_downloads_with_the_owners_key_show_the_file_page(
    signed_server: RunningServer, browser: Browser, picture: Path
) -> None:
    """With signed downloads required, the key typed into the page opens what the plain URLs
    no longer do: the metadata and previews (asked for with the key) and the picture itself
    (through a signed link from /link)."""
    server, key = signed_server, SIGNED_PAGE_KEY
    owner = {"Authorization": f"Bearer {key}"}
    response = httpx.post(
        f"{server.base_url}/api/v1/files/stream",
        content=picture.read_bytes(),
        headers={"X-Filename": quote(picture.name), **owner},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    uid = response.json()["uid"]
    url = f"{server.base_url}/api/v1/files/{uid}"
    assert httpx.get(f"{url}/metadata", timeout=5).status_code == 403  # no key, no link
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/metadata", headers=owner, timeout=5).json()["preview_url"] is None:
        assert time.monotonic() < deadline, "the probe made no preview"
        time.sleep(0.2)

    page = browser.page
    page.goto(server.base_url + "/")
    page.click("details.api-key summary")  # the key field is folded away
    page.fill("#api-key", key)
    page.dispatch_event("#api-key", "change")
    thumb = page.locator(f'#file-list li[data-uid="{uid}"] img.thumb')
    thumb.wait_for()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
    )
    page.locator(f'#file-list li[data-uid="{uid}"] a').click()
    page.locator("#file-title", has_text=picture.name).wait_for()
    page.wait_for_function(
        "() => { const img = document.querySelector('img#player');"
        " return img && img.complete && img.naturalWidth === 480; }",
        timeout=WAIT_MS,
    )
    # The picture came through a signed link. The refusals: the list before the key was typed
    # (401), and the player's first, plain try (403) that made it ask /link.
    shown = [r for r in browser.responses if r.url.startswith(f"{url}?") and r.status == 200]
    assert shown and all("signature=" in r.url for r in shown), [r.url for r in shown]
    refused = [(r.url, r.status) for r in browser.responses if r.status >= 400]
    assert refused == [
        (f"{server.base_url}/api/v1/files", 401),
        (f"{url}?inline=true", 403),
    ], refused
    assert [e for e in browser.errors if "401" not in e and "403" not in e] == []


def test_docs_render_with_no_request_leaving_the_server(
    server: RunningServer, browser: Browser
) -> None:
    # Offline, or behind a firewall: anything not for this server fails, and is counted.
    elsewhere: list[str] = []

    def only_this_server(route: Any) -> None:
        if route.request.url.startswith(server.base_url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    browser.context.route("**/*", only_this_server)
    page = browser.page
    page.goto(server.base_url + "/docs")
    page.locator(".swagger-ui .info .title", has_text="mediasvc").wait_for()
    page.locator(
        ".opblock-summary-path", has_text="/api/v1/files/stream/{filename}"
    ).first.wait_for()
    assert elsewhere == []
    assert browser.errors == []


# --- resumable uploads (tus-js-client) ------------------------------------------------------


def progress_at_least(page: Page, fraction: float) -> None:
    page.wait_for_function(
        "f => { const bar = document.querySelector('#progress-bar');"
        " return bar.max > 1 && bar.value >= f * bar.max; }",
        arg=fraction,
        timeout=WAIT_MS,
    )


def bar_value(page: Page) -> int:
    return int(page.locator("#progress-bar").evaluate("bar => bar.value"))


def test_an_upload_survives_going_offline_and_a_reload(
    server: RunningServer, browser: Browser, tmp_path: Path
) -> None:
    """Offline mid-upload and back: it continues from the server's offset. Reloaded mid-upload:
    choosing the file again continues it. What crossed the proxy stays below the file's size
    plus what was in flight (well under the page's 64 MiB chunk)."""
    size = 24 * MiB
    source = tmp_path / "resumable upload.bin"
    source.write_bytes(os.urandom(size))
    page = browser.page
    browser.page.on("dialog", lambda dialog: dialog.accept())  # "leave the page?" on reload
    with proxy_to(port_of(server.base_url)) as proxy:
        page.goto(proxy.url + "/")
        throttle_uploads(browser, 4 * MiB)  # ~6 s for the whole file
        page.set_input_files("#file-input", str(source))
        progress_at_least(page, 0.2)

        browser.context.set_offline(True)
        page.get_by_text("offline; it continues when the connection is back").wait_for()
        offline_at = bar_value(page)
        browser.context.set_offline(False)
        throttle_uploads(browser, 4 * MiB)
        progress_at_least(page, 0.5)
        assert bar_value(page) > offline_at  # it went on, and not from 0

        page.reload()
        page.locator("#unfinished-list li", has_text=source.name).wait_for()
        throttle_uploads(browser, -1)
        page.set_input_files("#file-input", str(source))
        page.locator("#upload-status", has_text=f"Uploaded {source.name}").wait_for()
        assert proxy.sent < size + 2 * MiB, proxy.sent
        assert page.locator("#unfinished").is_hidden()  # finished: no longer offered
        uid = listed_uid(server, source.name)
        assert uid in saved_delete_tokens(page)  # from the completing response: Delete is offered
        meta = stored_file(server.base_url, f"/api/v1/files/{uid}")
        assert meta["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert [e for e in browser.errors if "ERR_INTERNET_DISCONNECTED" not in e] == []
        leave_before_the_proxy_closes(page)


def test_pause_and_resume_buttons(server: RunningServer, browser: Browser, tmp_path: Path) -> None:
    size = 16 * MiB
    source = tmp_path / "paused.bin"
    source.write_bytes(os.urandom(size))
    page = browser.page
    with proxy_to(port_of(server.base_url)) as proxy:
        page.goto(proxy.url + "/")
        throttle_uploads(browser, 2 * MiB)
        page.set_input_files("#file-input", str(source))
        progress_at_least(page, 0.1)
        page.click("#pause")
        page.get_by_text("paused.bin: paused").wait_for()
        assert page.locator("#resume").is_visible() and page.locator("#pause").is_hidden()
        head = httpx.head(
            f"{server.base_url}{uploads_path(page)}", headers={"Tus-Resumable": "1.0.0"}, timeout=5
        )
        paused_offset = int(head.headers["upload-offset"])
        assert 0 < paused_offset < size
        throttle_uploads(browser, -1)
        page.click("#resume")
        page.locator("#upload-status", has_text="Uploaded paused.bin").wait_for()
        assert proxy.sent < size + 2 * MiB, proxy.sent  # resumed, not started again
        uid = listed_uid(server, source.name)
        assert uid in saved_delete_tokens(page)
        meta = stored_file(server.base_url, f"/api/v1/files/{uid}")
        assert meta["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert browser.errors == []
        leave_before_the_proxy_closes(page)


def leave_before_the_proxy_closes(page: Page) -> None:
    """The page keeps polling the new file's metadata through the proxy's origin; once the
    proxy is gone those requests would be refused and logged as console errors."""
    page.goto("about:blank")


def saved_delete_tokens(page: Page) -> list[str]:
    tokens = page.evaluate(
        "() => Object.keys(JSON.parse(localStorage.getItem('mediasvc.deleteTokens') || '{}'))"
    )
    assert isinstance(tokens, list)
    return [str(uid) for uid in tokens]


def uploads_path(page: Page) -> str:
    """The unfinished upload's path, from tus-js-client's URL storage in the page."""
    url = page.evaluate(
        "() => Object.keys(localStorage).filter(k => k.startsWith('tus::'))"
        ".map(k => JSON.parse(localStorage.getItem(k)).uploadUrl)[0]"
    )
    assert isinstance(url, str), url
    return "/" + url.split("/", 3)[3]
