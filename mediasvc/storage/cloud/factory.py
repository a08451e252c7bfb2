"""Build the configured cloud store from Settings (the S3 client is imported only if used)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mediasvc.storage.cloud.base import CloudStore
from mediasvc.storage.cloud.local import LocalCloudStore

if TYPE_CHECKING:
    from mediasvc.config import Settings


def make_cloud_store(settings: Settings) -> CloudStore:
    if settings.cloud_backend == "s3":
        from mediasvc.storage.cloud.s3 import S3CloudStore, S3Config

        endpoint = settings.s3_endpoint_url
        return S3CloudStore(
            S3Config(
                bucket=settings.s3_bucket,
                endpoint_url=endpoint,
                region=settings.s3_region,
                access_key_id=settings.s3_access_key_id,
                secret_access_key=settings.s3_secret_access_key,
                # Plain HTTP only when the operator wrote an http:// endpoint.
                allow_http=bool(endpoint and endpoint.startswith("http://")),
                part_size_bytes=settings.s3_part_size_bytes,
                upload_concurrency=settings.s3_concurrency,
                request_timeout_s=settings.s3_timeout_s,
            )
        )
    return LocalCloudStore(
        settings.cloud_root, chunk_bytes=settings.io_chunk_size_bytes, fsync=settings.fsync
    )
