"""Top-level boxes ("atoms") of an ISO-BMFF file (MP4, MOV): does ``moov`` come before ``mdat``?

A player reads an MP4 from the front; when the ``moov`` box (the index) follows ``mdat`` (the
media), it cannot start until it has fetched the end of the file: what "faststart" fixes.
ffprobe does not report the order, so we walk the top-level boxes ourselves, reading only
their 8- or 16-byte headers and seeking over their bodies: two small reads per box, whatever
the file's size, and an exact answer. The walk also notices a file cut short (a box that
claims more bytes than the file has).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

MAX_TOP_LEVEL_BOXES = 1024
HEADER_BYTES = 8
LARGE_SIZE_BYTES = 8  # after a 32-bit size of 1: a 64-bit size


@dataclass(frozen=True, slots=True)
class BoxLayout:
    types: tuple[str, ...]
    #: The box, if any, that claims bytes past the end of the file.
    truncated_box: str | None = None

    @property
    def faststart(self) -> bool | None:
        """True: moov precedes mdat; False: it follows; None: the file lacks one of them."""
        if "moov" not in self.types or "mdat" not in self.types:
            return None
        return self.types.index("moov") < self.types.index("mdat")


def read_layout(file: BinaryIO, size: int, *, max_boxes: int = MAX_TOP_LEVEL_BOXES) -> BoxLayout:
    """Walk the top-level boxes of ``file`` (``size`` bytes long) by their headers only.

    Stops at the first thing that is not a box header (trailing bytes after the last box are
    not our business) and after ``max_boxes`` boxes, so the cost is bounded for any input.
    """
    types: list[str] = []
    position = 0
    while position < size and len(types) < max_boxes:
        file.seek(position)
        header = file.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            break
        box_size, raw_type = struct.unpack(">I4s", header)
        if not _is_box_type(raw_type):
            break
        box_type = raw_type.decode("latin-1")
        header_bytes = HEADER_BYTES
        if box_size == 1:
            large = file.read(LARGE_SIZE_BYTES)
            if len(large) < LARGE_SIZE_BYTES:
                return BoxLayout(tuple([*types, box_type]), truncated_box=box_type)
            (box_size,) = struct.unpack(">Q", large)
            header_bytes += LARGE_SIZE_BYTES
        elif box_size == 0:
            box_size = size - position  # "extends to the end of the file"
        if box_size < header_bytes:
            break
        types.append(box_type)
        if position + box_size > size:
            return BoxLayout(tuple(types), truncated_box=box_type)
        position += box_size
    return BoxLayout(tuple(types))


def _is_box_type(raw: bytes) -> bool:
    # Box types are four printable characters (ISO/IEC 14496-12 uses ASCII letters, digits,
    # spaces and the occasional ©); anything else is not a box header.
    return all(0x20 <= byte <= 0x7E or byte == 0xA9 for byte in raw)
