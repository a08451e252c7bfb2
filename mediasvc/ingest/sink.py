"""The file being received, in one pass: counted, limited, hashed and appended to its part file.

Its methods block (they hash, and wait for the disk), so they run in the upload's worker thread
(ingest/feeder.py), never on the event loop. Each batch is hashed here while the part file's
writer thread writes it (storage/part.py): hashlib and os.write both release the GIL, so the two
overlap. The hash state lives in this object, so whoever keeps it can append across requests.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future
from dataclasses import dataclass

from mediasvc.errors import PayloadTooLarge
from mediasvc.storage.part import PartFile

SNIFF_HEAD_BYTES = 8 * 1024


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    size: int
    sha256: str
    head: bytes  # the first bytes, to sniff the format from


class FileSink:
    def __init__(self, part: PartFile, *, max_size_bytes: int) -> None:
        self.part = part
        self.size = 0
        self._max_size = max_size_bytes  # 0: no limit
        self._hash = hashlib.sha256()
        self._head = bytearray()

    def write(self, data: memoryview | bytes) -> Future[None]:
        """Count, hash and append ``data``; it must stay intact until the future is done."""
        self.size += len(data)
        if self._max_size and self.size > self._max_size:
            raise PayloadTooLarge(f"the file is larger than the {self._max_size}-byte limit")
        if len(self._head) < SNIFF_HEAD_BYTES:
            self._head += data[: SNIFF_HEAD_BYTES - len(self._head)]
        written = self.part.append(data)
        self._hash.update(data)
        return written

    def park(self) -> None:
        """The body idles: end the part file's writer thread (the next write starts one)."""
        self.part.park()

    def finish(self) -> ReceivedFile:
        """Make the bytes durable and close the part file."""
        self.part.finish()
        return ReceivedFile(size=self.size, sha256=self._hash.hexdigest(), head=bytes(self._head))

    def discard(self) -> None:
        """Remove the part file (a sink used on its own, as the property tests do)."""
        self.part.discard()
