"""The repository stands alone and installs reproducibly; the deployment files are safe to use.

No network: the lock check runs offline (the lock must agree with pyproject.toml as it is; that
the check fails when they disagree needs the index, so `make lock-check` shows it, not a test),
and the Debian-package script is run with a PATH that hides every tool, as a user who is not root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import PROJECT_ROOT


def tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "ls-files", "-z"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    return [PROJECT_ROOT / name for name in listed.split("\0") if name]


def test_nothing_points_outside_the_repository() -> None:
    """Code, tests, docs and comments name only files of this tree."""
    # Spelled in pieces so that this file does not match itself.
    outside = re.compile(rb"\.\./" + b"shared|/work/" + b"shared|FIELD" + b"-NOTES|" + b"DESIGN.md")
    this_file = Path(__file__).resolve()
    hits = [
        str(path.relative_to(PROJECT_ROOT))
        for path in tracked_files()
        if path != this_file and path.is_file() and outside.search(path.read_bytes())
    ]
    assert hits == []


def test_the_test_media_is_committed() -> None:
    from tests.mediafiles import SAMPLE_MP4, SAMPLE_WEBM

    for sample in (SAMPLE_MP4, SAMPLE_WEBM):
        assert sample.resolve().is_relative_to(PROJECT_ROOT)
        assert sample in tracked_files()
        assert sample.stat().st_size > 500_000


def test_the_lock_agrees_with_pyproject() -> None:
    uv = PROJECT_ROOT / ".uv" / "bin" / "uv"
    assert uv.is_file(), "make test installs uv into .uv/"
    checked = subprocess.run(
        [str(uv), "lock", "--check", "--offline", "--python", sys.executable],
        cwd=PROJECT_ROOT,
        capture_output=True,
        timeout=120,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )
    assert checked.returncode == 0, checked.stderr.decode()


SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A scratch directory that user nobody can enter (pytest's tmp_path is root's alone)."""
    made = Path(tempfile.mkdtemp(prefix="mediasvc-test-build-"))
    made.chmod(0o755)
    try:
        yield made
    finally:
        shutil.rmtree(made)


def test_missing_debian_packages_are_named_to_a_user_who_is_not_root(
    world_readable_dir: Path,
) -> None:
    """Without root the set-up prints the one apt-get line and stops, before any test runs."""
    tmp_path = world_readable_dir
    bare = tmp_path / "bin"  # a machine with bash, python3 and coreutils, nothing else
    bare.mkdir()
    for tool in ("bash", "sort", "cat", "ls"):
        (bare / tool).symlink_to(shutil.which(tool) or pytest.fail(f"{tool} missing"))
    # Debian's python3 with its venv module (make test installs both), which nobody may run.
    (bare / "python3").symlink_to("/usr/bin/python3")
    script = tmp_path / "system-packages"
    shutil.copy(PROJECT_ROOT / "scripts" / "system-packages", script)
    script.chmod(0o755)

    def as_nobody(goal: str) -> subprocess.CompletedProcess[bytes]:
        """The script for ``goal`` (test or run), run by user nobody with only ``bare`` on PATH."""
        argv = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups"]
        return subprocess.run(
            [*argv, str(bare / "bash"), str(script), goal],
            env={"PATH": str(bare), "HOME": str(tmp_path)},
            capture_output=True,
            timeout=60,
        )

    ran = as_nobody("test")
    assert ran.returncode == 1
    assert ran.stdout == b""
    assert (
        "apt-get update && apt-get install -y --no-install-recommends aria2 chromium curl "
        "docker-compose ffmpeg nginx nodejs npm postgresql redis-server"
    ) in ran.stderr.decode()
    # The service alone needs none of them.
    run_only = as_nobody("run")
    assert (run_only.returncode, run_only.stderr) == (0, b"")


def compose_config(**env: str) -> dict[str, Any]:
    rendered = subprocess.run(
        ["docker-compose", "-f", str(PROJECT_ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        timeout=60,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MEDIASVC_")} | env,
    )
    config: dict[str, Any] = yaml.safe_load(rendered.stdout)
    return config


def test_compose_builds_one_image_for_its_three_services() -> None:
    services = compose_config()["services"]
    ours = {name: services[name] for name in ("migrate", "api", "worker")}
    assert [name for name, svc in ours.items() if "build" in svc] == ["migrate"]
    assert {svc["image"] for svc in ours.values()} == {"mediasvc:local"}


def test_compose_takes_the_public_url_and_the_trusted_proxy_from_the_operator() -> None:
    default = compose_config()["services"]["api"]
    assert default["environment"]["MEDIASVC_PUBLIC_BASE_URL"] in ("", None)  # from Host
    trusted = default["command"][default["command"].index("--forwarded-allow-ips") + 1]
    assert trusted == "172.28.0.10"  # the edge's fixed address: only its X-Forwarded-* believed
    assert "ports" not in default  # every request comes through the edge
    set_ = compose_config(
        MEDIASVC_PUBLIC_BASE_URL="https://media.example.com",
        MEDIASVC_FORWARDED_ALLOW_IPS="10.0.0.5",
    )["services"]["api"]
    assert set_["environment"]["MEDIASVC_PUBLIC_BASE_URL"] == "https://media.example.com"
    assert set_["command"][set_["command"].index("--forwarded-allow-ips") + 1] == "10.0.0.5"


def test_compose_puts_the_nginx_edge_in_front_of_the_api() -> None:
    config = compose_config()
    edge, api = config["services"]["edge"], config["services"]["api"]
    assert [str(port["published"]) for port in edge["ports"]] == ["8000"]
    assert edge["networks"]["default"]["ipv4_address"] == "172.28.0.10"
    assert edge["environment"]["MEDIASVC_UPSTREAM"] == "api:8000"
    prefix = edge["environment"]["MEDIASVC_ACCEL_REDIRECT_PREFIX"]
    assert api["environment"]["MEDIASVC_ACCEL_REDIRECT_PREFIX"] == prefix
    # The edge reads the API's media volume (read-only) where the API writes it.
    media = edge["environment"]["MEDIASVC_MEDIA_ROOT"]
    assert api["environment"]["MEDIASVC_MEDIA_ROOT"] == media
    mounts = {target: (source, mode) for source, target, mode in map(_mount, edge["volumes"])}
    assert mounts[media] == ("media", "ro")
    source, mode = mounts["/etc/nginx/templates"]
    assert (source, mode) == (str(PROJECT_ROOT / "deploy" / "nginx" / "templates"), "ro")


def _mount(volume: str) -> tuple[str, str, str]:
    """docker-compose's "source:target:mode" of a service's volume."""
    source, target, mode = volume.split(":")
    return source, target, mode


def test_docker_build_context_leaves_out_local_state() -> None:
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    for local in (".git", ".venv", ".uv", "data", "**/node_modules"):
        assert local in ignored
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "uv sync --frozen" in dockerfile  # installs from the lock
    assert "--require-hashes" in dockerfile
