"""What an event says, and the JSON body a webhook carries.

The body follows the Standard Webhooks recommendation::

    {"type": "file.probed", "timestamp": "2026-12-01T14:03:07.123456Z",
     "data": {<the file's metadata as GET /api/v1/files/{uid}/metadata shows it>}}

``data`` is taken when the event is written, in its transaction, so it shows the file as the
change left it; the caller's ``metadata`` is in it. Its URLs are stored as paths and made
absolute with ``public_base_url`` when the body is built (the jobs have no request to take a
host from); without that setting they stay paths.
"""

from __future__ import annotations

import json
from typing import Any

from mediasvc.api.schemas import FileMetadata
from mediasvc.db.models import EventRecord, FileRecord

_URL_FIELDS = ("download_url", "preview_url")


def file_data(record: FileRecord) -> dict[str, Any]:
    """The ``data`` of an event about ``record``: its metadata, URLs as paths."""
    return FileMetadata.from_record(record, base_url="").model_dump(mode="json")


def body(event: EventRecord, *, base_url: str | None) -> str:
    """The JSON text a webhook of ``event`` carries (signed as it is)."""
    data = dict(event.data)
    if base_url:
        for name in _URL_FIELDS:
            if isinstance(data.get(name), str) and data[name].startswith("/"):
                data[name] = base_url.rstrip("/") + data[name]
    envelope = {
        "type": event.type,
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": data,
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
