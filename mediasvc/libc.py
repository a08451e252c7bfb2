"""The C library's functions that Python does not wrap (fallocate, malloc_trim, mallopt).

Looked up once, on first use, not at import; each is None where the C library lacks it (musl,
macOS), and its callers then do without.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Sequence
from typing import Any


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)  # the C library this process already uses
    except OSError:
        return None


@functools.cache
def function(name: str, argtypes: Sequence[Any], restype: Any) -> Callable[..., int] | None:
    """The C library's ``name``, typed; None where it has none."""
    libc = _libc()
    found = getattr(libc, name, None) if libc is not None else None
    if found is None:
        return None
    found.argtypes = list(argtypes)
    found.restype = restype
    return found  # type: ignore[no-any-return]


def fallocate() -> Callable[..., int] | None:
    """fallocate(fd, mode, offset, length); errno in ``ctypes.get_errno()``."""
    return function(
        "fallocate", (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64), ctypes.c_int
    )


def malloc_trim() -> Callable[..., int] | None:
    return function("malloc_trim", (ctypes.c_size_t,), ctypes.c_int)


def mallopt() -> Callable[..., int] | None:
    return function("mallopt", (ctypes.c_int, ctypes.c_int), ctypes.c_int)
