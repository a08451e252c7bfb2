"""The resumable SHA-256: OpenSSL's and rehashes' hashes write the same saved state, read each
other's, finish as hashlib does, and OpenSSL's leaves the GIL to other threads while it hashes."""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import random
from collections.abc import Callable

import pytest
from rehashes import PySha256

from mediasvc.resumable import openssl_sha256
from mediasvc.resumable.hashing import (
    OpenSslSha256,
    RehashesSha256,
    ResumableSha256,
    Sha256State,
    fresh_state,
)

MiB = 1024 * 1024


def openssl() -> openssl_sha256.LibCrypto:
    lib = openssl_sha256.load()
    assert lib is not None, "libcrypto.so.3 with SHA256_Init is on every Debian machine"
    return lib


def make_openssl(state: bytes | None) -> Sha256State:
    return OpenSslSha256(openssl(), state)


HASHES: dict[str, Callable[[bytes | None], Sha256State]] = {
    "openssl": make_openssl,
    "rehashes": RehashesSha256,
}


def test_the_service_hashes_with_openssl_here() -> None:
    assert isinstance(ResumableSha256()._hash, OpenSslSha256)


def test_a_fresh_state_is_the_one_rehashes_wrote_in_earlier_rows() -> None:
    assert fresh_state() == PySha256().serialize()


@pytest.mark.parametrize("seed", range(40))
def test_both_hashes_keep_the_same_state_and_continue_each_others(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(0, 5000))
    cuts = sorted(rng.randrange(0, len(data) + 1) for _ in range(4))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    a, b = make_openssl(None), RehashesSha256(None)
    seen = 0
    for piece in pieces:
        kind = rng.randrange(3)  # bytes, a writable buffer, a read-only view
        a.update(piece if kind == 0 else bytearray(piece) if kind == 1 else memoryview(piece))
        b.update(piece)
        seen += len(piece)
        assert a.state() == b.state()
        assert a.hexdigest() == b.hexdigest() == hashlib.sha256(data[:seen]).hexdigest()
        if rng.random() < 0.5:  # a checkpoint read back by the other hash
            a, b = make_openssl(b.state()), RehashesSha256(a.state())
    assert a.hexdigest() == b.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", HASHES)
def test_hexdigest_lets_hashing_go_on(name: str) -> None:
    hasher = HASHES[name](None)
    hasher.update(b"a" * 100)
    assert hasher.hexdigest() == hashlib.sha256(b"a" * 100).hexdigest()
    hasher.update(b"b" * 100)
    assert hasher.hexdigest() == hashlib.sha256(b"a" * 100 + b"b" * 100).hexdigest()


def test_an_mmap_batch_is_hashed_in_place_and_the_mmap_still_closes() -> None:
    batch = mmap.mmap(-1, 4 * MiB)
    batch.write(os.urandom(4 * MiB))
    hasher = make_openssl(None)
    view = memoryview(batch)
    hasher.update(view[:1000])
    hasher.update(view[1000:])
    view.release()
    batch.close()  # would raise BufferError if the hash kept an export
    assert hasher.state() == hasher.state()


@pytest.mark.parametrize(
    "state",
    [
        b"",
        bytes(103),
        bytes(105),
        bytes(40) + bytes([64]) + bytes(63),  # 64 pending bytes: a whole block
        bytes(40) + bytes([2]) + b"ab" + b"c" + bytes(60),  # junk past the pending bytes
    ],
)
@pytest.mark.parametrize("name", HASHES)
def test_a_malformed_state_is_refused(name: str, state: bytes) -> None:
    with pytest.raises(ValueError):
        HASHES[name](state)


def test_without_libcrypto_rehashes_keeps_the_same_states(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(name: str, *args: object, **kwargs: object) -> ctypes.CDLL:
        raise OSError(f"{name}: cannot open shared object file")

    by_openssl = make_openssl(None)
    by_openssl.update(b"x" * 1000)
    openssl_sha256.load.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", missing)
    try:
        hasher = ResumableSha256()
        assert isinstance(hasher._hash, RehashesSha256)
        hasher.update(memoryview(b"x" * 1000))
        assert hasher.state() == by_openssl.state()
    finally:
        openssl_sha256.load.cache_clear()


def test_openssl_is_called_without_the_gil() -> None:
    """ctypes releases the GIL around every call into a ``CDLL`` (its documentation; a ``PyDLL``
    keeps it), so a batch hashed in one call leaves the event loop running. The effect is
    measured in the benchmarks, not timed here."""
    library = openssl().library
    assert isinstance(library, ctypes.CDLL) and not isinstance(library, ctypes.PyDLL)
