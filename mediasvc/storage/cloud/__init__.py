"""Cloud copies of media files: one small protocol, an S3 backend and a local-directory backend.

``make_cloud_store(settings)`` picks the backend; see ``base.CloudStore`` for the contract and
``errors`` for the error tree.
"""

from mediasvc.storage.cloud.base import CloudStore, ObjectInfo, key_for, preview_key_for
from mediasvc.storage.cloud.errors import (
    CloudError,
    CloudIntegrityError,
    CloudObjectMissing,
    CloudUnavailable,
)
from mediasvc.storage.cloud.factory import make_cloud_store

__all__ = [
    "CloudError",
    "CloudIntegrityError",
    "CloudObjectMissing",
    "CloudStore",
    "CloudUnavailable",
    "ObjectInfo",
    "key_for",
    "make_cloud_store",
    "preview_key_for",
]
