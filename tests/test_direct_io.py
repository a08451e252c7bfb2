"""storage/direct.py and the blob above it: every byte kept, in order, whatever the alignment
or the failure."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mediasvc.config import Settings
from mediasvc.ingest.sink import FileSink
from mediasvc.storage import direct
from mediasvc.storage.direct import ALIGN, STAGE_BYTES, AppendOnlyFile, aligned_buffer
from mediasvc.storage.part import PartFile


def aligned_piece(data: bytes) -> memoryview:
    buffer = aligned_buffer(max(len(data), 1))
    buffer[: len(data)] = data
    return memoryview(buffer)[: len(data)]


# (size, aligned?) pieces: sizes around the block and stage sizes, aligned mmap views or bytes.
pieces = st.lists(
    st.tuples(
        st.one_of(
            st.integers(0, 3 * ALIGN),
            st.sampled_from([ALIGN, 2 * ALIGN, STAGE_BYTES, STAGE_BYTES + 1, STAGE_BYTES - 7]),
        ),
        st.booleans(),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(pieces)
def test_whatever_the_pieces_the_file_holds_them_in_order(
    tmp_path_factory: pytest.TempPathFactory, plan: list[tuple[int, bool]]
) -> None:
    path = tmp_path_factory.mktemp("direct") / "x.part"
    file = AppendOnlyFile(path, direct=True)
    expected = bytearray()
    try:
        for i, (size, aligned) in enumerate(plan):
            data = bytes([i % 251]) * size
            expected += data
            file.write(aligned_piece(data) if aligned else data)
        file.flush()
        os.fsync(file.fd)
    finally:
        file.close()
    assert path.read_bytes() == expected


def test_aligned_buffers_are_written_without_staging(tmp_path: Path) -> None:
    file = AppendOnlyFile(tmp_path / "x.part", direct=True)
    try:
        assert file.direct, "the test directory's filesystem refused O_DIRECT"
        file.write(aligned_piece(b"a" * STAGE_BYTES))
        assert file._staged == 0
        file.write(b"tail")
        assert file._staged == 4
        file.flush()
        assert not file.direct  # the unaligned tail went through the page cache
    finally:
        file.close()
    assert (tmp_path / "x.part").read_bytes() == b"a" * STAGE_BYTES + b"tail"


def test_a_filesystem_without_direct_io_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mocked: every filesystem on this machine accepts O_DIRECT (tmpfs too, since Linux 6.6).
    real_fcntl = fcntl.fcntl

    def refusing_fcntl(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(direct.fcntl, "fcntl", refusing_fcntl)
    file = AppendOnlyFile(tmp_path / "x.part", direct=True)
    try:
        assert not file.direct
        file.write(aligned_piece(b"b" * ALIGN))
        file.write(b"c" * 10)
        file.flush()
    finally:
        file.close()
    assert (tmp_path / "x.part").read_bytes() == b"b" * ALIGN + b"c" * 10


def test_a_direct_write_refused_midway_continues_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mocked: some filesystems accept the flag and refuse the writes (EINVAL); none does here.
    real_write = os.write
    refused = []

    def refusing_write(fd: int, data: memoryview) -> int:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if flags & os.O_DIRECT and not refused:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct.os, "write", refusing_write)
    file = AppendOnlyFile(tmp_path / "x.part", direct=True)
    data = os.urandom(3 * STAGE_BYTES + 123)
    try:
        file.write(aligned_piece(data[:STAGE_BYTES]))
        file.write(data[STAGE_BYTES:])
        file.flush()
        assert not file.direct
    finally:
        file.close()
    assert refused
    assert (tmp_path / "x.part").read_bytes() == data


def test_other_write_errors_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    file = AppendOnlyFile(tmp_path / "x.part", direct=True)
    monkeypatch.setattr(direct.os, "write", full_disk)
    try:
        with pytest.raises(OSError) as raised:
            file.write(aligned_piece(b"d" * ALIGN))
        assert raised.value.errno == errno.ENOSPC
    finally:
        file.close()


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "x.part").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        AppendOnlyFile(tmp_path / "x.part", direct=True)
    assert (tmp_path / "x.part").read_bytes() == b"keep"


def test_the_file_is_removed_if_the_staging_buffer_cannot_be_had(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memory(size: int) -> mmap.mmap:
        raise MemoryError

    monkeypatch.setattr(direct, "aligned_buffer", no_memory)
    with pytest.raises(MemoryError):
        AppendOnlyFile(tmp_path / "x.part", direct=True)
    assert not (tmp_path / "x.part").exists()


# --- FileSink: hash in the caller, write one batch behind -------------------------------------


def test_a_failed_write_stops_every_later_one_and_surfaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any exception, not only OSError: after it no write may run (the file would have a hole)
    # nor read a buffer its caller already got back.
    real_write = AppendOnlyFile.write
    calls = []

    def failing_second_write(self: AppendOnlyFile, data: memoryview | bytes) -> None:
        calls.append(len(data))
        if len(calls) == 2:
            raise ValueError("boom")
        real_write(self, data)

    monkeypatch.setattr(AppendOnlyFile, "write", failing_second_write)
    blob = FileSink(PartFile(tmp_path / "x.part", fsync=False), max_size_bytes=0)
    try:
        first = blob.write(aligned_piece(b"a" * ALIGN))
        with pytest.raises(ValueError, match="boom"):
            blob.write(aligned_piece(b"b" * ALIGN))  # waits for the first, queues the second
            blob.write(aligned_piece(b"c" * ALIGN))  # raises: the second failed
        with pytest.raises(ValueError, match="boom"):
            blob.write(b"d")
        with pytest.raises(ValueError, match="boom"):
            blob.finish()
        assert first.done()
        assert calls == [ALIGN, ALIGN]  # the third batch was never written
    finally:
        blob.discard()
    assert not (tmp_path / "x.part").exists()


def test_upload_batches_must_be_whole_blocks() -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, io_chunk_size_bytes=5000)  # type: ignore[call-arg]
    assert Settings(_env_file=None, io_chunk_size_bytes=8192).io_chunk_size_bytes == 8192  # type: ignore[call-arg]


# --- a resumable upload's file: synced mid-way, reopened at an offset ---------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3 * ALIGN + 5), st.integers(0, 100), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_synced_and_reopened_at_any_offset_the_file_holds_every_byte_in_order(
    tmp_path_factory: pytest.TempPathFactory, plan: list[tuple[int, int, bool]]
) -> None:
    """Each step appends, syncs (a checkpoint), appends some more that a "crash" loses, and
    reopens at the checkpoint: the file is the checkpointed bytes, the lost ones cut off."""
    path = tmp_path_factory.mktemp("resume") / "x.upload"
    AppendOnlyFile(path, direct=True).close()
    expected = b""
    for step, (size, lost, aligned) in enumerate(plan):
        file = AppendOnlyFile(path, direct=True, resume_at=len(expected))
        try:
            assert file.direct, "the test directory's filesystem refused O_DIRECT"
            data = bytes([step % 251 + 1]) * size
            file.write(aligned_piece(data) if aligned else data)
            file.sync()
            assert file.direct  # a checkpoint does not leave direct I/O
            expected += data
            file.write(b"\xee" * lost)  # after the checkpoint: a crash may keep any of it
            file.flush()
        finally:
            file.close()
    file = AppendOnlyFile(path, direct=True, resume_at=len(expected))
    file.close()
    assert path.read_bytes() == expected
