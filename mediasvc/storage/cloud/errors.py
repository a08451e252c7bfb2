"""Cloud store errors. Backends translate their client's errors into these at the boundary.

    MediaServiceError
    └── CloudError (502)              a permanent problem: bad credentials, no such bucket, …
        ├── CloudUnavailable (503)    transient: refused, timed out, 5xx, throttled → retry later
        ├── CloudIntegrityError (502) size or sha256 differ from what was promised
        └── CloudObjectMissing (502)  the object is not in the store

``CloudUnavailable`` is also a ``ServiceUnavailable``, so the API's 503 handling covers it.
"""

from __future__ import annotations

from typing import ClassVar

from mediasvc.errors import MediaServiceError, ServiceUnavailable


class CloudError(MediaServiceError):
    status: ClassVar[int] = 502
    title: ClassVar[str] = "Bad Gateway"
    slug: ClassVar[str] = "cloud-error"


class CloudUnavailable(CloudError, ServiceUnavailable):
    status = 503
    title = "Service Unavailable"
    slug = "cloud-unavailable"


class CloudIntegrityError(CloudError):
    slug = "cloud-integrity"


class CloudObjectMissing(CloudError):
    slug = "cloud-object-missing"
