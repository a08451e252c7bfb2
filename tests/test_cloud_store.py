"""The cloud store backends against real servers: moto (small objects), s3rver (large ones)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from mediasvc.storage.cloud import (
    CloudError,
    CloudIntegrityError,
    CloudObjectMissing,
    CloudStore,
    CloudUnavailable,
    ObjectInfo,
    key_for,
)
from mediasvc.storage.cloud.local import LocalCloudStore
from mediasvc.storage.cloud.s3 import S3CloudStore, S3Config
from mediasvc.storage.cloud.sizing import (
    MAX_PART_SIZE_BYTES,
    MAX_PARTS,
    GiB,
    MiB,
    TiB,
    part_size_for,
    upload_concurrency_for,
)
from tests.conftest import free_port
from tests.s3servers import S3Bucket, counting_proxy

pytestmark = pytest.mark.timeout(120)

KiB = 1024
CHUNK_BYTES = 256 * KiB
PART_BYTES = 5 * MiB
BIG_OBJECT_BYTES = 64 * MiB


@dataclass
class Backend:
    name: str
    store: CloudStore
    bucket: S3Bucket | None = None  # S3 only: the bucket seen from outside
    root: Path | None = None  # local only

    def leftovers(self) -> list[str]:
        """Everything in the bucket: objects, incomplete multipart uploads, temporary files."""
        if self.bucket is not None:
            return self.bucket.object_keys() + [
                f"upload:{k}" for k in self.bucket.multipart_uploads()
            ]
        assert self.root is not None
        return [str(p) for p in self.root.rglob("*") if p.is_file()]


def s3_config(endpoint: str, bucket: S3Bucket, **overrides: Any) -> S3Config:
    config = S3Config(
        bucket=bucket.name,
        endpoint_url=endpoint,
        access_key_id=bucket.server.access_key,
        secret_access_key=bucket.server.secret_key,
        allow_http=True,
        part_size_bytes=PART_BYTES,
        read_chunk_bytes=CHUNK_BYTES,
        connect_timeout_s=2.0,
        request_timeout_s=60.0,
        max_retries=1,
        retry_timeout_s=10.0,
        shutdown_grace_s=0.05,
    )
    return replace(config, **overrides)


@pytest.fixture(params=["local", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "local":
        root = tmp_path / "bucket"
        yield Backend("local", LocalCloudStore(root, chunk_bytes=CHUNK_BYTES), root=root)
        return
    bucket: S3Bucket = request.getfixturevalue("moto_bucket")
    store = S3CloudStore(s3_config(bucket.server.endpoint, bucket))
    yield Backend("s3", store, bucket=bucket)
    await store.close()


def write_random(path: Path, size: int) -> str:
    """A file of random bytes, written in chunks; returns its sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def file_slice(path: Path, start: int, end: int) -> bytes:
    with path.open("rb") as f:
        f.seek(start)
        return f.read(end - start)


async def read_range(store: CloudStore, key: str, start: int, end: int) -> tuple[bytes, int]:
    """The bytes of a range, and the largest chunk the store yielded."""
    chunks = [chunk async for chunk in store.open_range(key, start, end)]
    return b"".join(chunks), max((len(c) for c in chunks), default=0)


async def sha256_of_object(store: CloudStore, key: str, size: int) -> str:
    digest = hashlib.sha256()
    async for chunk in store.open_range(key, 0, size):
        digest.update(chunk)
    return digest.hexdigest()


async def test_put_then_stat_and_read_back_byte_exact(backend: Backend, tmp_path: Path) -> None:
    size = 300 * KiB + 7
    source = tmp_path / "source"
    sha256 = write_random(source, size)
    key = key_for("abcdef0123")

    await backend.store.put_file(key, source, size=size, sha256=sha256)

    info = await backend.store.stat(key)
    assert info is not None
    assert (info.size, info.sha256) == (size, sha256)
    assert await sha256_of_object(backend.store, key, size) == sha256
    for start, end in [(0, 1), (size - 1, size), (1000, 200_000), (0, size), (5, 5)]:
        data, largest_chunk = await read_range(backend.store, key, start, end)
        assert data == file_slice(source, start, end), (start, end)
        assert largest_chunk <= CHUNK_BYTES


async def test_put_replaces_an_existing_object(backend: Backend, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first_sha256 = write_random(first, 1000)
    sha256 = write_random(second, 2000)
    key = key_for("replaced01")

    await backend.store.put_file(key, first, size=1000, sha256=first_sha256)
    await backend.store.put_file(key, second, size=2000, sha256=sha256)

    assert await backend.store.stat(key) == ObjectInfo(size=2000, sha256=sha256)
    assert await sha256_of_object(backend.store, key, 2000) == sha256


async def test_zero_byte_object(backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "empty"
    source.touch()
    key = key_for("empty00001")

    await backend.store.put_file(key, source, size=0, sha256=hashlib.sha256().hexdigest())

    info = await backend.store.stat(key)
    assert info is not None and info.size == 0
    assert await read_range(backend.store, key, 0, 0) == (b"", 0)


async def test_multipart_upload_is_complete_and_verified(
    moto_bucket: S3Bucket, tmp_path: Path
) -> None:
    size = 12 * MiB  # over the 5 MiB part size: three parts
    source = tmp_path / "source"
    sha256 = write_random(source, size)
    key = key_for("multipart1")
    store = S3CloudStore(s3_config(moto_bucket.server.endpoint, moto_bucket))
    try:
        await store.put_file(key, source, size=size, sha256=sha256)

        head = moto_bucket.admin.head_object(
            Bucket=moto_bucket.name, Key=key, ChecksumMode="ENABLED"
        )
        assert head["ETag"].strip('"').endswith("-3")  # S3's mark of a 3-part upload
        assert head["ContentLength"] == size
        assert head["Metadata"] == {"sha256": sha256}
        assert head.get("ChecksumSHA256")  # the parts carried SHA-256 checksums
        assert moto_bucket.multipart_uploads() == []
        assert await sha256_of_object(store, key, size) == sha256
        data, _ = await read_range(store, key, PART_BYTES - 10, PART_BYTES + 10)
        assert data == file_slice(source, PART_BYTES - 10, PART_BYTES + 10)
    finally:
        await store.close()


@pytest.mark.parametrize("size", [100 * KiB, 12 * MiB], ids=["single-put", "multipart"])
@pytest.mark.parametrize("wrong", ["sha256", "size"])
async def test_integrity_mismatch_leaves_nothing_behind(
    backend: Backend, tmp_path: Path, size: int, wrong: str
) -> None:
    source = tmp_path / "source"
    sha256 = write_random(source, size)
    claimed_sha256 = hashlib.sha256(b"something else").hexdigest() if wrong == "sha256" else sha256
    claimed_size = size + 1 if wrong == "size" else size
    key = key_for("mismatch01")

    with pytest.raises(CloudIntegrityError):
        await backend.store.put_file(key, source, size=claimed_size, sha256=claimed_sha256)

    assert await backend.store.stat(key) is None
    assert backend.leftovers() == []


async def test_cancelled_multipart_upload_is_aborted(moto_bucket: S3Bucket, tmp_path: Path) -> None:
    size = 12 * MiB
    source = tmp_path / "source"
    sha256 = write_random(source, size)
    key = key_for("cancelled1")
    # Slow the upload (~6 MB/s) and send one part at a time, so we cancel mid-upload.
    async with counting_proxy(moto_bucket.server.port, upload_delay_s=0.01) as proxy:
        store = S3CloudStore(s3_config(proxy.endpoint, moto_bucket, upload_concurrency=1))
        try:
            upload = asyncio.ensure_future(store.put_file(key, source, size=size, sha256=sha256))
            await poll(lambda: asyncio.to_thread(moto_bucket.multipart_uploads), until=bool)
            assert not upload.done()

            upload.cancel()
            with pytest.raises(asyncio.CancelledError):
                await upload

            assert moto_bucket.multipart_uploads() == []
            assert moto_bucket.object_keys() == []
        finally:
            await store.close()


async def test_cancelled_local_copy_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    store = LocalCloudStore(root, chunk_bytes=CHUNK_BYTES)
    source = tmp_path / "fifo"
    os.mkfifo(source)  # the copy waits on us for every byte: cancelled mid-copy for sure
    copy = asyncio.ensure_future(
        store.put_file(key_for("cancelled2"), source, size=10 * MiB, sha256="0" * 64)
    )
    writer = await asyncio.to_thread(os.open, source, os.O_WRONLY)  # once the copy opened it
    try:
        await asyncio.to_thread(os.write, writer, b"x" * 64 * KiB)
        copy.cancel()
    finally:
        os.close(writer)

    with pytest.raises(asyncio.CancelledError):
        await copy
    assert [p for p in root.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("where", ["end", "middle"])
@pytest.mark.parametrize("big_backend", ["local", "s3rver"])
async def test_ranged_read_fetches_only_the_range(
    request: pytest.FixtureRequest, tmp_path: Path, big_backend: str, where: str
) -> None:
    source = tmp_path / "big"
    sha256 = write_random(source, BIG_OBJECT_BYTES)
    key = key_for("bigobject1")
    start = BIG_OBJECT_BYTES - MiB if where == "end" else BIG_OBJECT_BYTES // 2 + 12_345
    end = start + MiB

    if big_backend == "local":
        store: CloudStore = LocalCloudStore(tmp_path / "bucket", chunk_bytes=CHUNK_BYTES)
        await store.put_file(key, source, size=BIG_OBJECT_BYTES, sha256=sha256)
        before = process_bytes_read()
        data, _ = await read_range(store, key, start, end)
        fetched = process_bytes_read() - before
    else:
        bucket: S3Bucket = request.getfixturevalue("s3rver_bucket")
        async with counting_proxy(bucket.server.port) as proxy:
            store = S3CloudStore(s3_config(proxy.endpoint, bucket, part_size_bytes=8 * MiB))
            try:
                await store.put_file(key, source, size=BIG_OBJECT_BYTES, sha256=sha256)
                proxy.reset()
                data, _ = await read_range(store, key, start, end)
                fetched = proxy.received_bytes
            finally:
                await store.close()

    assert data == file_slice(source, start, end)
    # The range itself plus HTTP headers (or a few small reads of our own process).
    assert MiB <= fetched <= MiB + 64 * KiB, fetched


async def test_ranged_read_cut_mid_body_resumes_byte_exact(
    moto_bucket: S3Bucket, tmp_path: Path
) -> None:
    size = 3 * MiB
    source = tmp_path / "source"
    sha256 = write_random(source, size)
    key = key_for("resumed001")
    async with counting_proxy(moto_bucket.server.port) as proxy:
        store = S3CloudStore(s3_config(proxy.endpoint, moto_bucket))
        try:
            await store.put_file(key, source, size=size, sha256=sha256)
            proxy.reset()
            proxy.cut_after_received_bytes = MiB

            data, _ = await read_range(store, key, 100, size - 100)

            assert proxy.cuts == 1
            assert data == file_slice(source, 100, size - 100)
            # Resumed where it stopped: no byte fetched twice beyond one socket read's worth.
            assert proxy.received_bytes <= size + 128 * KiB
        finally:
            await store.close()


async def test_long_range_is_fetched_in_windows_byte_exact(
    moto_bucket: S3Bucket, tmp_path: Path
) -> None:
    size = 3 * MiB + 5
    source = tmp_path / "source"
    sha256 = write_random(source, size)
    key = key_for("windowed01")
    async with counting_proxy(moto_bucket.server.port) as proxy:
        config = s3_config(proxy.endpoint, moto_bucket, get_window_bytes=MiB)
        store = S3CloudStore(config)
        try:
            await store.put_file(key, source, size=size, sha256=sha256)
            proxy.reset()

            data, largest_chunk = await read_range(store, key, 7, size)

            assert data == file_slice(source, 7, size)
            assert largest_chunk <= CHUNK_BYTES
            # Four ranged GETs of about 1 MiB each: the range plus four responses' headers.
            assert size - 7 <= proxy.received_bytes <= size + 16 * KiB
        finally:
            await store.close()


async def test_put_over_five_tib_is_a_permanent_error(tmp_path: Path) -> None:
    store = S3CloudStore(S3Config(bucket="b", endpoint_url="http://127.0.0.1:9", allow_http=True))
    with pytest.raises(CloudError) as caught:
        await store.put_file(
            key_for("huge000001"), tmp_path / "x", size=5 * TiB + 1, sha256="0" * 64
        )
    assert not isinstance(caught.value, CloudUnavailable)


async def test_range_past_the_end_is_an_integrity_error(backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "source"
    sha256 = write_random(source, 1000)
    key = key_for("shortobj01")
    await backend.store.put_file(key, source, size=1000, sha256=sha256)

    with pytest.raises(CloudIntegrityError):
        await read_range(backend.store, key, 500, 2000)


async def test_missing_object(backend: Backend) -> None:
    key = key_for("nothere001")

    assert await backend.store.stat(key) is None
    with pytest.raises(CloudObjectMissing):
        await read_range(backend.store, key, 0, 10)


async def test_delete_is_idempotent(backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "source"
    sha256 = write_random(source, 1000)
    key = key_for("deleteme01")
    await backend.store.put_file(key, source, size=1000, sha256=sha256)

    await backend.store.delete(key)
    await backend.store.delete(key)
    await backend.store.delete(key_for("neverthere"))

    assert await backend.store.stat(key) is None
    assert backend.leftovers() == []


async def test_missing_local_source_is_an_oserror(backend: Backend, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await backend.store.put_file(
            key_for("nosource01"), tmp_path / "absent", size=1, sha256="0" * 64
        )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("size", [10, 12 * MiB], ids=["single-put", "multipart"])
async def test_unreachable_store_is_unavailable(tmp_path: Path, size: int) -> None:
    port = free_port()  # a port nobody listens on
    source = tmp_path / "source"
    sha256 = write_random(source, size)
    config = S3Config(
        bucket="b",
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key_id="a",
        secret_access_key="b",
        allow_http=True,
        part_size_bytes=PART_BYTES,
        connect_timeout_s=1.0,
        request_timeout_s=2.0,
        max_retries=0,
        shutdown_grace_s=0.05,
    )
    store = S3CloudStore(config)
    key = key_for("unreach001")
    try:
        with pytest.raises(CloudUnavailable):
            await store.put_file(key, source, size=size, sha256=sha256)
        with pytest.raises(CloudUnavailable):
            await store.stat(key)
        with pytest.raises(CloudUnavailable):
            await read_range(store, key, 0, 10)
        with pytest.raises(CloudUnavailable):
            await store.delete(key)
    finally:
        await store.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("status", "error"),
    [(503, CloudUnavailable), (500, CloudUnavailable), (403, CloudError), (400, CloudError)],
)
async def test_http_errors_are_sorted_into_transient_and_permanent(
    status: int, error: type[CloudError]
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"<Error><Code>SlowDown</Code><Message>no</Message></Error>"
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = S3Config(
        bucket="b",
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key_id="a",
        secret_access_key="b",
        allow_http=True,
        max_retries=0,
        shutdown_grace_s=0.05,
    )
    store = S3CloudStore(config)
    try:
        with pytest.raises(error) as caught:
            await read_range(store, key_for("status0001"), 0, 10)
        assert isinstance(caught.value, CloudUnavailable) == (error is CloudUnavailable)
    finally:
        await store.close()
        server.close()
        await server.wait_closed()


def test_part_size_stays_at_the_setting_for_ordinary_objects() -> None:
    assert part_size_for(0, 8 * MiB) == 8 * MiB
    assert part_size_for(40 * GiB, 8 * MiB) == 8 * MiB  # 5,120 parts


def test_part_size_grows_so_five_tib_fits_in_ten_thousand_parts() -> None:
    size = 5 * TiB
    part = part_size_for(size, 5 * MiB)
    assert -(-size // part) <= MAX_PARTS
    assert part <= MAX_PART_SIZE_BYTES
    assert part_size_for(100 * GiB, 5 * MiB) == -(-100 * GiB // MAX_PARTS)


def test_part_size_refuses_objects_over_five_tib() -> None:
    with pytest.raises(ValueError):
        part_size_for(5 * TiB + 1, 5 * MiB)


def test_upload_concurrency_shrinks_as_parts_grow() -> None:
    assert upload_concurrency_for(8 * MiB, concurrency=4, buffer_bytes=64 * MiB) == 4
    assert upload_concurrency_for(32 * MiB, concurrency=4, buffer_bytes=64 * MiB) == 2
    assert upload_concurrency_for(550 * MiB, concurrency=4, buffer_bytes=64 * MiB) == 1


def test_key_for_fans_out_by_uid_prefix() -> None:
    assert key_for("abcdef") == "media/ab/abcdef"
    for bad in ["", "a/b", ".."]:
        with pytest.raises(ValueError):
            key_for(bad)


def test_local_store_refuses_keys_outside_its_root(tmp_path: Path) -> None:
    store = LocalCloudStore(tmp_path)
    for bad in ["../x", "/etc/passwd", "a//b", "a/./b", ""]:
        with pytest.raises(ValueError):
            store.path_for(bad)


def process_bytes_read() -> int:
    """Bytes this process has read through read(2)/pread(2) so far, all threads together."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


async def poll(
    probe: Callable[[], Awaitable[Any]], *, until: Callable[[Any], bool], timeout_s: float = 30
) -> Any:
    """Probe until ``until(result)`` holds; fail after ``timeout_s`` (no fixed sleeps)."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = await probe()
            if until(result):
                return result
            await asyncio.sleep(0.02)
