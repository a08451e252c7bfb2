"""S3-compatible cloud store (AWS S3, MinIO, …) through obstore.

Why obstore (measured, ``benchmarks/s3_clients.py --size-mib 256 --rounds 5`` against s3rver
on loopback, 8 MiB parts, 4 in flight, interleaved rounds, medians): upload 122 MB/s vs
aiobotocore's 93 MB/s (median per-round ratio 1.11), ranged streaming GET 519 vs 498 MB/s
(ratio 1.03) — the server is the bottleneck for both, so throughput is a tie; client peak RSS
76 MiB vs 141 MiB for the upload (37 vs 81 MiB above the post-import baseline) and 44 vs
62 MiB for the GET. obstore also does the multipart bookkeeping itself (parts, concurrency,
completion, and an abort when the input fails), does ranged streaming GETs, needs no botocore
pin (which fights moto's boto3), and its part checksums work against moto and s3rver.
aiobotocore would need all the multipart calls written by hand. Through this module (1 GiB to
s3rver, defaults: 8 MiB parts, 32 MiB in flight) the process peaks at 66 MiB RSS over a 27 MiB
baseline, uploading at ~95 MB/s and streaming back at ~250 MB/s.

What obstore lacks, and what we do about it:
- No way to list or abort multipart uploads. It aborts by itself when the input iterator
  raises, so we feed it our own iterator; a cancellation of ``put_file`` is turned into such an
  error (``finish_or_wind_down``) instead of dropping the upload mid-flight.
- Its request timeout covers the whole body. Uploads send one part per request; downloads are
  split into GETs of at most ``get_window_bytes``. (A GET body cut short is resumed by obstore
  itself from the offset it reached, within ``max_retries``.)
- At interpreter exit its runtime threads can still be dropping Python objects right after the
  last await, which aborts the process (SIGABRT, seen in about 1 run in 4 without a pause);
  ``close()`` waits ``shutdown_grace_s`` for them.

What is verified (``put_file``):
- Always, on our side: the bytes handed to the client are exactly ``size`` bytes with the
  promised sha256, checked before the upload may complete (``VerifiedChunks``); then a HEAD
  confirms the stored size and the ``sha256`` metadata we attached.
- Objects up to one part: a single PUT with ``x-amz-checksum-sha256`` of the verified bytes, so
  a store that checks it (AWS S3) holds a whole-object SHA-256 that it verified itself.
- Larger objects: multipart, each part carrying its own ``x-amz-checksum-sha256``; the store
  checks every part and keeps a composite checksum. S3 has no whole-object SHA-256 for
  multipart objects, so the whole-object sha256 is ours, stored as ``x-amz-meta-sha256`` and
  returned by ``stat``: the store vouches for each part's bytes, we vouch for their hash.
- Not verified: stores that ignore checksums (moto and s3rver accept a wrong one) check
  nothing; there is no re-read of the stored object.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NoReturn

import anyio.to_thread
import obstore
from obstore.exceptions import BaseError, GenericError, NotFoundError
from obstore.store import S3Store

from mediasvc.storage.cloud._cancel import finish_or_wind_down
from mediasvc.storage.cloud.base import ObjectInfo, check_range, check_sha256
from mediasvc.storage.cloud.errors import (
    CloudError,
    CloudIntegrityError,
    CloudObjectMissing,
    CloudUnavailable,
)
from mediasvc.storage.cloud.sizing import MiB, part_size_for, upload_concurrency_for
from mediasvc.storage.cloud.verified import VerifiedChunks, read_verified

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig
    from obstore.store import S3Config as ObstoreS3Config

SHA256_METADATA = "sha256"  # stored as x-amz-meta-sha256
# obstore raises the builtin FileNotFoundError, not its NotFoundError, for a 404.
_NOT_FOUND = (NotFoundError, FileNotFoundError)
_CLIENT_ERRORS = (BaseError, FileNotFoundError)
_STATUS = re.compile(r"status code: (\d{3})")
_RETRYABLE_4XX = {408, 429}


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Config:
    """Connection and tuning of the S3 backend. Credentials left None come from the AWS_*
    environment variables (or the instance's role)."""

    bucket: str
    endpoint_url: str | None = None  # None: AWS; MinIO or a test server: http://host:port
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    allow_http: bool = False  # plain HTTP, for loopback test servers and a local MinIO
    virtual_hosted_style: bool = False  # bucket.host/key instead of host/bucket/key
    part_size_bytes: int = 8 * MiB  # grows for huge objects, see sizing.part_size_for
    upload_concurrency: int = 4  # parts in flight ...
    upload_buffer_bytes: int = 32 * MiB  # ... lowered so they fit this memory
    read_chunk_bytes: int = 1 * MiB  # upload reads; largest chunk open_range yields
    get_window_bytes: int = 16 * MiB  # largest single ranged GET of open_range
    part_checksums: bool = True  # x-amz-checksum-sha256 on every PUT and part
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 300.0  # one part or one GET window, body included
    max_retries: int = 3  # per request, on connection errors, timeouts and 5xx
    retry_timeout_s: float = 120.0
    abort_grace_s: float = 30.0  # how long a cancelled upload may take to abort
    shutdown_grace_s: float = 0.2


class S3CloudStore:
    """``CloudStore`` on an S3-compatible bucket."""

    def __init__(self, config: S3Config) -> None:
        self.config = config
        self._store = S3Store(
            config.bucket,
            config=_store_config(config),
            client_options=_client_options(config),
            retry_config=_retry_config(config),
        )

    async def put_file(self, key: str, path: Path, *, size: int, sha256: str) -> None:
        check_sha256(sha256)
        try:
            part_size = part_size_for(size, self.config.part_size_bytes)
        except ValueError as exc:
            raise CloudError(f"{key}: {exc}") from exc  # over 5 TiB: no retry will help
        # Opened first, so that a missing local file is an OSError, not a cloud error.
        file = await anyio.to_thread.run_sync(lambda: path.open("rb"))
        try:
            if size <= part_size:
                await self._put_single(key, file, size=size, sha256=sha256)
            else:
                await self._put_multipart(key, file, size=size, sha256=sha256, part_size=part_size)
        except _NOT_FOUND as exc:
            # A PUT creates the key, so a 404 can only mean that the bucket is missing.
            raise CloudError(f"{key}: bucket {self.config.bucket!r} not found") from exc
        except BaseError as exc:
            _raise_translated(exc, key)
        finally:
            file.close()
        await self._confirm(key, size=size, sha256=sha256)

    async def _put_single(self, key: str, file: BinaryIO, *, size: int, sha256: str) -> None:
        # At most one part's worth in memory, as for a multipart part; verified before sending.
        data = await anyio.to_thread.run_sync(lambda: read_verified(file, size=size, sha256=sha256))
        await obstore.put_async(
            self._store, key, data, attributes={SHA256_METADATA: sha256}, use_multipart=False
        )

    async def _put_multipart(
        self, key: str, file: BinaryIO, *, size: int, sha256: str, part_size: int
    ) -> None:
        chunks = VerifiedChunks(
            file, size=size, sha256=sha256, chunk_bytes=self.config.read_chunk_bytes
        )
        concurrency = upload_concurrency_for(
            part_size,
            concurrency=self.config.upload_concurrency,
            buffer_bytes=self.config.upload_buffer_bytes,
        )
        upload = asyncio.ensure_future(
            obstore.put_async(
                self._store,
                key,
                chunks,
                attributes={SHA256_METADATA: sha256},
                use_multipart=True,
                chunk_size=part_size,
                max_concurrency=concurrency,
            )
        )
        await finish_or_wind_down(upload, chunks.abandon, grace_s=self.config.abort_grace_s)

    async def _confirm(self, key: str, *, size: int, sha256: str) -> None:
        info = await self.stat(key)
        if info is not None and info.size == size and info.sha256 == sha256:
            return
        # Never leave an object that claims to be what it is not.
        await self.delete(key)
        raise CloudIntegrityError(f"{key}: the store holds {info}, not {size} bytes / {sha256}")

    async def open_range(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        check_range(start, end)
        limit = self.config.read_chunk_bytes
        position = start
        while position < end:
            window_end = min(end, position + self.config.get_window_bytes)
            request_start = position
            try:
                result = await obstore.get_async(
                    self._store, key, options={"range": (position, window_end)}
                )
                if tuple(result.range) != (position, window_end):
                    raise CloudIntegrityError(
                        f"{key}: asked for bytes [{position}, {window_end}), "
                        f"the store has {result.range}"
                    )
                async for chunk in result.stream(min_chunk_size=limit):
                    view = memoryview(chunk)
                    for offset in range(0, len(view), limit):
                        piece = bytes(view[offset : offset + limit])
                        position += len(piece)
                        yield piece
            except _CLIENT_ERRORS as exc:
                _raise_translated(exc, key)
            # A body that ended early but cleanly: the loop asks again from where it stopped,
            # but only after progress, so it cannot spin.
            if position == request_start:
                raise CloudUnavailable(f"{key}: empty response for [{position}, {window_end})")

    async def reader_url(self, key: str, *, expires_s: float) -> str:
        try:
            # Signed here with the store's credentials (no request is made): whoever holds the
            # URL may GET this one object, with Range, until it expires.
            return await obstore.sign_async(
                self._store, "GET", key, timedelta(seconds=math.ceil(expires_s))
            )
        except BaseError as exc:
            _raise_translated(exc, key)

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            # A HEAD request; unlike head_async it also returns the user metadata.
            result = await obstore.get_async(self._store, key, options={"head": True})
        except _NOT_FOUND:
            # (A missing bucket looks the same to a HEAD; the next put_file will say so.)
            return None
        except BaseError as exc:
            _raise_translated(exc, key)
        return ObjectInfo(size=result.meta["size"], sha256=result.attributes.get(SHA256_METADATA))

    async def delete(self, key: str) -> None:
        try:
            await obstore.delete_async(self._store, key)
        except _NOT_FOUND as exc:
            # S3 deletes of absent keys succeed; a 404 here means the bucket is missing.
            if "NoSuchBucket" in str(exc):
                _raise_translated(exc, key)
        except BaseError as exc:
            _raise_translated(exc, key)

    async def sweep_abandoned(self, *, older_than_s: float) -> int:
        # A killed put leaves an incomplete multipart upload that obstore can neither list nor
        # abort; the bucket's lifecycle rule removes those (README, production topology).
        return 0

    async def close(self) -> None:
        await asyncio.sleep(self.config.shutdown_grace_s)


def _raise_translated(exc: BaseError | FileNotFoundError, key: str) -> NoReturn:
    message = str(exc)
    detail = f"{key}: {message.splitlines()[0] if message else type(exc).__name__}"
    if isinstance(exc, _NOT_FOUND):
        raise CloudObjectMissing(detail) from exc
    if _is_transient(exc):
        raise CloudUnavailable(detail) from exc
    # Permission, credentials, configuration, other 4xx: retrying will not help.
    raise CloudError(detail) from exc


def _is_transient(exc: BaseError | FileNotFoundError) -> bool:
    if not isinstance(exc, GenericError):
        return False
    # obstore reports HTTP failures as text; no status means connection refused or reset, or a
    # timeout. 5xx is server trouble or throttling (503 SlowDown).
    match = _STATUS.search(str(exc))
    status = int(match.group(1)) if match else None
    return status is None or status >= 500 or status in _RETRYABLE_4XX


def _store_config(config: S3Config) -> ObstoreS3Config:
    store_config: ObstoreS3Config = {
        "region": config.region,
        "virtual_hosted_style_request": config.virtual_hosted_style,
    }
    if config.endpoint_url:
        store_config["endpoint"] = config.endpoint_url
    if config.access_key_id is not None:
        store_config["access_key_id"] = config.access_key_id
    if config.secret_access_key is not None:
        store_config["secret_access_key"] = config.secret_access_key
    if config.part_checksums:
        store_config["checksum_algorithm"] = "sha256"
    return store_config


def _client_options(config: S3Config) -> ClientConfig:
    return {
        "allow_http": config.allow_http,
        "connect_timeout": timedelta(seconds=config.connect_timeout_s),
        "timeout": timedelta(seconds=config.request_timeout_s),
    }


def _retry_config(config: S3Config) -> RetryConfig:
    return {
        "max_retries": config.max_retries,
        "retry_timeout": timedelta(seconds=config.retry_timeout_s),
    }
