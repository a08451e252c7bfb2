"""The part file alone (storage/part.py): create, append, finish, commit, discard, and 507s.

No HTTP and no database: a LocalStore on a temporary media root hands the part files out.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from mediasvc.errors import InsufficientStorage
from mediasvc.storage import part as part_module
from mediasvc.storage.direct import ALIGN, aligned_buffer
from mediasvc.storage.local import LocalStore
from mediasvc.storage.part import PartFile

UID = "0123456789abcdefghjkmnpqrs"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    local = LocalStore(tmp_path / "media", fsync=True, min_free_bytes=0)
    local.prepare()
    return local


def files_under(store: LocalStore) -> list[Path]:
    """Every file of the media root but its volume id."""
    return sorted(p for p in store.root.rglob("*") if p.is_file() and p.name != ".volume-id")


def aligned(data: bytes) -> memoryview:
    buffer = aligned_buffer(len(data))
    buffer[:] = data
    return memoryview(buffer)


def test_append_finish_commit_puts_the_bytes_in_place(store: LocalStore) -> None:
    part = store.create_part(UID)
    assert part.path == store.part_path_for(UID) and part.path.exists()
    pieces: list[memoryview | bytes] = [
        aligned(os.urandom(4 * ALIGN)),
        aligned(os.urandom(2 * ALIGN)),
        b"tail-not-aligned",
    ]
    for piece in pieces:
        part.append(piece).result()
    assert part.finish() == sum(len(p) for p in pieces)
    final = part.commit()
    assert final == store.path_for(UID)
    assert final.read_bytes() == b"".join(bytes(p) for p in pieces)
    assert files_under(store) == [final]  # the .part file became the file


def test_discard_before_commit_leaves_nothing(store: LocalStore) -> None:
    part = store.create_part(UID)
    part.append(b"x" * 10_000)
    part.discard()
    part.discard()  # again: harmless
    assert files_under(store) == []


def test_discard_after_commit_removes_the_committed_file(store: LocalStore) -> None:
    # A row that fails to commit after the rename: the file must not stay without one.
    part = store.create_part(UID)
    part.append(b"y" * 5000)
    part.finish()
    part.commit()
    assert files_under(store) == [store.path_for(UID)]
    part.discard()
    assert files_under(store) == []


def test_a_part_file_never_overwrites_one(store: LocalStore) -> None:
    first = store.create_part(UID)
    with pytest.raises(FileExistsError):
        store.create_part(UID)
    first.discard()


def test_a_reservation_beyond_the_data_is_cut_back_at_finish(store: LocalStore) -> None:
    part = store.create_part(UID)
    part.reserve(10 * ALIGN)
    part.append(b"z" * 1234)
    assert part.finish() == 1234
    assert part.path.stat().st_size == 1234


def test_a_tool_written_part_is_made_durable_and_committed(store: LocalStore) -> None:
    part = store.create_part(UID, written_by_tool=True)
    data = os.urandom(70_000)
    part.path.write_bytes(data)  # as ffmpeg writes its output: by the path
    assert part.finish() == len(data)
    assert (
        hashlib.sha256(part.commit().read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    )


# --- the disk is full: 507, and nothing is left -------------------------------------------------


def test_no_room_beside_the_headroom_is_507_for_a_reservation_and_for_appends(
    tmp_path: Path,
) -> None:
    # A headroom larger than the disk: nothing fits, reserved or appended.
    full = LocalStore(tmp_path / "media", fsync=False, min_free_bytes=1 << 60)
    full.prepare()
    part = full.create_part(UID)
    with pytest.raises(InsufficientStorage):
        part.reserve(ALIGN)
    with pytest.raises(InsufficientStorage):
        part.append(b"a" * ALIGN)
    part.discard()
    assert files_under(full) == []


def test_reserved_bytes_need_no_further_headroom_check(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = store.create_part(UID)
    part.reserve(8 * ALIGN)
    if part.path.stat().st_blocks * 512 < 8 * ALIGN:
        part.discard()
        pytest.fail("this filesystem does not allocate ahead: the test needs one that does")
    monkeypatch.setattr(store, "min_free_bytes", 1 << 60)  # no headroom left at all now
    part.append(b"b" * 8 * ALIGN).result()  # within the reservation: written
    with pytest.raises(InsufficientStorage):
        part.append(b"c")  # beyond it: the headroom check refuses
    part.discard()
    assert files_under(store) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_a_full_disk_while_writing_is_507_at_the_next_append_and_at_finish(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    real_write = os.write
    writes = 0

    def write_then_fail(fd: int, data: bytes | memoryview) -> int:
        nonlocal writes
        writes += 1
        if writes > 1:
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write_then_fail)
    part = store.create_part(UID)
    part.append(aligned(b"1" * ALIGN))
    failed = part.append(aligned(b"2" * ALIGN))
    with pytest.raises(InsufficientStorage):
        failed.result()
    with pytest.raises(InsufficientStorage):
        part.append(aligned(b"3" * ALIGN))
    with pytest.raises(InsufficientStorage):
        part.finish()
    assert writes == 2  # nothing was written after the failure
    part.discard()
    assert files_under(store) == []


def no_space(*args: object, **kwargs: object) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    ("step", "patched"),
    [
        ("create", (os, "open")),
        ("reserve", (part_module, "preallocate")),
        ("commit", (os, "replace")),
    ],
    ids=["create (out of inodes)", "reserve", "commit (mkdir, rename)"],
)
def test_a_full_disk_at_each_step_is_507_and_leaves_nothing(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch, step: str, patched: tuple[object, str]
) -> None:
    part = None if step == "create" else store.create_part(UID)
    if part is not None and step == "commit":
        part.append(b"d" * 100)
        part.finish()
    monkeypatch.setattr(*patched, no_space)
    with pytest.raises(InsufficientStorage):
        if part is None:
            store.create_part(UID)
        elif step == "reserve":
            part.reserve(ALIGN)
        else:
            part.commit()
    monkeypatch.undo()
    if part is not None:
        part.discard()
    assert files_under(store) == []


def test_other_errors_stay_what_they_are(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "write", broken)
    part = store.create_part(UID)
    part.append(b"e")  # under a block: staged, written by finish()
    with pytest.raises(OSError) as caught:
        part.finish()
    assert caught.value.errno == errno.EIO
    part.discard()


def test_a_scratch_part_file_without_a_store_is_written_and_discarded(tmp_path: Path) -> None:
    scratch = PartFile(tmp_path / "x.part", fsync=False)
    scratch.append(b"f" * 10)
    assert scratch.finish() == 10
    assert (tmp_path / "x.part").read_bytes() == b"f" * 10
    scratch.discard()
    assert not (tmp_path / "x.part").exists()
