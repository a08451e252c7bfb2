"""The command line as a newcomer meets it: `.venv/bin/mediasvc` run as a process.

A bad or unknown setting, a port in use, an unmigrated database, a server that is down: each is
one line on stderr and a non-zero exit status. A download whose partial file is wrong heals.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from mediasvc.config import Settings, UnknownSetting
from mediasvc.progress import format_bytes
from tests.conftest import RunningServer, free_port

MEDIASVC = Path(sys.executable).parent / "mediasvc"
MiB = 1024 * 1024


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """``mediasvc ARGS`` with none of this shell's MEDIASVC_* settings, only ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASVC_")}
    clean.pop("GLIBC_TUNABLES", None)
    return subprocess.run(
        [str(MEDIASVC), *args],
        env={**clean, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The refusal: a non-zero status and exactly one line on stderr, no traceback."""
    assert result.returncode != 0, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mediasvc: "), lines[0]
    return lines[0]


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


# --- settings --------------------------------------------------------------------------------


def test_an_unknown_setting_in_the_environment_stops_migrate(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    env = {"MEDIASVC_DATABASE_URL": sqlite_url(db), "MEDIASVC_MAX_UPLOAD_SIZE": "10"}
    line = one_line(run("migrate", env=env, cwd=tmp_path))
    assert "unknown setting MEDIASVC_MAX_UPLOAD_SIZE in the environment" in line
    assert "did you mean MEDIASVC_MAX_UPLOAD_SIZE_BYTES?" in line
    assert not db.exists()  # nothing ran


def test_an_unknown_setting_in_dot_env_stops_serve(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MEDIASVC_FSYNC=false\nmediasvc_max_upload_size=10\n")
    line = one_line(run("serve", "--port", str(free_port()), cwd=tmp_path))
    assert "unknown setting MEDIASVC_MAX_UPLOAD_SIZE in .env" in line
    assert "did you mean MEDIASVC_MAX_UPLOAD_SIZE_BYTES?" in line


def test_an_unknown_setting_stops_the_worker(tmp_path: Path) -> None:
    line = one_line(run("worker", env={"MEDIASVC_REDIS_ULR": "redis://x"}, cwd=tmp_path))
    assert "MEDIASVC_REDIS_ULR" in line and "did you mean MEDIASVC_REDIS_URL?" in line


def test_an_invalid_value_is_one_line_and_hash_key_still_works(tmp_path: Path) -> None:
    env = {"MEDIASVC_GRACEFUL_SHUTDOWN_S": "abc"}
    line = one_line(run("serve", "--port", str(free_port()), env=env, cwd=tmp_path))
    assert line.startswith("mediasvc: invalid setting MEDIASVC_GRACEFUL_SHUTDOWN_S='abc': ")
    assert "valid integer" in line
    # Commands that read no settings are not broken by one (it was every subcommand).
    hashed = run("hash-key", "k", env=env, cwd=tmp_path)
    assert hashed.returncode == 0 and hashed.stderr == ""
    assert re.fullmatch(r"[0-9a-f]{64}\n", hashed.stdout)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MEDIASVC_API_KEYS": "[not json"}, "invalid setting MEDIASVC_API_KEYS: not valid JSON"),
        (
            {"MEDIASVC_REQUIRE_SIGNED_DOWNLOADS": "true"},
            "invalid setting require_signed_downloads needs MEDIASVC_SIGNING_SECRET",
        ),
        (
            {"MEDIASVC_FSYNC": "maybe", "MEDIASVC_MAX_RANGES": "0"},
            "MEDIASVC_MAX_RANGES='0': Input should be greater than or equal to 1",
        ),
        (
            # An empty HMAC key: anyone could sign a link to any file.
            {
                "MEDIASVC_API_KEYS": '[{"name": "a", "sha256": "%s"}]' % ("0" * 64),
                "MEDIASVC_REQUIRE_SIGNED_DOWNLOADS": "true",
                "MEDIASVC_SIGNING_SECRET": "",
            },
            "MEDIASVC_SIGNING_SECRET is 0 bytes, signed links need at least 32",
        ),
    ],
    ids=["json", "rule-between-settings", "two-at-once", "empty-signing-secret"],
)
def test_every_kind_of_invalid_configuration_is_one_line(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    db = tmp_path / "m.db"
    line = one_line(
        run("migrate", env={"MEDIASVC_DATABASE_URL": sqlite_url(db), **env}, cwd=tmp_path)
    )
    assert expected in line
    assert not db.exists()


def test_names_the_command_line_and_the_tests_use_are_not_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("MEDIASVC_URL", "MEDIASVC_API_KEY", "MEDIASVC_TEST_ANYTHING"):
        monkeypatch.setenv(name, "x")
    assert Settings(_env_file=None).graceful_shutdown_s == 30  # type: ignore[call-arg]
    monkeypatch.setenv("MEDIASVC_FSINC", "0")
    with pytest.raises(UnknownSetting, match="did you mean MEDIASVC_FSYNC"):
        Settings(_env_file=None)  # type: ignore[call-arg]


# --- start-up ----------------------------------------------------------------------------------


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(run("serve", "--port", str(port), cwd=tmp_path))
    assert f"port {port} on 127.0.0.1 is already in use" in line
    assert "--port" in line


def test_serve_before_migrate_says_so_in_one_line(tmp_path: Path) -> None:
    env = {"MEDIASVC_DATABASE_URL": sqlite_url(tmp_path / "empty.db")}
    line = one_line(run("serve", "--port", str(free_port()), env=env, cwd=tmp_path))
    assert "the code needs" in line and "run `mediasvc migrate`" in line


def test_serve_without_ffmpeg_warns_in_one_plain_line(
    start_server: Callable[..., RunningServer], pg_url: str, tmp_path: Path
) -> None:
    server = start_server(
        {"MEDIASVC_DATABASE_URL": pg_url, "MEDIASVC_FFPROBE_PATH": "/nonexistent/ffprobe"}
    )
    assert httpx.get(f"{server.base_url}/readyz", timeout=5).json()["status"] == "degraded"
    log = next(tmp_path.glob("server-*.log")).read_text()
    warnings = [line for line in log.splitlines() if line.startswith("mediasvc: warning: ")]
    assert len(warnings) == 1 and "/nonexistent/ffprobe not found" in warnings[0]


# --- help --------------------------------------------------------------------------------------


COMMANDS = ("serve", "worker", "migrate", "upload", "download", "hash-key")


def options_without_help(help_text: str) -> list[str]:
    """Option lines of argparse's --help with no text after them, on the line or the next."""
    lines = help_text.splitlines()
    missing = []
    for index, line in enumerate(lines):
        if not re.match(r"^  -", line):
            continue
        has_text = re.search(r"\S {2,}\S", line.strip()) is not None
        continued = index + 1 < len(lines) and re.match(r"^ {8,}\S", lines[index + 1])
        if not has_text and not continued:
            missing.append(line.strip())
    return missing


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_no_markup(tmp_path: Path, command: str) -> None:
    text = run(command, "--help", cwd=tmp_path).stdout
    assert "usage: mediasvc" in text
    assert options_without_help(text) == []
    assert "``" not in text


def test_the_overview_has_no_markup_and_the_url_default_is_shown(tmp_path: Path) -> None:
    assert "``" not in run("--help", cwd=tmp_path).stdout
    download_help = " ".join(run("download", "--help", cwd=tmp_path).stdout.split())
    assert "(env MEDIASVC_URL; default: http://127.0.0.1:8000)" in download_help


# --- the client -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["upload", "/etc/hostname"], ["download", "someuid"]])
def test_a_server_that_is_down_is_one_line(tmp_path: Path, command: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = one_line(run(*command, "--url", url, cwd=tmp_path))
    assert f"cannot connect to {url}" in line and "mediasvc serve" in line


def downloads_by_status(server: RunningServer) -> dict[str, float]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    found = re.findall(r'^mediasvc_downloads_total\{status="(\d+)"\} (\S+)$', text, re.M)
    return {status: float(count) for status, count in found}


@pytest.fixture
def uploaded(
    start_server: Callable[..., RunningServer], pg_url: str, tmp_path: Path
) -> tuple[RunningServer, str, bytes]:
    server = start_server({"MEDIASVC_DATABASE_URL": pg_url})
    body = os.urandom(3 * MiB)
    source = tmp_path / "source.bin"
    source.write_bytes(body)
    result = run("upload", str(source), "--url", server.base_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    uid = re.search(r"^uid:\s+(\S+)$", result.stdout, re.M)
    assert uid is not None
    return server, uid.group(1), body


def test_a_resumed_download_with_wrong_bytes_starts_again_once(
    uploaded: tuple[RunningServer, str, bytes], tmp_path: Path
) -> None:
    server, uid, body = uploaded
    output = tmp_path / "out.bin"
    output.write_bytes(b"\0" * MiB)  # a "partial download" that is not the file's first MiB
    result = run("download", uid, "-o", str(output), "--url", server.base_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "does not match; downloading it again from the start" in result.stderr
    assert output.read_bytes() == body
    # One ranged request (the resume), then one whole download.
    assert downloads_by_status(server) == {"206": 1.0, "200": 1.0}
    # A complete-size file with wrong bytes heals the same way (it was stuck for good).
    output.write_bytes(b"\0" * len(body))
    again = run("download", uid, "-o", str(output), "--url", server.base_url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert output.read_bytes() == body


def test_restart_ignores_the_partial_file(
    uploaded: tuple[RunningServer, str, bytes], tmp_path: Path
) -> None:
    server, uid, body = uploaded
    output = tmp_path / "out.bin"
    output.write_bytes(body[:MiB])  # a good prefix: it would be resumed
    args = ("download", uid, "-o", str(output), "--url", server.base_url)
    result = run(*args, "--restart", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert output.read_bytes() == body
    assert downloads_by_status(server) == {"200": 1.0}
    output.write_bytes(body[:MiB])
    assert run(*args, cwd=tmp_path).returncode == 0  # without --restart: resumed
    assert downloads_by_status(server) == {"200": 1.0, "206": 1.0}
    assert output.read_bytes() == body


# --- one unit system ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_bytes", "shown"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (1536, "1.50 KiB"),
     (10 * MiB, "10.0 MiB"), (2**30, "1.00 GiB"), (1_073_741_824 * 1.5, "1.50 GiB")],
)  # fmt: skip
def test_sizes_are_shown_as_the_web_page_shows_them(n_bytes: float, shown: str) -> None:
    assert format_bytes(n_bytes) == shown
