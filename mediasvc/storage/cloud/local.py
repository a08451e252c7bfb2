"""A local directory acting as the bucket: the embedded default, and a stand-in in tests.

Objects live at ``<root>/<key>``. A put copies into a hidden temporary file beside the target,
hashing as it copies, fsyncs, and renames it into place only if the bytes are the promised
ones, so a reader never sees a partial or wrong object. The verified sha256 is kept in a
``user.`` extended attribute when the filesystem has them, so ``stat`` can tell it.

Where the bucket shares the media root's filesystem, the temporary file is a hard link to the
local file instead of a copy (files are immutable), so a file takes its room on the disk once,
not twice; the bytes are still read and verified before the rename. Across filesystems
(``EXDEV``), or where links are refused, it is a copy.

A temporary file is ``flock``-ed by its put until the rename. A put killed mid-copy (SIGKILL
included) leaves it behind unlocked; ``sweep_abandoned`` removes those once old enough and
never one whose lock is held.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import secrets
import stat
import threading
import time
from collections.abc import AsyncIterator
from io import BufferedIOBase
from pathlib import Path
from typing import NoReturn

import anyio.to_thread

from mediasvc.storage.cloud._cancel import finish_or_wind_down
from mediasvc.storage.cloud.base import ObjectInfo, check_range, check_sha256
from mediasvc.storage.cloud.errors import (
    CloudError,
    CloudIntegrityError,
    CloudObjectMissing,
    CloudUnavailable,
)
from mediasvc.storage.cloud.sizing import MiB
from mediasvc.storage.cloud.verified import UploadAbandoned, Verifier
from mediasvc.storage.files import fsync_dir

SHA256_XATTR = "user.mediasvc.sha256"
TEMP_SUFFIX = ".tmp"
# Errors of the bucket's disk that may pass by themselves: full, over quota, I/O trouble.
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EBUSY}
# os.link errors that mean "no hard link here, copy instead": another filesystem, a filesystem
# without links (or forbidding them), too many links.
_NO_LINK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


class LocalCloudStore:
    """``CloudStore`` on a directory."""

    cancel_grace_s = 60.0  # a cancelled copy stops at its next chunk; this bounds the wait

    def __init__(self, root: Path, *, chunk_bytes: int = 1 * MiB, fsync: bool = True) -> None:
        self.root = root.resolve()
        self.chunk_bytes = chunk_bytes
        self.fsync = fsync

    def path_for(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not an object key: {key!r}")
        return self.root.joinpath(*parts)

    async def reader_url(self, key: str, *, expires_s: float) -> str:
        return f"file:{self.path_for(key)}"  # the directory is on this machine: no expiry

    async def put_file(self, key: str, path: Path, *, size: int, sha256: str) -> None:
        check_sha256(sha256)
        target = self.path_for(key)
        stop = threading.Event()
        copy = asyncio.ensure_future(
            anyio.to_thread.run_sync(self._copy_verified, path, target, size, sha256, stop)
        )
        await finish_or_wind_down(copy, stop.set, grace_s=self.cancel_grace_s)

    def _copy_verified(
        self, source: Path, target: Path, size: int, sha256: str, stop: threading.Event
    ) -> None:
        verifier = Verifier(size=size, sha256=sha256)
        with source.open("rb") as src:  # a missing source is the caller's OSError
            temp = target.parent / f".{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                linked = stat.S_ISREG(os.fstat(src.fileno()).st_mode) and _link(source, temp)
                with temp.open("r+b") if linked else temp.open("xb") as dst:
                    # Held until the rename: how the sweep tells a live put from a dead one.
                    fcntl.flock(dst.fileno(), fcntl.LOCK_EX)
                    # A link is verified by reading it (the same bytes the object will have).
                    self._pass_through(
                        dst if linked else src, None if linked else dst, verifier, stop
                    )
                    verifier.check()
                    _set_sha256(dst.fileno(), sha256)
                    if self.fsync:
                        os.fsync(dst.fileno())
                    os.replace(temp, target)
                # rename() of two links to one inode does nothing: a re-put of the same linked
                # file leaves the temporary name behind unless we remove it.
                temp.unlink(missing_ok=True)
                if self.fsync:
                    fsync_dir(target.parent)
            except BaseException as exc:
                temp.unlink(missing_ok=True)
                if isinstance(exc, OSError):
                    _raise_translated(exc, str(target))
                raise

    def _pass_through(
        self,
        src: BufferedIOBase,
        dst: BufferedIOBase | None,
        verifier: Verifier,
        stop: threading.Event,
    ) -> None:
        buffer = memoryview(bytearray(self.chunk_bytes))  # reused: no fresh memory per chunk
        while n := src.readinto(buffer[: verifier.want(self.chunk_bytes)]):
            if stop.is_set():
                raise UploadAbandoned("copy cancelled")
            verifier.update(buffer[:n])
            if dst is not None:
                dst.write(buffer[:n])

    async def sweep_abandoned(self, *, older_than_s: float) -> int:
        """Remove temporary files of puts that died (unlocked, ctime older than the cutoff)."""
        cutoff_s = time.time() - older_than_s
        return await anyio.to_thread.run_sync(self._sweep_temps, cutoff_s)

    def _sweep_temps(self, cutoff_s: float) -> int:
        swept = 0
        for directory, _dirs, names in os.walk(self.root):
            for name in names:
                if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                    swept += _remove_if_abandoned(Path(directory, name), cutoff_s)
        return swept

    async def open_range(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        check_range(start, end)
        path = self.path_for(key)
        try:
            fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise CloudObjectMissing(f"{key}: no such object") from exc
        except OSError as exc:
            _raise_translated(exc, key)
        try:
            position = start
            while position < end:
                want = min(self.chunk_bytes, end - position)
                try:
                    chunk = await anyio.to_thread.run_sync(os.pread, fd, want, position)
                except OSError as exc:
                    _raise_translated(exc, key)
                if not chunk:
                    raise CloudIntegrityError(f"{key}: object ends at {position}, before {end}")
                position += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self.path_for(key)
        try:
            return await anyio.to_thread.run_sync(_stat, path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            _raise_translated(exc, key)

    async def delete(self, key: str) -> None:
        path = self.path_for(key)
        try:
            await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
        except OSError as exc:
            _raise_translated(exc, key)

    async def close(self) -> None:
        return None


def _link(source: Path, temp: Path) -> bool:
    """Hard-link ``source`` as ``temp``; False where the filesystem cannot (then we copy)."""
    try:
        os.link(source, temp)
    except OSError as exc:
        if exc.errno in _NO_LINK_ERRNOS:
            return False
        raise
    if not os.access(temp, os.R_OK | os.W_OK):
        # The temp file is opened read-write for its lock (and the sweep opens it so too):
        # a file we may link but not write, we copy instead.
        temp.unlink()
        return False
    return True


def _remove_if_abandoned(path: Path, cutoff_s: float) -> int:
    """1 if ``path`` was a dead put's temporary file and is gone now, else 0."""
    try:
        # O_RDWR: flock emulated over NFS needs a writable descriptor for an exclusive lock.
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return 0
    try:
        opened = os.fstat(fd)
        if opened.st_ctime > cutoff_s or not stat.S_ISREG(opened.st_mode):
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # its put is alive
        if os.lstat(path).st_ino != opened.st_ino:
            return 0  # renamed away and replaced meanwhile: not the file we locked
        os.unlink(path)
        return 1
    except OSError:
        return 0
    finally:
        os.close(fd)


def _stat(path: Path) -> ObjectInfo:
    size = path.stat().st_size
    try:
        sha256: str | None = os.getxattr(path, SHA256_XATTR).decode()
    except OSError:
        sha256 = None  # no xattr support, or an object put by someone else
    return ObjectInfo(size=size, sha256=sha256)


def _set_sha256(fd: int, sha256: str) -> None:
    try:
        os.setxattr(fd, SHA256_XATTR, sha256.encode())
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            raise


def _raise_translated(exc: OSError, key: str) -> NoReturn:
    detail = f"{key}: {exc.strerror or exc}"
    if exc.errno in _TRANSIENT_ERRNOS:
        raise CloudUnavailable(detail) from exc
    raise CloudError(detail) from exc
