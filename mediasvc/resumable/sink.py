"""One request's bytes into a resumable upload's file: counted, limited, hashed (the whole
file's resumable SHA-256, and the request's own checksum when it sent one), appended, and made
durable at checkpoints.

Like ingest/sink.py's FileSink, its methods block and run in the upload's worker thread
(ingest/feeder.py). A checkpoint (``checkpoint()``) is the part file's fsync followed by
``on_checkpoint(offset, state)``, which the engine turns into the row update on the event loop:
the row never names an offset whose bytes are not on the disk.

A request that carries a checksum of its body takes no checkpoint before the end: none of its
bytes may count until the whole body is verified.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from mediasvc.errors import PayloadTooLarge
from mediasvc.resumable.hashing import ResumableSha256
from mediasvc.storage.part import PartFile


@dataclass(frozen=True, slots=True)
class Checkpoint:
    offset: int  # bytes durably in the file
    hash_state: bytes  # the whole file's SHA-256 state after them


@dataclass(frozen=True, slots=True)
class BodyChecksum:
    """A digest the request's body must have (tus ``Upload-Checksum``)."""

    algorithm: str  # a hashlib name: sha1, md5, sha256
    digest: bytes


class ResumableSink:
    def __init__(
        self,
        part: PartFile,
        hasher: ResumableSha256,
        *,
        limit_bytes: int | None,
        checkpoint_every_bytes: int,
        on_checkpoint: Callable[[Checkpoint], None],
        checksum: BodyChecksum | None = None,
    ) -> None:
        self.part = part
        self.start = part.size
        self._hasher = hasher
        self._limit = limit_bytes  # the upload's length (0 too), or the largest file allowed
        self._every = checkpoint_every_bytes
        self._on_checkpoint = on_checkpoint
        self._checksum = checksum
        self._body_hash = hashlib.new(checksum.algorithm) if checksum else None
        self._since_checkpoint = 0

    @property
    def size(self) -> int:
        return self.part.size

    def write(self, data: memoryview | bytes) -> Future[None]:
        """Count, hash and append ``data``; it must stay intact until the future is done."""
        if self._limit is not None and self.part.size + len(data) > self._limit:
            raise PayloadTooLarge(f"the upload's bytes would go past its {self._limit}-byte length")
        written = self.part.append(data)
        self._hasher.update(data)
        if self._body_hash is not None:
            self._body_hash.update(data)
        else:
            self._since_checkpoint += len(data)
            if self._since_checkpoint >= self._every:
                self.checkpoint()
        return written

    def checkpoint(self) -> Checkpoint:
        """Make what was appended durable and report it."""
        self.part.checkpoint()
        self._since_checkpoint = 0
        point = Checkpoint(self.part.size, self._hasher.state())
        self._on_checkpoint(point)
        return point

    def park(self) -> None:
        """The body idles: end the part file's writer thread (the next write starts one)."""
        self.part.park()

    def checksum_matches(self) -> bool:
        """Whether the body had the digest it declared (True when it declared none)."""
        if self._checksum is None or self._body_hash is None:
            return True
        return self._body_hash.digest() == self._checksum.digest

    def finish(self) -> Checkpoint:
        """Make the bytes durable and close the file."""
        self.part.finish()
        return Checkpoint(self.part.size, self._hasher.state())

    def sha256(self) -> str:
        return self._hasher.hexdigest()
