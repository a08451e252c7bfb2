"""The embedded bucket on the media root's filesystem holds hard links, not copies (issue 11, 13).

Same filesystem: the bucket's object is the local file's inode (st_nlink 2), verified all the
same; evicting the local copy leaves the object whole, and the watermark eviction knows that
removing such a copy frees nothing. Another filesystem (EXDEV): a copy, as before.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from mediasvc.app import create_app
from mediasvc.config import Settings
from mediasvc.db.models import FileRecord
from mediasvc.jobs.cleanup import cleanup
from mediasvc.jobs.context import JobContext
from mediasvc.jobs.push import push_file
from mediasvc.storage.cloud import key_for
from mediasvc.storage.cloud.local import SHA256_XATTR, TEMP_SUFFIX, LocalCloudStore
from tests.conftest import truncate

KiB = 1024
TMPFS = Path("/dev/shm")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def upload_and_push(
    settings: Settings, client: httpx.AsyncClient, body: bytes
) -> tuple[str, Path, Path]:
    response = await client.post("/api/v1/files/stream", content=body)
    assert response.status_code == 201, response.text
    uid = response.json()["uid"]
    ctx = JobContext.build(settings)
    try:
        assert (await push_file(ctx, uid, attempt=1)).status == "uploaded"
    finally:
        await ctx.db.dispose()
    return uid, settings.media_root / uid[:2] / uid, settings.cloud_root / key_for(uid)


@pytest.fixture
def no_background_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process queue would push every upload at once: these tests push by hand."""

    async def nothing(self: object, kind: object, uid: str) -> bool:
        return False

    monkeypatch.setattr("mediasvc.jobs.queue.InProcessQueue.enqueue", nothing)


@pytest.fixture
def tmpfs_bucket() -> Iterator[Path]:
    """A bucket directory on tmpfs: another filesystem than the media root's."""
    root = TMPFS / f"mediasvc-test-{secrets.token_hex(6)}"
    root.mkdir()
    try:
        yield root / "bucket"
    finally:
        shutil.rmtree(root)


async def test_same_filesystem_push_is_a_hard_link_verified_and_evictable(
    settings: Settings, client: httpx.AsyncClient, no_background_jobs: None
) -> None:
    body = os.urandom(300 * KiB)
    uid, local, obj = await upload_and_push(settings, client, body)

    local_stat, object_stat = local.stat(), obj.stat()
    assert (local_stat.st_dev, local_stat.st_ino) == (object_stat.st_dev, object_stat.st_ino)
    assert object_stat.st_nlink == 2  # one inode, two names: the bytes are on the disk once
    assert [p for p in obj.parent.iterdir() if p.name.endswith(TEMP_SUFFIX)] == []
    ctx = JobContext.build(settings)
    try:
        info = await ctx.cloud.stat(key_for(uid))
        assert info is not None and info.size == len(body)
        assert info.sha256 == hashlib.sha256(body).hexdigest()

        # Evicting the local copy removes one name; the bucket's object stays whole.
        later = datetime.now(UTC) + timedelta(seconds=settings.local_retention_s + 1)
        report = await cleanup(ctx, now=later)
    finally:
        await ctx.db.dispose()
    assert report.evicted == [uid]
    assert not local.exists()
    assert obj.stat().st_nlink == 1
    assert sha256_of(obj) == hashlib.sha256(body).hexdigest()
    response = await client.get(f"/api/v1/files/{uid}", headers={"Range": "bytes=1000-1999"})
    assert response.status_code == 206 and response.content == body[1000:2000]


async def test_a_second_put_of_a_linked_file_leaves_no_temporary_name(tmp_path: Path) -> None:
    # rename() between two links of one inode does nothing: the temp name must be removed.
    source = tmp_path / "file"
    body = os.urandom(64 * KiB)
    source.write_bytes(body)
    store = LocalCloudStore(tmp_path / "bucket", chunk_bytes=16 * KiB)
    key, digest = key_for("twiceput"), hashlib.sha256(body).hexdigest()
    await store.put_file(key, source, size=len(body), sha256=digest)
    await store.put_file(key, source, size=len(body), sha256=digest)
    assert sorted(p.name for p in store.path_for(key).parent.iterdir()) == ["twiceput"]
    assert source.stat().st_nlink == 2


async def test_a_corrupt_local_file_is_never_linked_into_the_bucket(tmp_path: Path) -> None:
    source = tmp_path / "file"
    source.write_bytes(b"x" * 4096)
    store = LocalCloudStore(tmp_path / "bucket", chunk_bytes=1024)
    with pytest.raises(Exception, match="sha256"):
        await store.put_file(key_for("corrupt"), source, size=4096, sha256="0" * 64)
    assert [p for p in (tmp_path / "bucket").rglob("*") if p.is_file()] == []
    assert source.stat().st_nlink == 1


async def test_exdev_at_the_link_falls_back_to_a_verified_copy(
    settings: Settings,
    client: httpx.AsyncClient,
    no_background_jobs: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_link = os.link
    refused: list[str] = []

    def cross_device(source: object, target: object, **kwargs: object) -> None:
        if str(target).startswith(str(settings.cloud_root)):
            refused.append(str(target))
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(source, target, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", cross_device)
    body = os.urandom(200 * KiB)
    _uid, local, obj = await upload_and_push(settings, client, body)
    assert len(refused) == 1
    assert local.stat().st_ino != obj.stat().st_ino
    assert local.stat().st_nlink == 1 and obj.stat().st_nlink == 1
    assert sha256_of(obj) == hashlib.sha256(body).hexdigest()
    assert os.getxattr(obj, SHA256_XATTR).decode() == hashlib.sha256(body).hexdigest()


async def test_bucket_on_tmpfs_gets_a_copy(
    make_settings: Callable[..., Settings], tmpfs_bucket: Path, no_background_jobs: None
) -> None:
    settings = make_settings(cloud_root=tmpfs_bucket)
    await truncate(settings.database_url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = os.urandom(200 * KiB)
            _uid, local, obj = await upload_and_push(settings, client, body)
    assert local.stat().st_dev != obj.stat().st_dev
    assert local.stat().st_nlink == 1 and obj.stat().st_nlink == 1
    assert sha256_of(obj) == hashlib.sha256(body).hexdigest()


async def test_watermark_eviction_skips_copies_that_are_links_of_the_bucket(
    make_settings: Callable[..., Settings],
    no_background_jobs: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Any real disk is above a 1 % watermark; retention is off, so only the watermark evicts.
    settings = make_settings(
        disk_high_watermark=0.01, disk_low_watermark=0.005, local_retention_s=0
    )
    await truncate(settings.database_url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            linked_uid, linked, _ = await upload_and_push(settings, client, os.urandom(64 * KiB))
            real_link = os.link

            def cross_device(source: object, target: object, **kwargs: object) -> None:
                if str(target).startswith(str(settings.cloud_root)):
                    raise OSError(errno.EXDEV, "Invalid cross-device link")
                real_link(source, target, **kwargs)  # type: ignore[arg-type]

            with monkeypatch.context() as patch:
                patch.setattr(os, "link", cross_device)
                copied_uid, copied, _ = await upload_and_push(
                    settings, client, os.urandom(64 * KiB)
                )

    ctx = JobContext.build(settings)
    try:
        assert ctx.store.bytes_freed_by_removing(linked_uid) == 0
        assert ctx.store.bytes_freed_by_removing(copied_uid) >= 64 * KiB
        report = await cleanup(ctx)
        async with ctx.db.session() as session:
            linked_row = await session.get(FileRecord, linked_uid)
            copied_row = await session.get(FileRecord, copied_uid)
    finally:
        await ctx.db.dispose()
    assert report.evicted == [copied_uid]
    assert linked.exists() and not copied.exists()
    assert linked_row is not None and linked_row.local is True
    assert copied_row is not None and copied_row.local is False
