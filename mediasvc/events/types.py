"""The event types (docs/design.md, "Events and imports")."""

from __future__ import annotations

import enum

from mediasvc.db.models import GoneReason


class EventType(enum.StrEnum):
    FILE_CREATED = "file.created"
    FILE_PROBED = "file.probed"
    # Written by the processing jobs (renditions) once they exist: the hook point is here.
    FILE_RENDITION_READY = "file.rendition_ready"
    FILE_PUSHED = "file.pushed"
    FILE_PUSH_FAILED = "file.push_failed"
    FILE_DELETED = "file.deleted"
    FILE_EXPIRED = "file.expired"
    FILE_EXHAUSTED = "file.exhausted"
    # Resumable uploads: created when one is opened, expired when it lapsed unfinished.
    UPLOAD_CREATED = "upload.created"
    UPLOAD_EXPIRED = "upload.expired"


#: The event of a file that became a tombstone for this reason.
GONE_EVENTS = {
    GoneReason.DELETED.value: EventType.FILE_DELETED,
    GoneReason.EXPIRED.value: EventType.FILE_EXPIRED,
    GoneReason.EXHAUSTED.value: EventType.FILE_EXHAUSTED,
}
