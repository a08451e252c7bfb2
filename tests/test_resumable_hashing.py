"""The resumable SHA-256: OpenSSL's and rehashes' hashes write the same saved state, read each
other's, finish as hashlib does, and OpenSSL's leaves the GIL to other threads while it hashes."""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import mmap
import os
import random
import sys
import threading
from collections.abc import Callable

import pytest
from rehashes import PySha256

from mediasvc.resumable import hashing, openssl_sha256
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


# rehashes 0.3's state after b"mediasvc" * 100, as rows written before OpenSSL's hash hold it.
REHASHES_0_3_STATE = bytes.fromhex(
    "ee75084f0ec3488166e310d108fa2db325bed6ef5c7a85ab19b90df74830058a0c00000000000000206d6564"
    "69617376636d656469617376636d656469617376636d656469617376630000000000000000000000000000"
    "0000000000000000000000000000000000"
)


@pytest.mark.parametrize("name", HASHES)
def test_a_state_written_by_rehashes_0_3_goes_on(name: str) -> None:
    hasher = HASHES[name](REHASHES_0_3_STATE)
    hasher.update(b"!")
    assert hasher.hexdigest() == hashlib.sha256(b"mediasvc" * 100 + b"!").hexdigest()


@pytest.mark.parametrize("blocks", [2**23 - 2, 2**23 - 1, 2**26, 2**26 + 5, 2**40])
@pytest.mark.parametrize("pending", [0, 1, 63])
def test_states_of_large_uploads_agree(blocks: int, pending: int) -> None:
    """Past 512 MiB the bit count's low word wraps (2**23 blocks): states built by hand there,
    continued by both hashes, stay equal."""
    words = random.Random(blocks + pending).getrandbits(256).to_bytes(32, "little")
    tail = bytes(range(1, pending + 1))
    state = words + blocks.to_bytes(8, "little") + bytes([pending]) + tail.ljust(63, b"\0")
    for extra in (b"", b"x", b"y" * (64 - pending), b"z" * 200):
        ours, theirs = make_openssl(state), RehashesSha256(state)
        ours.update(extra)
        theirs.update(extra)
        assert ours.state() == theirs.state()
        assert ours.hexdigest() == theirs.hexdigest()


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
    forget_the_choice()
    monkeypatch.setattr(ctypes, "CDLL", missing)
    try:
        hasher = ResumableSha256()
        assert isinstance(hasher._hash, RehashesSha256)
        hasher.update(memoryview(b"x" * 1000))
        assert hasher.state() == by_openssl.state()
    finally:
        forget_the_choice()


def forget_the_choice() -> None:
    openssl_sha256.load.cache_clear()
    hashing._openssl.cache_clear()


@pytest.mark.parametrize("failure", ["raises", "wrong state"])
def test_a_libcrypto_that_fails_its_check_is_not_used(
    monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    def broken_update(*args: object) -> int:
        if failure == "raises":
            raise RuntimeError("SHA256_Update failed")
        return 1  # hashes nothing: the state stays fresh

    lib = openssl()
    forget_the_choice()
    monkeypatch.setattr(
        openssl_sha256, "load", lambda: dataclasses.replace(lib, update=broken_update)
    )
    try:
        assert isinstance(ResumableSha256()._hash, RehashesSha256)
    finally:
        monkeypatch.undo()
        forget_the_choice()


class GilWitness:
    """A thread hashes one big buffer in one call while this thread asks for the GIL.

    The switch interval is made longer than the call, so a hash that keeps the GIL runs to its
    end before this thread gets it; one that releases it lets this thread mark ``ran`` first."""

    def __init__(self, update: Callable[[memoryview], None], size: int) -> None:
        self._update, self._size = update, size
        self.started, self.ran, self.ran_during = threading.Event(), threading.Event(), False

    def _hash(self) -> None:
        buffer = mmap.mmap(-1, self._size)  # untouched pages: all zeros, nothing resident
        view = memoryview(buffer)
        self.started.set()
        self._update(view)
        self.ran_during = self.ran.is_set()
        view.release()
        buffer.close()

    def run(self) -> bool:
        interval = sys.getswitchinterval()
        sys.setswitchinterval(30.0)
        try:
            worker = threading.Thread(target=self._hash)
            worker.start()
            self.started.wait()
            self.ran.set()  # needs the GIL: only while the worker's call does not hold it
            worker.join()
        finally:
            sys.setswitchinterval(interval)
        return self.ran_during


def test_openssl_leaves_the_gil_while_it_hashes_a_batch() -> None:
    assert GilWitness(make_openssl(None).update, 256 * MiB).run()


def test_the_gil_witness_sees_a_hash_that_keeps_the_gil() -> None:
    """The witness's control: rehashes' own update holds the GIL for its whole call."""
    hasher = PySha256()
    assert not GilWitness(lambda view: hasher.update(bytes(view)), 64 * MiB).run()


def test_openssl_is_called_without_the_gil() -> None:
    """ctypes releases the GIL around every call into a ``CDLL`` (its documentation; a ``PyDLL``
    keeps it), so a batch hashed in one call leaves the event loop running. The effect is
    measured in the benchmarks, not timed here."""
    library = openssl().library
    assert isinstance(library, ctypes.CDLL) and not isinstance(library, ctypes.PyDLL)
