"""The disk cache of thumbnails the API rendered on request (api/processing.py).

``<media_root>/.thumbnails/<uid>/<ms>-<width>.jpg``. The request already narrows the keys (time
down to a tenth of a second, width rounded to even), but a client walking the seek bar at every
width could still fill the disk for one file; so each file keeps at most ``max_per_file``
entries, least recently used first out: a hit touches its entry's mtime, and each new entry
removes the oldest beyond the bound. The whole directory goes with the file's purge (deletion,
expiry), and the volume audit sweeps the directories of files that are gone (a render that
finished just after its file's purge made one again).

A request holds its entry open from ``hit`` or ``store`` on: it hashes and serves that
descriptor, never the path again, so another request's prune (or the purge) that unlinks the
entry meanwhile leaves it readable, as a download of a file deleted mid-way is.

All methods block (file system calls): run them in a worker thread.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mediasvc.ids import is_valid_uid

DEFAULT_MAX_PER_FILE = 64
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC


class ThumbnailGone(Exception):
    """A render's output vanished before it was stored: its file's cache directory was removed
    (the file's purge, or the volume audit's sweep of a file that is gone)."""


class ThumbnailCache:
    def __init__(self, root: Path, *, max_per_file: int = DEFAULT_MAX_PER_FILE) -> None:
        self.root = root
        self.max_per_file = max_per_file

    def path_for(self, uid: str, time_ms: int, width: int) -> Path:
        return self.root / uid / f"{time_ms}-{width}.jpg"

    def hit(self, path: Path) -> int | None:
        """An open descriptor of ``path`` (now the most recently used), or None if not cached.
        The caller closes it."""
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        try:
            os.utime(fd)  # through the descriptor: the entry may be unlinked by now
        except BaseException:
            os.close(fd)
            raise
        return fd

    def prepare(self, path: Path) -> None:
        """Make the directory a new entry is written into."""
        path.parent.mkdir(parents=True, exist_ok=True)

    def store(self, part: Path, path: Path) -> int:
        """Rename a finished ``part`` into place (readers never see half a JPEG), then drop the
        least recently used entries of its file beyond ``max_per_file``. Returns an open
        descriptor of the entry (the caller closes it); ``ThumbnailGone`` if ``part`` or its
        directory was removed first."""
        try:
            fd = os.open(part, _OPEN_FLAGS)
        except FileNotFoundError as exc:
            raise ThumbnailGone(str(part)) from exc
        try:
            os.replace(part, path)
            self._prune(path.parent, keep=path)
        except FileNotFoundError as exc:
            os.close(fd)
            raise ThumbnailGone(str(part)) from exc
        except BaseException:
            os.close(fd)
            raise
        return fd

    def remove(self, uid: str) -> None:
        shutil.rmtree(self.root / uid, ignore_errors=True)

    def uids(self, *, settled_before_s: float) -> list[str]:
        """The files with a cache directory unchanged since ``settled_before_s`` (epoch)."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            if not is_valid_uid(entry.name):
                continue  # not a name we make: never ours to remove
            try:
                if entry.stat(follow_symlinks=False).st_mtime <= settled_before_s:
                    found.append(entry.name)
            except FileNotFoundError:
                continue
        return found

    def _prune(self, directory: Path, *, keep: Path) -> None:
        entries: list[tuple[float, str]] = []
        for entry in os.scandir(directory):
            if not entry.name.endswith(".jpg") or entry.path == str(keep):
                continue  # the .part files of renders under way are theirs
            try:
                entries.append((entry.stat().st_mtime, entry.path))
            except FileNotFoundError:
                continue
        surplus = len(entries) + 1 - self.max_per_file
        for _, path in sorted(entries)[: max(0, surplus)]:
            Path(path).unlink(missing_ok=True)
