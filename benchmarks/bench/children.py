"""Child processes: start them with a log file, wait for them to answer HTTP, stop them all."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.base import BenchError, log
from bench.procfs import descendants_of


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Children:
    """Every server is a child of this process; all of them are stopped by ``stop_all``."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], *, env: dict[str, str], cwd: Path, port: int = 0
    ) -> Child:
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                list(argv), stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd
            )
        child = Child(name, proc, log_path, port)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 20.0) -> None:
        if child in self.children:
            self.children.remove(child)
        if child.proc.poll() is not None:
            return
        family = descendants_of(child.pid)
        child.proc.send_signal(signal.SIGTERM)
        try:
            child.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait(timeout=10)
        for pid in family:  # uvicorn's worker processes, nginx's worker
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            try:
                self.stop(child)
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {child.name}: {exc}")


def wait_http(child: Child, path: str = "/", *, timeout: float = 60.0, ok: int = 500) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise BenchError(f"{child.name} exited ({child.proc.returncode}):\n{child.log_tail()}")
        try:
            response = httpx.get(child.base + path, timeout=2.0)
            if response.status_code < ok:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise BenchError(f"{child.name} did not answer {path}: {last}\n{child.log_tail()}")


def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, text=True, capture_output=True, **kwargs)
