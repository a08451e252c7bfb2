"""How many uploads a process receives at once, in all and per client address.

Checked before a body byte is read: an upload over the cap costs a request head and a 503 (or a
429 for one client's cap), not a thread, buffers and a ``.part`` file (issue 11: 1,000 uncapped
slow uploads held 1,011 threads and 2,021 file descriptors). Counters live on the event loop of
one process; with several workers each has its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mediasvc.errors import TooManyUploads, TooManyUploadsFromClient


class UploadAdmission:
    def __init__(self, *, max_in_flight: int, max_per_client: int, retry_after_s: int) -> None:
        self.max_in_flight = max_in_flight  # 0: no cap
        self.max_per_client = max_per_client  # 0: no cap
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self._per_client: dict[str, int] = {}

    @contextmanager
    def admit(self, client: str | None) -> Iterator[None]:
        """Hold a slot for one upload while the block runs; refuse one over a cap."""
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            raise TooManyUploads(
                f"this server is receiving {self.in_flight} uploads, its limit; try again later",
                retry_after_s=self.retry_after_s,
            )
        key = client if self.max_per_client and client is not None else None
        if key is not None and self._per_client.get(key, 0) >= self.max_per_client:
            raise TooManyUploadsFromClient(
                f"this address has {self.max_per_client} uploads under way, its limit; "
                "try again once one has finished",
                retry_after_s=self.retry_after_s,
            )
        self.in_flight += 1
        if key is not None:
            self._per_client[key] = self._per_client.get(key, 0) + 1
        try:
            yield
        finally:
            self.in_flight -= 1
            if key is not None:
                left = self._per_client.pop(key) - 1
                if left:
                    self._per_client[key] = left
