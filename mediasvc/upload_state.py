"""Where `mediasvc upload` remembers its unfinished uploads, so a run killed halfway resumes.

One small JSON file per upload in ``$XDG_CACHE_HOME/mediasvc/uploads/`` (``~/.cache`` when
unset), named by a hash of what makes it the same upload: the server, the file's absolute path,
size and modification time, and the options that went into its metadata. A file changed since
(another size or mtime) or other options start a new upload. The file holds the upload URLs,
never the API key; it is written atomically (rename) and removed once the upload is verified.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class UploadKey:
    server: str
    path: str  # absolute
    size: int
    mtime_ns: int
    metadata: tuple[tuple[str, str], ...]
    parallel: int

    @classmethod
    def of(cls, server: str, path: Path, metadata: dict[str, str], parallel: int) -> UploadKey:
        stat = path.stat()
        return cls(
            server.rstrip("/"),
            str(path.resolve()),
            stat.st_size,
            stat.st_mtime_ns,
            tuple(sorted(metadata.items())),
            parallel,
        )

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def digest(self) -> str:
        return hashlib.sha256(self.as_json().encode()).hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mediasvc" / "uploads"


@dataclass(frozen=True, slots=True)
class SavedUpload:
    """The upload URLs: one, or the parts of a parallel upload in file order and, once they
    were joined, the final upload (the parts are gone then)."""

    urls: list[str]
    final: str | None = None


class UploadState:
    def __init__(self, key: UploadKey, directory: Path | None = None) -> None:
        self.key = key
        self.path = (directory or cache_dir()) / f"{key.digest()}.json"

    def load(self) -> SavedUpload | None:
        try:
            data = json.loads(self.path.read_text())
            urls = data.get("urls")
            if data.get("key") != json.loads(self.key.as_json()) or not isinstance(urls, list):
                return None  # a hash collision or an older format: not ours
            final = data.get("final")
            return SavedUpload([str(url) for url in urls], str(final) if final else None)
        except (OSError, ValueError):
            return None

    def save(self, saved: SavedUpload) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.path.with_suffix(".tmp")
        record = {"key": json.loads(self.key.as_json()), "urls": saved.urls, "final": saved.final}
        temporary.write_text(json.dumps(record))
        os.replace(temporary, self.path)

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)
