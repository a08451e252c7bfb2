"""Local disk layout: ``<root>/.incoming/<uid>.part``, then ``<root>/<uid[:2]>/<uid>``.

Every new file arrives through a part file the store hands out (``create_part``; storage/part.py
owns writing, reserving, fsync, the rename and the 507 for a full disk).

A resumable upload's bytes wait in ``<root>/.incoming/<uid>.upload`` between its requests
(``create_upload``, ``open_upload``): not ``.part``, which the cleanup's sweep of crashed
uploads would take from an upload whose client comes back after a day; its row's expiry decides.
A complete one is linked into place, not renamed (``link_into_place``): its ``.upload`` name
goes only once the file's row is committed, so a crash in between leaves an upload that can
still complete, never a file whose upload lost its bytes.

A file's preview image, once the probe job made it, is ``<root>/<uid[:2]>/<uid>.preview.jpg``;
thumbnails the API rendered on request are cached under ``<root>/.thumbnails/<uid>/``.
``<root>/.volume-id`` names this media volume: a row records the volume that holds its local
copy, so a node never judges another node's files by its own disk.

Paths come from the UID alone; original file names never touch the filesystem.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from pathlib import Path

from mediasvc.errors import InsufficientStorage
from mediasvc.storage.cloud.base import PREVIEW_SUFFIX
from mediasvc.storage.files import fsync_dir
from mediasvc.storage.part import PartFile, translate_os_error
from mediasvc.storage.thumbnails import DEFAULT_MAX_PER_FILE, ThumbnailCache

INCOMING_DIR = ".incoming"
THUMBNAILS_DIR = ".thumbnails"  # <root>/.thumbnails/<uid>/<ms>-<width>.jpg: a bounded cache
PART_SUFFIX = ".part"
UPLOAD_SUFFIX = ".upload"
VOLUME_ID_FILE = ".volume-id"


class LocalStore:
    """The media root on local disk."""

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool,
        min_free_bytes: int,
        direct_io: bool = True,
        thumbnails_per_file: int = DEFAULT_MAX_PER_FILE,
    ) -> None:
        self.root = root.resolve()
        # Thumbnails rendered on request: a bounded cache per file (storage/thumbnails.py).
        self.thumbnails = ThumbnailCache(
            self.root / THUMBNAILS_DIR, max_per_file=thumbnails_per_file
        )
        self.incoming = self.root / INCOMING_DIR
        self.fsync = fsync
        self.direct_io = direct_io  # part files bypass the page cache where the disk allows
        self.min_free_bytes = min_free_bytes
        self._volume_id: str | None = None
        # Makes "check the free space, then allocate" one step for the part files of this
        # process (PartFile.reserve).
        self.reserving = threading.Lock()

    def prepare(self) -> None:
        self.incoming.mkdir(parents=True, exist_ok=True)
        _ = self.volume_id  # at start: a volume that cannot hold one more file fails here

    @property
    def volume_id(self) -> str:
        """This media volume's id, made once by whichever process asks first (blocking)."""
        if self._volume_id is None:
            self._volume_id = _read_or_make_volume_id(self.root / VOLUME_ID_FILE)
        return self._volume_id

    def path_for(self, uid: str) -> Path:
        return self.root / self.relative_path_for(uid)

    @staticmethod
    def relative_path_for(uid: str) -> str:
        """Where a file lives under the root (what the edge's internal location appends)."""
        return f"{uid[:2]}/{uid}"

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

    def create_part(self, uid: str, *, written_by_tool: bool = False) -> PartFile:
        """A new ``.part`` file for ``uid`` (blocking); storage/part.py says how it is used."""
        return PartFile(
            self.part_path_for(uid),
            fsync=self.fsync,
            direct_io=self.direct_io,
            store=self,
            uid=uid,
            written_by_tool=written_by_tool,
        )

    def upload_path_for(self, uid: str) -> Path:
        return self.incoming / f"{uid}{UPLOAD_SUFFIX}"

    def create_upload(self, uid: str) -> None:
        """The empty file of a new resumable upload (blocking)."""
        try:
            fd = os.open(self.upload_path_for(uid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            os.close(fd)
            if self.fsync:
                fsync_dir(self.incoming)
        except OSError as exc:
            raise translate_os_error(exc) from exc

    def open_upload(self, uid: str, offset: int) -> PartFile:
        """A resumable upload's file, reopened to append at ``offset``, its last checkpoint
        (blocking); committed like any part file once complete."""
        return PartFile(
            self.upload_path_for(uid),
            fsync=self.fsync,
            direct_io=self.direct_io,
            store=self,
            uid=uid,
            resume_at=offset,
            link_on_commit=True,
        )

    def remove_upload(self, uid: str) -> bool:
        """Delete a resumable upload's bytes (blocking); True if there were any."""
        return _unlink(self.upload_path_for(uid))

    def commit(self, part_path: Path, uid: str) -> Path:
        """Atomically move a finished, fsynced ``.part`` file to its UID path (blocking);
        ``PartFile.commit`` calls it."""
        return self._place(part_path, uid, keep_source=False)

    def link_into_place(self, upload_path: Path, uid: str) -> Path:
        """Give a complete resumable upload's finished file its UID path too, durably, keeping
        its ``.upload`` name until the row is committed (``PartFile.commit`` calls it; then
        ``PartFile.forget_source``). A file already at that path is the link of a completion
        whose process died before its row was committed (nothing else makes that uid's file
        while the upload's writer lock is held): it is replaced."""
        return self._place(upload_path, uid, keep_source=True)

    def _place(self, source: Path, uid: str, *, keep_source: bool) -> Path:
        final = self.path_for(uid)
        try:
            created = not final.parent.is_dir()
            final.parent.mkdir(exist_ok=True)  # a full disk (or one out of inodes) fails here
            if keep_source:
                final.unlink(missing_ok=True)
                os.link(source, final)
            else:
                os.replace(source, final)
            try:
                if self.fsync:
                    if created:  # a new shard directory's own entry must be durable too
                        fsync_dir(self.root)
                    fsync_dir(final.parent)
                    if not keep_source:
                        fsync_dir(source.parent)
            except BaseException:
                final.unlink(missing_ok=True)  # placed but no row will follow: no orphan file
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

    def bytes_freed_by_removing(self, uid: str) -> int:
        """What removing the local copy gives back: nothing while another link (the local
        bucket's object) keeps its blocks (blocking)."""
        try:
            st = self.path_for(uid).stat()
        except FileNotFoundError:
            return 0
        return 0 if st.st_nlink > 1 else st.st_blocks * 512

    def exists(self, uid: str) -> bool:
        return self.path_for(uid).is_file()


def _read_or_make_volume_id(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with temp.open("x") as file:
            file.write(secrets.token_hex(16))
            file.flush()
            os.fsync(file.fileno())  # an id that a power cut could empty would be no id
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    # Read back: of two processes starting at once on a fresh volume, the later rename wins
    # and the earlier one may keep its own id for its lifetime. Rows it writes then name no
    # volume the sweep knows, and rows of an unknown volume are never judged: safe.
    return path.read_text().strip()


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
