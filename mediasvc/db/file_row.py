"""What a download needs of a file's row, as plain values (``FileRow``), and what reads it.

The download route's first byte waits on this read, so it is not an ORM object: no identity
map, no instrumented attributes, no JSON columns decoded that a download never looks at
(``mediasvc.db.lookup`` reads it; ``FileRow.of`` makes one of a ``FileRecord`` read the
usual way). The routes that show more of a file (metadata, previews, processing) read the
whole ``FileRecord``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, select

from mediasvc.db.models import FileRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRow:
    uid: str
    original_name: str | None
    format: str
    size: int
    sha256: str
    created_at: datetime
    expires_at: datetime | None
    max_downloads: int | None
    bytes_served: int
    bytes_reserved: int
    owner: str | None
    gone_reason: str | None
    last_accessed_at: datetime | None

    @classmethod
    def of(cls, record: FileRecord) -> FileRow:
        return cls(**{name: getattr(record, name) for name in COLUMNS})


COLUMNS: tuple[str, ...] = tuple(field.name for field in fields(FileRow))


def row_query() -> Select[Any]:
    """``FileRow``'s columns, in ``COLUMNS`` order, of the row whose uid is ``:uid``."""
    table = FileRecord.__table__
    return select(*(table.c[name] for name in COLUMNS)).where(table.c.uid == bindparam("uid"))
