"""The whole file's SHA-256, carried across requests: a hash whose state can be saved.

hashlib's objects cannot be exported, so the state is kept by one of two hashes that write the
same saved form (below), and either reads what the other wrote:

- OpenSSL's low-level SHA-256 (openssl_sha256.py), where libcrypto offers it: it releases the
  GIL and hashes an upload's batch in place, in one call, beside the event loop;
- ``rehashes`` (PySha256, Rust) elsewhere: as fast, but it holds the GIL during ``update`` and
  takes only ``bytes``, so it is fed ``SLICE_BYTES`` slices copied out of the batch and the event
  loop gets the GIL back between two of them (docs/facts.md has both measured).

The saved state, 104 bytes, is the serialized form of the RustCrypto ``sha2`` crate that
``rehashes`` writes, so the states already in the rows stay readable: the eight chaining words
(little-endian u32), the number of whole 64-byte blocks compressed (little-endian u64), the count
of bytes in the block not yet compressed (one byte, 0-63), and those bytes padded with zeros to
63. The same bytes hashed give the same state, whichever hash made it (concat.py compares them).

OpenSSL's is used only once it has passed a check against rehashes and hashlib (``_openssl``);
which one runs is logged once. Neither goes through OpenSSL's providers, so a FIPS-only
configuration does not apply to this digest (it did not with rehashes either). A hash is used by
one thread at a time (the upload's worker thread).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import struct
from typing import Protocol

from rehashes import PySha256

from mediasvc.resumable import openssl_sha256
from mediasvc.resumable.openssl_sha256 import BLOCK_BYTES, DIGEST_BYTES, LibCrypto, Sha256Ctx

logger = logging.getLogger(__name__)

SLICE_BYTES = 256 * 1024
STATE_BYTES = 104
_STATE = struct.Struct("<8IQB63s")


class Sha256State(Protocol):
    def update(self, data: memoryview | bytes) -> None: ...
    def state(self) -> bytes: ...
    def hexdigest(self) -> str: ...


def fresh_state() -> bytes:
    """The state of a hash that has seen nothing."""
    return ResumableSha256().state()


class ResumableSha256:
    def __init__(self, state: bytes | None = None) -> None:
        """Continue from ``state`` (fresh without one)."""
        lib = _openssl()
        self._hash: Sha256State = OpenSslSha256(lib, state) if lib else RehashesSha256(state)

    def update(self, data: memoryview | bytes) -> None:
        self._hash.update(data)

    def state(self) -> bytes:
        return self._hash.state()

    def hexdigest(self) -> str:
        """The digest of what was hashed so far; hashing may go on."""
        return self._hash.hexdigest()


class OpenSslSha256:
    def __init__(self, lib: LibCrypto, state: bytes | None) -> None:
        self._lib = lib
        self._context = Sha256Ctx()
        if state is None:
            lib.init(ctypes.byref(self._context))
        else:
            _load(self._context, state)

    def update(self, data: memoryview | bytes) -> None:
        view = memoryview(data)
        if not view.nbytes:
            return
        if isinstance(data, bytes):
            self._lib.update(ctypes.byref(self._context), data, len(data))
        elif view.readonly or not view.c_contiguous:
            # ctypes takes a pointer to no other read-only buffer: a copy (no caller sends one).
            self._lib.update(ctypes.byref(self._context), view.tobytes(), view.nbytes)
        else:
            in_place = (ctypes.c_char * view.nbytes).from_buffer(view.cast("B"))
            try:
                self._lib.update(ctypes.byref(self._context), in_place, view.nbytes)
            finally:
                del in_place  # release the buffer's export at once (an mmap must stay closable)

    def state(self) -> bytes:
        context = self._context
        # The bit count wraps past 2**64 bits (2 EiB), where SHA-256 itself ends.
        length = ((context.bits_high << 32) | context.bits_low) // 8
        pending = context.block_bytes
        if pending != length % BLOCK_BYTES:
            raise ValueError("libcrypto's SHA-256 context is not in the layout expected")
        return _STATE.pack(
            *context.h, length // BLOCK_BYTES, pending, bytes(context.block)[:pending]
        )

    def hexdigest(self) -> str:
        copy = Sha256Ctx.from_buffer_copy(self._context)  # Final ends the context it is given
        out = ctypes.create_string_buffer(DIGEST_BYTES)
        self._lib.final(out, ctypes.byref(copy))
        return out.raw.hex()


def _load(context: Sha256Ctx, state: bytes) -> None:
    """Fill ``context`` from a saved state; ValueError if it is not one."""
    if len(state) != STATE_BYTES:
        raise ValueError(f"a saved SHA-256 state has {STATE_BYTES} bytes, not {len(state)}")
    *words, blocks, pending, block = _STATE.unpack(state)
    if pending >= BLOCK_BYTES or any(block[pending:]):
        raise ValueError("a saved SHA-256 state with a malformed pending block")
    bits = (blocks * BLOCK_BYTES + pending) * 8
    if bits >> 64:
        raise ValueError("a saved SHA-256 state past the 2**64-bit length SHA-256 allows")
    context.h[:] = words
    context.bits_low, context.bits_high = bits & 0xFFFFFFFF, bits >> 32
    ctypes.memmove(context.block, block, pending)
    context.block_bytes = pending
    context.digest_bytes = DIGEST_BYTES


@functools.cache
def _openssl() -> LibCrypto | None:
    """libcrypto's SHA-256, if it keeps the layout this module reads and writes."""
    lib = openssl_sha256.load()
    if lib is None:
        logger.warning(
            "libcrypto.so.3 with SHA256_Init is not here: resumable uploads hash with rehashes, "
            "which holds the GIL (slower uploads beside a busy event loop)"
        )
        return None
    try:
        agrees = _agrees_with_rehashes(lib)
    except Exception:
        logger.exception("libcrypto's SHA-256 failed its check")
        agrees = False
    if not agrees:
        logger.warning("libcrypto's SHA-256 context is not as expected: hashing with rehashes")
        return None
    logger.info("resumable uploads hash with libcrypto's SHA-256 (the GIL released)")
    return lib


def _agrees_with_rehashes(lib: LibCrypto) -> bool:
    """Both ways on a sample that ends inside a block: the saved states, a state continued by
    the other hash, and the digests against hashlib's."""
    head, tail = bytes(range(256)) * 3 + b"mid-block", b"and the rest" * 11
    ours, theirs = OpenSslSha256(lib, None), RehashesSha256(None)
    ours.update(memoryview(bytearray(head)))
    theirs.update(head)
    if ours.state() != theirs.state():
        return False
    continued = OpenSslSha256(lib, theirs.state())
    continued.update(tail)
    theirs.update(tail)
    whole = hashlib.sha256(head + tail).hexdigest()
    return continued.state() == theirs.state() and continued.hexdigest() == whole == (
        theirs.hexdigest()
    )


class RehashesSha256:
    def __init__(self, state: bytes | None) -> None:
        self._hash = PySha256.deserialize(state) if state is not None else PySha256()

    def update(self, data: memoryview | bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), SLICE_BYTES):
            self._hash.update(bytes(view[start : start + SLICE_BYTES]))

    def state(self) -> bytes:
        state: bytes = self._hash.serialize()
        return state

    def hexdigest(self) -> str:
        digest: str = PySha256.deserialize(self._hash.serialize()).finalize()
        return digest
