"""The whole file's SHA-256, carried across requests: a hash whose state can be saved.

hashlib's objects cannot be pickled or exported, so ``rehashes`` (PySha256, Rust) does it: its
``serialize()`` is 104 bytes, saved in the upload's row with every durable offset. Measured here
(docs/facts.md): the same ~1.3–1.9 GB/s as hashlib, but it holds the GIL during ``update`` and
takes only ``bytes``. So it is fed slices of ``SLICE_BYTES`` copied out of the batch: the event
loop gets the GIL back between two slices (a 4 MiB update would stall it ~3 ms) and the copy
costs a memcpy.
"""

from __future__ import annotations

from rehashes import PySha256

SLICE_BYTES = 256 * 1024


def fresh_state() -> bytes:
    """The state of a hash that has seen nothing."""
    state: bytes = PySha256().serialize()
    return state


class ResumableSha256:
    def __init__(self, state: bytes | None = None) -> None:
        self._hash = PySha256.deserialize(state) if state is not None else PySha256()

    def update(self, data: memoryview | bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), SLICE_BYTES):
            self._hash.update(bytes(view[start : start + SLICE_BYTES]))

    def state(self) -> bytes:
        state: bytes = self._hash.serialize()
        return state

    def hexdigest(self) -> str:
        """The digest of what was hashed so far; hashing may go on."""
        digest: str = PySha256.deserialize(self._hash.serialize()).finalize()
        return digest
