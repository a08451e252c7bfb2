"""OpenSSL's low-level SHA-256 (``SHA256_Init``/``Update``/``Final``) through ctypes.

Written by hand because no library offers a SHA-256 whose state can be saved and that releases
the GIL: hashlib's objects cannot be exported, and ``rehashes`` holds the GIL for the whole
``update``, which starved the event loop beside an upload's hashing (docs/facts.md). ctypes
releases the GIL around every foreign call, and takes a writable buffer without a copy, so an
upload's batch is hashed in one call while the event loop runs beside it.

The state lives in ``SHA256_CTX``, a public struct of ``openssl/sha.h``; these functions are
deprecated since OpenSSL 3.0 but still exported by its ``libcrypto.so.3``. ``load()`` answers
None where they are missing (another OpenSSL, another system), and hashing.py then falls back.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from dataclasses import dataclass
from typing import Any

DIGEST_BYTES = 32
BLOCK_BYTES = 64


class Sha256Ctx(ctypes.Structure):
    """``SHA256_CTX``: the chaining words, the bit count, and the block not yet compressed."""

    _fields_ = (
        ("h", ctypes.c_uint32 * 8),
        ("bits_low", ctypes.c_uint32),  # Nl
        ("bits_high", ctypes.c_uint32),  # Nh
        ("block", ctypes.c_uint8 * BLOCK_BYTES),  # data[16], used as bytes in order
        ("block_bytes", ctypes.c_uint32),  # num: how many bytes of ``block`` are filled
        ("digest_bytes", ctypes.c_uint32),  # md_len: 32 for SHA-256 (28 would be SHA-224)
    )


@dataclass(frozen=True, slots=True)
class LibCrypto:
    library: ctypes.CDLL  # a CDLL, not a PyDLL: ctypes releases the GIL around each call
    init: Any
    update: Any
    final: Any


@functools.cache
def load() -> LibCrypto | None:
    """libcrypto's three functions, typed; None where they cannot be had. Whether they keep
    the layout above is for the caller to check before trusting them (hashing.py does)."""
    if sys.platform != "linux":
        # macOS refuses (aborts the process) to load an unversioned libcrypto; only the
        # versioned soname of Linux distributions is asked for.
        return None
    try:
        library = ctypes.CDLL("libcrypto.so.3")
        init, update, final = library.SHA256_Init, library.SHA256_Update, library.SHA256_Final
    except (OSError, AttributeError):
        return None
    context = ctypes.POINTER(Sha256Ctx)
    init.argtypes, init.restype = [context], ctypes.c_int
    update.argtypes, update.restype = [context, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_int
    final.argtypes, final.restype = [ctypes.c_char_p, context], ctypes.c_int
    # OpenSSL 3 answers 1 from all three (0 only from Final on a context that is not SHA-256).
    # Update is not checked: an exception's traceback would keep the caller's buffer exported.
    init.errcheck = final.errcheck = _succeeded
    return LibCrypto(library, init, update, final)


def _succeeded(result: Any, function: Any, arguments: Any) -> Any:
    if result != 1:
        raise RuntimeError(f"libcrypto's {function.__name__} failed")
    return result
