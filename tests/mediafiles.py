"""Real media made at test time by ffmpeg, hostile variants of it, and ffprobe helpers.

Made once per session (a few seconds of ffmpeg) under a temporary directory.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Committed samples (tests/data/README.md says what they are).
TEST_DATA = Path(__file__).resolve().parent / "data"
SAMPLE_MP4 = TEST_DATA / "sample.mp4"
SAMPLE_WEBM = TEST_DATA / "sample.webm"
GiB = 1024**3


@dataclass(frozen=True)
class MediaFiles:
    slow_mp4: Path  # H.264 + AAC, 320x240, 25 fps, 4 s, moov after mdat (no faststart)
    photo_jpg: Path  # 1280x720 JPEG
    small_png: Path  # 200x100 PNG: smaller than the preview bound
    tone_flac: Path  # 48 kHz stereo FLAC, 3 s
    root: Path


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def ffprobe_json(path: Path | str) -> dict[str, Any]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
         str(path)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def picture_size(path: Path | str) -> tuple[str, int, int]:
    """(codec, width, height) of the first video stream, as ffprobe decodes it."""
    stream = ffprobe_json(path)["streams"][0]
    return stream["codec_name"], int(stream["width"]), int(stream["height"])


@pytest.fixture(scope="session")
def media_files(tmp_path_factory: pytest.TempPathFactory) -> MediaFiles:
    root = tmp_path_factory.mktemp("media-files")
    slow = root / "slow.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=4",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=4",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25",
        "-c:a", "aac", "-ac", "2", "-shortest",
        "-movflags", "-faststart", "-f", "mp4", str(slow),
    )  # fmt: skip
    photo = root / "photo.jpg"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1280x720", "-frames:v", "1", str(photo))
    small = root / "small.png"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=200x100", "-frames:v", "1", str(small))
    tone = root / "tone.flac"
    ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=330:sample_rate=48000:duration=3",
        "-ac", "2", str(tone),
    )  # fmt: skip
    return MediaFiles(slow_mp4=slow, photo_jpg=photo, small_png=small, tone_flac=tone, root=root)


# --- hostile variants ---------------------------------------------------------------------------


def png_with_declared_size(source: Path, width: int, height: int) -> bytes:
    """A PNG whose IHDR claims another size (CRC fixed, so only the size is a lie)."""
    data = bytearray(source.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def top_level_boxes(data: bytes) -> list[tuple[str, int, int]]:
    """(type, offset, size) of each top-level box (8-byte headers only: our own MP4s)."""
    boxes = []
    position = 0
    while position < len(data):
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        boxes.append((kind.decode("latin-1"), position, size))
        position += size
    return boxes


def write_huge_mdat_mp4(source: Path, target: Path, *, hole_bytes: int) -> int:
    """``source`` (ftyp, free, mdat, moov) with ``hole_bytes`` more of mdat, written sparse.

    ffmpeg leaves an 8-byte ``free`` box before ``mdat`` so the header can grow to 64 bits:
    ``free`` + ``mdat`` (16 bytes) become one ``mdat`` with a 64-bit size, so every chunk offset
    in ``moov`` still points at the same bytes. The hole (zeros, never written, taking no disk)
    follows the real samples, then ``moov``: a player must seek over ``hole_bytes`` to find it.
    """
    data = source.read_bytes()
    boxes = {kind: (offset, size) for kind, offset, size in top_level_boxes(data)}
    free_offset, free_size = boxes["free"]
    mdat_offset, mdat_size = boxes["mdat"]
    moov_offset, moov_size = boxes["moov"]
    assert free_size == 8 and free_offset + 8 == mdat_offset and mdat_offset < moov_offset
    payload = data[mdat_offset + 8 : mdat_offset + mdat_size]
    new_mdat_size = 16 + len(payload) + hole_bytes
    with target.open("wb") as out:
        out.write(data[:free_offset])
        out.write(struct.pack(">I4sQ", 1, b"mdat", new_mdat_size))
        out.write(payload)
        out.seek(hole_bytes, os.SEEK_CUR)
        out.write(data[moov_offset : moov_offset + moov_size])
    return target.stat().st_size
