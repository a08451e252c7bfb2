"""ffprobe and ffmpeg as bounded child processes: a timeout, capped output, capped memory.

A hostile file can make a media tool hang, print without end or allocate without end; none of
that may reach the worker. Each tool runs in its own session, so on timeout or cancellation the
whole process group is killed; its output is read with a cap; ``prlimit`` (util-linux, present
on every Debian system) caps its address space. Long runs (transcodes) also run under ``nice``
and ``setpriv --pdeathsig KILL`` (util-linux): a worker killed outright takes its ffmpeg with it
instead of leaving it encoding for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mediasvc.media.config import MediaConfig

logger = logging.getLogger(__name__)

READ_CHUNK_BYTES = 64 * 1024
_LOG_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*")
# stderr is only for the reason of a failure: the first few KiB are kept, the rest drained.
STDERR_KEPT_BYTES = 4 * 1024


class ToolError(Exception):
    """A media tool could not give an answer; ``str(exc)`` is a short reason."""


class ToolMissing(ToolError):
    """The binary is not installed: an operator's problem, not the file's."""


class ToolTimeout(ToolError):
    pass


class ToolOutputTooLarge(ToolError):
    pass


@dataclass(frozen=True, slots=True)
class MediaInput:
    """What a media tool reads: a local file, or a URL of the cloud copy (a presigned GET, which
    ffmpeg reads with Range requests, so a seek fetches only around the frame it wants).

    ``protocols`` is the tool's ``-protocol_whitelist``: exactly what the URL needs, so that a
    file cannot make the tool open anything else (a playlist naming other URLs, say).
    ``options`` go before ``-i``: for https, certificate checks (ffmpeg's ``tls_verify``
    defaults to 0, which would hand a signed URL and the bytes read to whoever answers).
    ``label`` replaces the URL in error text: a presigned URL carries a signature.
    """

    url: str
    protocols: str
    label: str = "file"
    options: tuple[str, ...] = ()

    @classmethod
    def local(cls, path: Path) -> MediaInput:
        return cls(f"file:{path}", "file")

    @classmethod
    def of_url(cls, url: str) -> MediaInput:
        scheme = url.partition(":")[0]
        protocols = {"file": "file", "http": "http,tcp", "https": "https,tls,tcp"}.get(scheme)
        if protocols is None:
            raise ValueError(f"no media tool input for a {scheme!r} URL")
        options = tls_verify_options() if scheme == "https" else ()
        return cls(url, protocols, label="the cloud copy", options=options)

    def hidden(self) -> dict[Path | str, str]:
        """For ``ToolResult.reason``: the URL, with and without its query, as ``label``."""
        return {self.url: self.label, self.url.partition("?")[0]: self.label}


def tls_verify_options() -> tuple[str, ...]:
    """ffmpeg's input options that make its TLS check the server's certificate and name against
    the system's CA bundle (Debian: /etc/ssl/certs/ca-certificates.crt, as Python's ``ssl``
    finds it). Without a bundle found, ``-tls_verify 1`` alone: ffmpeg's TLS library then uses
    its own default trust, or fails the handshake; never an unchecked connection."""
    ca_file = _system_ca_file()
    return ("-tls_verify", "1", *(("-ca_file", ca_file) if ca_file else ()))


@functools.cache
def _system_ca_file() -> str | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


@dataclass(frozen=True, slots=True)
class ToolResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    def reason(self, hide: Mapping[Path | str, str] | None = None) -> str:
        """The tool's error lines, without their ``[demuxer @ 0x…]`` prefixes, or its status.

        Each path in ``hide`` is replaced by its label: stored errors never show our paths.
        """
        lines: list[str] = []
        for raw in self.stderr.decode("utf-8", "replace").splitlines():
            line = _LOG_PREFIX.sub("", raw).strip()
            if line and line not in lines:
                lines.append(line)
        text = "; ".join(lines) if lines else f"exit status {self.returncode}"
        # Longest first, so that a path that extends another (x and x.part) is replaced whole.
        for path, label in sorted((hide or {}).items(), key=lambda item: -len(str(item[0]))):
            text = text.replace(f"file:{path}", label).replace(str(path), label)
        return text


async def run_tool(
    argv: Sequence[str],
    *,
    timeout_s: float,
    max_output_bytes: int,
    max_memory_bytes: int = 0,
    on_line: Callable[[bytes], None] | None = None,
    niceness: int = 0,
) -> ToolResult:
    """Run ``argv`` (its stdin is /dev/null) and return its exit status and output.

    With ``on_line``, each line of stdout goes to it (a progress report) instead of being kept,
    the run is tied to this process's life and, with ``niceness``, runs below the service.
    Raises ``ToolMissing``, ``ToolTimeout`` (the process group was killed) or
    ``ToolOutputTooLarge`` (more than ``max_output_bytes`` on stdout; killed too).
    """
    command = bounded_command(
        argv,
        max_memory_bytes=max_memory_bytes,
        niceness=niceness,
        tied_to_parent=on_line is not None,
    )
    name = os.path.basename(argv[0])
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: killed whole, children included
    )
    assert process.stdout is not None and process.stderr is not None
    stderr_task = asyncio.ensure_future(_drain(process.stderr, STDERR_KEPT_BYTES))
    try:
        async with asyncio.timeout(timeout_s):
            if on_line is None:
                stdout = await _read_capped(process.stdout, max_output_bytes, name)
            else:
                stdout = b""
                await _read_lines(process.stdout, on_line, max_output_bytes, name)
            returncode = await process.wait()
            stderr = await stderr_task
    except TimeoutError:
        raise ToolTimeout(f"{name} did not finish within {timeout_s:g} s") from None
    finally:
        if process.returncode is None:
            _kill_group(process.pid)
            await process.wait()
        if not stderr_task.done():
            stderr_task.cancel()
            await asyncio.gather(stderr_task, return_exceptions=True)
    return ToolResult(returncode, stdout, stderr)


def bounded_command(
    argv: Sequence[str], *, max_memory_bytes: int, niceness: int, tied_to_parent: bool
) -> list[str]:
    """``argv`` behind the wrappers that bound it (each execs the next, so the pid is the
    tool's): ``prlimit`` for memory, ``nice`` below the service, ``setpriv --pdeathsig`` to die
    with the thread that started it. Raises ``ToolMissing``."""
    binary = shutil.which(argv[0])
    if binary is None:
        name = os.path.basename(argv[0])
        raise ToolMissing(f"{name} is not installed (Debian package: ffmpeg)")
    command = [binary, *argv[1:]]
    prlimit = shutil.which("prlimit") if max_memory_bytes else None
    if prlimit is not None:
        command = [prlimit, f"--as={max_memory_bytes}", "--", *command]
    if niceness and (nice := shutil.which("nice")) is not None:
        command = [nice, "-n", str(niceness), *command]
    if tied_to_parent and (setpriv := shutil.which("setpriv")) is not None:
        command = [setpriv, "--pdeathsig", "KILL", "--", *command]
    return command


async def _read_capped(stream: asyncio.StreamReader, limit_bytes: int, name: str) -> bytes:
    buffer = bytearray()
    while chunk := await stream.read(READ_CHUNK_BYTES):
        buffer += chunk
        if len(buffer) > limit_bytes:
            raise ToolOutputTooLarge(f"{name} printed more than {limit_bytes} bytes")
    return bytes(buffer)


async def _read_lines(
    stream: asyncio.StreamReader, on_line: Callable[[bytes], None], limit_bytes: int, name: str
) -> None:
    """Hand each line to ``on_line``; a line longer than ``limit_bytes`` is an error."""
    buffer = bytearray()
    while chunk := await stream.read(READ_CHUNK_BYTES):
        buffer += chunk
        *lines, rest = buffer.split(b"\n")
        for line in lines:
            on_line(bytes(line))
        buffer = bytearray(rest)
        if len(buffer) > limit_bytes:
            raise ToolOutputTooLarge(f"{name} printed a line of more than {limit_bytes} bytes")
    if buffer:
        on_line(bytes(buffer))


async def _drain(stream: asyncio.StreamReader, keep_bytes: int) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(READ_CHUNK_BYTES):
        if len(kept) < keep_bytes:
            kept += chunk[: keep_bytes - len(kept)]
    return bytes(kept)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def missing_tools_warning(config: MediaConfig) -> str | None:
    """What an operator reads when ffprobe or ffmpeg (as configured) cannot be run; None when
    both can. Said at start (serve, worker, the app's lifespan) and by /readyz."""
    missing = [path for path in (config.ffprobe_path, config.ffmpeg_path) if not shutil.which(path)]
    if not missing:
        return None
    return (
        f"{', '.join(missing)} not found: uploads work, but videos are not examined (probe_status "
        "'skipped', no previews); install ffmpeg (Debian: apt-get install ffmpeg) or set "
        "MEDIASVC_FFPROBE_PATH / MEDIASVC_FFMPEG_PATH"
    )


# ffmpeg writes files and prints nothing on stdout: the cap is a backstop.
FFMPEG_MAX_OUTPUT_BYTES = 64 * 1024


async def run_media_tool(
    config: MediaConfig,
    argv: Sequence[str],
    *,
    timeout_s: float,
    max_output_bytes: int = FFMPEG_MAX_OUTPUT_BYTES,
    on_line: Callable[[bytes], None] | None = None,
    niceness: int = 0,
) -> ToolResult:
    """``run_tool`` under the media tools' memory limit (``tool_max_memory_bytes``)."""
    return await run_tool(
        argv,
        timeout_s=timeout_s,
        max_output_bytes=max_output_bytes,
        max_memory_bytes=config.tool_max_memory_bytes,
        on_line=on_line,
        niceness=niceness,
    )
