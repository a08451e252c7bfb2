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
import redis
from arq.constants import default_queue_name, health_check_key_suffix

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


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("foo://bar", "uses the driver 'foo', which mediasvc does not ship; use postgresql+"),
        ("postgresql://x", "uses the driver 'postgresql', which mediasvc does not ship"),
        ("not a url", "MEDIASVC_DATABASE_URL is not a database URL; use postgresql+asyncpg://"),
        ("unreachable", "Connect call failed"),
        ("no-such-database", "does not exist; is it running, is MEDIASVC_DATABASE_URL right"),
    ],
)
@pytest.mark.parametrize("command", ["migrate", "serve"])
def test_a_bad_database_url_is_one_line(
    tmp_path: Path, pg_url: str, command: str, url: str, expected: str
) -> None:
    """These were 42 to 134 lines of SQLAlchemy traceback (serve said most in one line)."""
    server = pg_url.rsplit("/", 1)[0]
    url = {
        "unreachable": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x",
        "no-such-database": f"{server}/mediasvc_no_such_database",
    }.get(url, url)
    args = ["serve", "--port", str(free_port())] if command == "serve" else [command]
    line = one_line(run(*args, env={"MEDIASVC_DATABASE_URL": url}, cwd=tmp_path))
    assert expected in line


def test_a_database_password_is_never_shown(tmp_path: Path) -> None:
    env = {"MEDIASVC_DATABASE_URL": "postgresql://me:hunter2@db.example/x"}
    line = one_line(run("migrate", env=env, cwd=tmp_path))
    assert "hunter2" not in line and "postgresql://me:***@db.example/x" in line


@pytest.mark.parametrize("args", [[], ["--check"]], ids=["worker", "check"])
def test_a_worker_without_redis_is_one_line(tmp_path: Path, args: list[str]) -> None:
    port = free_port()  # nothing listens there
    env = {"MEDIASVC_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    line = one_line(run("worker", *args, env=env, cwd=tmp_path))
    assert f"cannot reach Redis at 127.0.0.1:{port}/0" in line
    assert "is MEDIASVC_REDIS_URL right?" in line
    unset = one_line(run("worker", *args, cwd=tmp_path))
    assert "MEDIASVC_REDIS_URL is not set" in unset
    bad_scheme = one_line(run("worker", *args, env={"MEDIASVC_REDIS_URL": "foo://x"}, cwd=tmp_path))
    assert "Redis URL must specify one of the following schemes" in bad_scheme


def test_worker_check_without_a_worker_says_what_to_do(tmp_path: Path) -> None:
    redis_url = os.environ.get("MEDIASVC_TEST_REDIS", "redis://127.0.0.1:6379/13")
    with redis.Redis.from_url(redis_url) as client:
        client.delete(f"{default_queue_name}{health_check_key_suffix}")  # no worker has run
    line = one_line(run("worker", "--check", env={"MEDIASVC_REDIS_URL": redis_url}, cwd=tmp_path))
    assert "no worker has reported" in line and "is `mediasvc worker` running" in line


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ("99999", "argument --port: 99999 is not a TCP port: use 1 to 65535"),
        ("-1", "argument --port: -1 is not a TCP port"),
        ("http", "argument --port: 'http' is not a port number"),
    ],
)
def test_serve_refuses_a_port_out_of_range_in_one_line(
    tmp_path: Path, port: str, expected: str
) -> None:
    result = run("serve", "--port", port, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result)
    assert expected in line and "`mediasvc serve --help`" in line


def test_a_wrong_command_line_is_one_line(tmp_path: Path) -> None:
    assert "invalid choice: 'srve'" in one_line(run("srve", cwd=tmp_path))
    assert "required: uid" in one_line(run("download", cwd=tmp_path))


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
    assert "did not match; downloaded it again from the start" in result.stderr
    assert output.read_bytes() == body
    # One ranged request (the resume), then one whole download.
    assert downloads_by_status(server) == {"206": 1.0, "200": 1.0}
    # A complete-size file with wrong bytes heals the same way (it was stuck for good).
    output.write_bytes(b"\0" * len(body))
    again = run("download", uid, "-o", str(output), "--url", server.base_url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert output.read_bytes() == body


def upload_once(server: RunningServer, tmp_path: Path, body: bytes) -> str:
    """A file that allows one full download."""
    source = tmp_path / "once.bin"
    source.write_bytes(body)
    args = ("upload", str(source), "--max-downloads", "1", "--url", server.base_url)
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    uid = re.search(r"^uid:\s+(\S+)$", result.stdout, re.M)
    assert uid is not None
    return uid.group(1)


def test_a_used_up_file_is_one_line(
    uploaded: tuple[RunningServer, str, bytes], tmp_path: Path
) -> None:
    server, _, body = uploaded
    uid = upload_once(server, tmp_path, body)
    output = tmp_path / "out.bin"
    args = ("download", uid, "-o", str(output), "--url", server.base_url)
    assert run(*args, cwd=tmp_path).returncode == 0
    output.unlink()
    line = one_line(run(*args, cwd=tmp_path))  # was a 24-line httpx.ResponseNotRead traceback
    assert line.startswith("mediasvc: download failed: 410 ")
    assert "download limit is used up" in line
    assert not output.exists()


def test_a_wrong_partial_file_that_cannot_be_downloaded_again_is_removed(
    uploaded: tuple[RunningServer, str, bytes], tmp_path: Path
) -> None:
    """The resume and the restart need two downloads; a budget of one ends in a 410."""
    server, _, body = uploaded
    uid = upload_once(server, tmp_path, body)
    output = tmp_path / "out.bin"
    output.write_bytes(b"\0" * MiB)  # not the file's first MiB
    result = run("download", uid, "-o", str(output), "--url", server.base_url, cwd=tmp_path)
    line = one_line(result)
    assert f"{output}: the partial file from an earlier run did not match and was removed" in line
    assert "downloading it again from the start failed: 410 " in line
    # Not left at full size with the wrong bytes, looking complete.
    assert not output.exists()
    assert downloads_by_status(server)["206"] == 1.0


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
