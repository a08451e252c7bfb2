"""The byte sources alone (``delivery.sources``): a local file and a cloud object.

Each: size and mtime, reads of ranges cut into parts of at most ``part_bytes``, what it holds
after ``aclose``. The cloud object against real S3-protocol servers (moto, s3rver), with the
bytes it fetched counted by a proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mediasvc.delivery.locate import CloudCopy, open_source
from mediasvc.delivery.sources import ByteSource, CloudObject, LocalFile
from mediasvc.storage.cloud import CloudObjectMissing
from mediasvc.storage.cloud.local import LocalCloudStore
from mediasvc.storage.cloud.s3 import S3CloudStore, S3Config
from tests.s3servers import S3Bucket, counting_proxy

pytestmark = pytest.mark.timeout(120)

KiB = 1024
MiB = 1024 * KiB
SIZE = 3 * MiB + 123  # not a multiple of any part or chunk
WHEN = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def data() -> bytes:
    return os.urandom(SIZE)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def read_all(source: ByteSource, start: int, end: int, *, part_bytes: int) -> list[bytes]:
    """The parts of ``[start, end)`` in reads of 1 MiB, as the response does."""
    parts: list[bytes] = []
    position = start
    while position < end:
        got = await source.read(
            position, min(MiB, end - position), part_bytes=part_bytes, range_end=end
        )
        if not got:
            break
        parts += got
        position += sum(len(part) for part in got)
    return parts


# --- local file -------------------------------------------------------------------------


@pytest.fixture
def path(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "f"
    path.write_bytes(data)
    os.utime(path, (WHEN.timestamp(), WHEN.timestamp()))
    return path


@pytest.fixture
async def local(path: Path) -> AsyncIterator[LocalFile]:
    source = await LocalFile.open(path)
    yield source
    await source.aclose()


async def test_local_file_size_mtime_and_ranges(local: LocalFile, data: bytes) -> None:
    assert (local.size, local.mtime) == (SIZE, WHEN)
    for start, end in ((0, SIZE), (1, 2), (SIZE - 10, SIZE), (MiB - 1, 2 * MiB + 1)):
        parts = await read_all(local, start, end, part_bytes=256 * KiB)
        assert b"".join(parts) == data[start:end]
        assert max(len(part) for part in parts) <= 256 * KiB


async def test_local_file_reads_nothing_past_its_end(local: LocalFile, data: bytes) -> None:
    assert await local.read(SIZE, 10, part_bytes=MiB, range_end=SIZE + 10) == []
    short = await local.read(SIZE - 5, 10, part_bytes=MiB, range_end=SIZE + 5)
    assert b"".join(short) == data[-5:]


async def test_local_file_opened_before_a_delete_is_read_whole(
    path: Path, local: LocalFile, data: bytes
) -> None:
    await asyncio.to_thread(path.unlink)
    assert b"".join(await read_all(local, 0, SIZE, part_bytes=MiB)) == data


async def test_local_file_close_gives_back_its_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    before = open_fds()
    source = await LocalFile.open(path)
    assert open_fds() == before + 1
    await source.aclose()
    await source.aclose()  # idempotent
    assert open_fds() == before
    with pytest.raises(ValueError):
        await source.read(0, 1, part_bytes=1, range_end=1)


async def test_a_missing_local_file_is_an_error_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await LocalFile.open(tmp_path / "nope")


# --- cloud object -----------------------------------------------------------------------


def s3_store(endpoint: str, bucket: S3Bucket) -> S3CloudStore:
    return S3CloudStore(
        S3Config(
            bucket=bucket.name,
            endpoint_url=endpoint,
            access_key_id=bucket.server.access_key,
            secret_access_key=bucket.server.secret_key,
            allow_http=True,
            read_chunk_bytes=256 * KiB,
            connect_timeout_s=2.0,
            max_retries=1,
            shutdown_grace_s=0.05,
        )
    )


@pytest.fixture(params=["moto", "s3rver"])
def bucket(request: pytest.FixtureRequest) -> S3Bucket:
    bucket: S3Bucket = request.getfixturevalue(f"{request.param}_bucket")
    return bucket


@pytest.fixture
async def stored(tmp_path: Path, data: bytes, bucket: S3Bucket) -> AsyncIterator[str]:
    path = tmp_path / "f"
    path.write_bytes(data)
    store = s3_store(bucket.server.endpoint, bucket)
    try:
        await store.put_file("obj", path, size=SIZE, sha256=hashlib.sha256(data).hexdigest())
    finally:
        await store.close()
    yield "obj"


async def test_cloud_object_size_mtime_and_ranges(
    bucket: S3Bucket, stored: str, data: bytes
) -> None:
    store = s3_store(bucket.server.endpoint, bucket)
    source = CloudObject(store, stored, size=SIZE, mtime=WHEN)
    try:
        assert (source.size, source.mtime) == (SIZE, WHEN)
        for start, end in ((0, SIZE), (SIZE - 10, SIZE), (MiB - 1, 2 * MiB + 1), (5, 6)):
            parts = await read_all(source, start, end, part_bytes=100 * KiB)
            assert b"".join(parts) == data[start:end]
            assert max(len(part) for part in parts) <= 100 * KiB
    finally:
        await source.aclose()
        await store.close()


async def test_cloud_object_fetches_only_the_ranges_it_reads(
    bucket: S3Bucket, stored: str, data: bytes
) -> None:
    async with counting_proxy(bucket.server.port) as proxy:
        store = s3_store(proxy.endpoint, bucket)
        source = CloudObject(store, stored, size=SIZE, mtime=WHEN)
        try:
            proxy.reset()
            tail = await read_all(source, SIZE - 1000, SIZE, part_bytes=MiB)
            assert b"".join(tail) == data[-1000:]
            assert proxy.received_bytes < 1000 + 16 * KiB  # the range and HTTP's framing

            # Reads that follow each other share one GET; the next range opens another.
            proxy.reset()
            head = await read_all(source, 0, 100 * KiB, part_bytes=MiB)
            assert b"".join(head) == data[: 100 * KiB]
            assert proxy.received_bytes < 100 * KiB + 16 * KiB
            await source.aclose()
            await source.aclose()  # idempotent
        finally:
            await source.aclose()
            await store.close()


async def test_cloud_object_missing_is_an_error(bucket: S3Bucket) -> None:
    store = s3_store(bucket.server.endpoint, bucket)
    source = CloudObject(store, "nope", size=10, mtime=WHEN)
    try:
        with pytest.raises(CloudObjectMissing):
            await source.read(0, 10, part_bytes=10, range_end=10)
    finally:
        await source.aclose()
        await store.close()


# --- where the bytes come from (delivery.locate) ----------------------------------------


async def test_the_disk_wins_and_the_cloud_is_asked_only_without_it(
    tmp_path: Path, data: bytes
) -> None:
    bucket_root = tmp_path / "bucket"
    cloud = LocalCloudStore(bucket_root, chunk_bytes=64 * KiB)
    path = tmp_path / "f"
    path.write_bytes(data)
    await cloud.put_file("key", path, size=SIZE, sha256=hashlib.sha256(data).hexdigest())
    asked: list[str] = []

    async def cloud_copy() -> CloudCopy:
        asked.append("cloud")
        return CloudCopy(key="key", size=SIZE, mtime=WHEN)

    local = await open_source(path, cloud, cloud_copy)
    assert isinstance(local, LocalFile) and asked == []
    await local.aclose()

    await asyncio.to_thread(path.unlink)
    remote = await open_source(path, cloud, cloud_copy)
    try:
        assert isinstance(remote, CloudObject) and asked == ["cloud"]
        assert b"".join(await read_all(remote, 0, SIZE, part_bytes=MiB)) == data
    finally:
        await remote.aclose()
