"""Local disk layout: ``<root>/.incoming/<uid>.part``, then ``<root>/<uid[:2]>/<uid>``.

A file's preview image, once the probe job made it, is ``<root>/<uid[:2]>/<uid>.preview.jpg``.

Paths come from the UID alone; original file names never touch the filesystem.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

from mediasvc.errors import InsufficientStorage
from mediasvc.storage.cloud.base import PREVIEW_SUFFIX
from mediasvc.storage.files import fsync_dir, preallocate

INCOMING_DIR = ".incoming"
PART_SUFFIX = ".part"


class LocalStore:
    """The media root on local disk."""

    def __init__(self, root: Path, *, fsync: bool, min_free_bytes: int) -> None:
        self.root = root.resolve()
        self.incoming = self.root / INCOMING_DIR
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        # Makes "check the free space, then allocate" one step for the uploads of this process.
        self._reserving = threading.Lock()

    def prepare(self) -> None:
        self.incoming.mkdir(parents=True, exist_ok=True)

    def path_for(self, uid: str) -> Path:
        return self.root / uid[:2] / uid

    def part_path_for(self, uid: str) -> Path:
        return self.incoming / f"{uid}{PART_SUFFIX}"

    def preview_path_for(self, uid: str) -> Path:
        return self.root / uid[:2] / f"{uid}{PREVIEW_SUFFIX}"

    def preview_part_path_for(self, uid: str) -> Path:
        """Where a preview is written before its rename; swept like an upload's ``.part``."""
        return self.incoming / f"{uid}{PREVIEW_SUFFIX}{PART_SUFFIX}"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def ensure_room_for(self, size_bytes: int) -> None:
        """Refuse (507) before reading a body that cannot fit beside the headroom we keep."""
        free = self.free_bytes()
        if size_bytes + self.min_free_bytes > free:
            raise InsufficientStorage(
                f"{size_bytes} bytes do not fit: {free} bytes free on the media disk"
            )

    def reserve(self, fd: int, size_bytes: int) -> bool:
        """Allocate ``size_bytes`` to an upload's open ``.part`` file (blocking), beside the
        headroom, or refuse (507). False: the filesystem cannot allocate ahead; only the check ran.

        Checking alone let three concurrent 70 MB uploads into 209 MB free: one 201, two 507
        (issue 12). Allocated blocks leave the free space at once, so the next upload's check
        sees them; in other processes too (only check-and-allocate is not atomic across them).
        """
        with self._reserving:
            self.ensure_room_for(size_bytes)
            try:
                return preallocate(fd, size_bytes)
            except OSError as exc:
                raise translate_os_error(exc) from exc

    def commit(self, part_path: Path, uid: str) -> Path:
        """Atomically move a finished, fsynced ``.part`` file to its UID path (blocking)."""
        final = self.path_for(uid)
        try:
            created = not final.parent.is_dir()
            final.parent.mkdir(exist_ok=True)  # a full disk (or one out of inodes) fails here
            os.replace(part_path, final)
            try:
                if self.fsync:
                    if created:  # a new shard directory's own entry must be durable too
                        fsync_dir(self.root)
                    fsync_dir(final.parent)
                    fsync_dir(part_path.parent)
            except BaseException:
                final.unlink(missing_ok=True)  # renamed but no row will follow: no orphan file
                raise
        except OSError as exc:
            raise translate_os_error(exc) from exc
        return final

    def remove(self, uid: str) -> bool:
        """Delete the local copy (blocking); True if there was one."""
        return _unlink(self.path_for(uid))

    def remove_preview(self, uid: str) -> bool:
        """Delete the local preview (blocking); True if there was one."""
        return _unlink(self.preview_path_for(uid))

    def exists(self, uid: str) -> bool:
        return self.path_for(uid).is_file()


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def translate_os_error(exc: OSError) -> Exception:
    """Map disk-full errors to 507; anything else stays what it is."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage("the media disk is full")
    return exc
