"""Reading a local file while proving it is the promised bytes (size and sha256).

The proof is made on the bytes actually handed to the client, at the end of the file and
before the upload may complete: ``VerifiedChunks`` raises ``CloudIntegrityError`` instead of
ending the iteration, so a client fed by it aborts the multipart upload rather than completing
it. Reads happen in a worker thread (hashlib releases the GIL on large buffers).
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO

import anyio.to_thread

from mediasvc.storage.cloud.errors import CloudIntegrityError


class UploadAbandoned(Exception):
    """Raised into a client that is pulling chunks after our caller was cancelled."""


class Verifier:
    """Counts and hashes bytes; ``check()`` raises unless they were exactly the promised file."""

    def __init__(self, *, size: int, sha256: str) -> None:
        self.size = size
        self.sha256 = sha256
        self.seen = 0
        self._hash = hashlib.sha256()

    def want(self, chunk_bytes: int) -> int:
        # One byte past the promised size is enough to notice a longer file.
        return min(chunk_bytes, self.size - self.seen + 1)

    def update(self, data: bytes | memoryview) -> None:
        self.seen += len(data)
        if self.seen > self.size:
            raise CloudIntegrityError(f"file is longer than the promised {self.size} bytes")
        self._hash.update(data)

    def check(self) -> None:
        if self.seen != self.size:
            raise CloudIntegrityError(f"file has {self.seen} bytes, {self.size} were promised")
        digest = self._hash.hexdigest()
        if digest != self.sha256:
            raise CloudIntegrityError(f"file sha256 is {digest}, {self.sha256} was promised")


class VerifiedChunks:
    """Async iterator of a file's chunks, verified at the end (see the module docstring)."""

    def __init__(self, file: BinaryIO, *, size: int, sha256: str, chunk_bytes: int) -> None:
        self._file = file
        self._chunk_bytes = chunk_bytes
        self._verifier = Verifier(size=size, sha256=sha256)
        self._abandoned = False

    def abandon(self) -> None:
        """Make the next pull fail, so the client aborts its upload."""
        self._abandoned = True

    def __aiter__(self) -> VerifiedChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._abandoned:
            raise UploadAbandoned("upload cancelled")
        data = await anyio.to_thread.run_sync(self._read)
        if self._abandoned:
            raise UploadAbandoned("upload cancelled")
        if not data:
            self._verifier.check()
            raise StopAsyncIteration
        return data

    def _read(self) -> bytes:
        data = self._file.read(self._verifier.want(self._chunk_bytes))
        self._verifier.update(data)
        return data


def read_verified(path_file: BinaryIO, *, size: int, sha256: str) -> bytes:
    """Read a whole small file (the caller bounds ``size``) and verify it (blocking)."""
    verifier = Verifier(size=size, sha256=sha256)
    data = path_file.read(verifier.want(size + 1))
    verifier.update(data)
    verifier.check()
    return data
