"""One `mediasvc serve` for a scenario script: its environment, start, wait until ready, stop."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from bench.base import BenchError
from bench.children import Child, Children, wait_http


def serve_env(
    settings: Mapping[str, str] | None = None,
    *,
    inherit_settings: bool = False,
    pythonpath: str | Path | None = None,
) -> dict[str, str]:
    """This process's environment for the server, ``MEDIASVC_*`` set from ``settings`` only
    (unless ``inherit_settings``), without GLIBC_TUNABLES (`mediasvc serve` sets its own), and
    with a source tree first on PYTHONPATH when one is given (to compare two trees)."""
    env = {k: v for k, v in os.environ.items() if inherit_settings or not k.startswith("MEDIASVC_")}
    env.pop("GLIBC_TUNABLES", None)
    env.update(settings or {})
    if pythonpath is not None:
        env["PYTHONPATH"] = str(Path(pythonpath).resolve())
    return env


@contextlib.contextmanager
def serve_mediasvc(
    work: Path,
    *,
    port: int,
    env: Mapping[str, str],
    args: Sequence[str] = ("--log-level", "warning"),
    ready_timeout_s: float = 30.0,
) -> Iterator[Child]:
    """Migrate the database in ``work``, run `mediasvc serve --port port *args` there until the
    block ends, its output in ``work/server.log``."""
    migrate = subprocess.run(
        [sys.executable, "-m", "mediasvc", "migrate"],
        cwd=work,
        env=dict(env),
        capture_output=True,
        text=True,
    )
    if migrate.returncode != 0:
        raise BenchError(f"mediasvc migrate failed:\n{migrate.stdout}\n{migrate.stderr}")
    children = Children(logs=work)
    argv = [sys.executable, "-m", "mediasvc", "serve", "--port", str(port), *args]
    try:
        server = children.start("server", argv, env=dict(env), cwd=work, port=port)
        wait_http(server, "/healthz", timeout=ready_timeout_s, ok=300)
        yield server
    finally:
        children.stop_all()
