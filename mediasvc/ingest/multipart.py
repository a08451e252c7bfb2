"""multipart/form-data bodies: streaming-form-data's parser with a target that writes as it goes.

Everything here runs in the ingest worker thread (the parser is CPU work: ~180 MB/s on hostile
bodies full of ``\\r\\n--``), so a slow parse never stalls the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping

from streaming_form_data import StreamingFormDataParser
from streaming_form_data.parser import ParseFailedException, parse_content_boundary
from streaming_form_data.targets import BaseTarget

from mediasvc.errors import MalformedMultipart
from mediasvc.ingest.blob import BlobFile
from mediasvc.ingest.names import validate_name

FILE_FIELD = "file"


class _FilePartTarget(BaseTarget):  # type: ignore[misc]
    def __init__(self, blob: BlobFile) -> None:
        super().__init__()
        self._blob = blob
        self.started = False
        self.finished = False

    def on_start(self) -> None:
        if self.started:
            raise MalformedMultipart(f"the body has more than one part named {FILE_FIELD!r}")
        self.started = True
        if self.multipart_filename:  # browsers send filename="" when no name is known
            validate_name(self.multipart_filename)

    def on_data_received(self, chunk: bytes) -> None:
        self._blob.write(chunk)

    def on_finish(self) -> None:
        self.finished = True


class _PartLimits:
    """Counts parts and measures each part's header block, in one forward scan of the body.

    streaming-form-data bounds neither: without this, a body of a million empty parts, or one
    part whose headers never end, would be parsed (and its headers buffered) to the end.
    """

    def __init__(self, boundary: bytes, *, max_parts: int, max_header_bytes: int) -> None:
        self._opening = b"\r\n--" + boundary + b"\r\n"
        self._max_parts = max_parts
        self._max_header_bytes = max_header_bytes
        self._parts = 0
        self._header_bytes: int | None = None  # inside a part's headers: how many so far
        # The body's first delimiter has no CRLF before it: pretend there was one.
        self._tail = b"\r\n"

    def scan(self, data: bytes) -> None:
        position = 0
        while position < len(data):
            if self._header_bytes is None:
                window = self._tail + data[position:]
                at = window.find(self._opening)
                if at < 0:
                    self._tail = window[-(len(self._opening) - 1) :]
                    return
                position += at + len(self._opening) - len(self._tail)
                self._parts += 1
                if self._parts > self._max_parts:
                    raise MalformedMultipart(f"the body has more than {self._max_parts} parts")
                self._header_bytes, self._tail = 0, b""
            else:
                window = self._tail + data[position:]
                at = window.find(b"\r\n\r\n")
                taken = len(data) - position if at < 0 else at + 4 - len(self._tail)
                self._header_bytes += taken
                if self._header_bytes > self._max_header_bytes:
                    raise MalformedMultipart(
                        f"a part's headers exceed {self._max_header_bytes} bytes"
                    )
                if at < 0:
                    self._tail = window[-3:]
                    return
                position += taken
                self._header_bytes, self._tail = None, b""


class MultipartFileReader:
    """Feeds body batches to the parser; the part named ``file`` goes to ``blob``."""

    def __init__(
        self,
        headers: Mapping[str, str],
        blob: BlobFile,
        *,
        max_parts: int,
        max_part_header_bytes: int,
    ) -> None:
        try:
            boundary = parse_content_boundary(headers)
            self._parser = StreamingFormDataParser(headers)
        except ParseFailedException as exc:
            raise MalformedMultipart(f"unreadable multipart Content-Type: {exc}") from exc
        # Kept to tell a complete body (it has this closing delimiter) from a cut one.
        self._ender = b"\r\n--" + boundary + b"--"
        self._tail = b""
        self._ended = False
        self._limits = _PartLimits(
            boundary, max_parts=max_parts, max_header_bytes=max_part_header_bytes
        )
        self._target = _FilePartTarget(blob)
        self._parser.register(FILE_FIELD, self._target)

    def process(self, batch: memoryview) -> None:
        if self._ended:
            return  # an epilogue after the closing delimiter (RFC 2046): ignored
        data = bytes(batch)  # the Cython parser takes bytes only
        end = self._closing_delimiter_end(data)
        if end is not None:
            # Feed the parser up to the closing delimiter only. Checking just the body's last
            # bytes refused bodies with an epilogue, and streaming-form-data 2.1 neither
            # delivers nor finishes the last part when an epilogue follows in the same chunk.
            self._ended = True
            data = data[:end]
        self._limits.scan(data)
        try:
            self._parser.data_received(data)
        except ParseFailedException as exc:
            raise MalformedMultipart(f"bad multipart framing: {exc}") from exc

    def _closing_delimiter_end(self, data: bytes) -> int | None:
        """Where the closing delimiter ends in ``data`` (it may straddle two batches), if there.

        It can't occur earlier in a well-formed body: a part's content ends at ``\r\n--B``.
        """
        n = len(self._ender)
        at = (self._tail + data[:n]).find(self._ender)
        if at >= 0:
            end: int | None = at + n - len(self._tail)
        else:
            at = data.find(self._ender)
            end = at + n if at >= 0 else None
        self._tail = (self._tail + data[-(n - 1) :])[-(n - 1) :]
        return end

    def check_complete(self) -> None:
        if not self._target.started:
            raise MalformedMultipart(f"the body has no part named {FILE_FIELD!r}")
        if not self._target.finished or not self._ended:
            raise MalformedMultipart("the multipart body ends before its closing delimiter")

    @property
    def filename(self) -> str | None:
        name: str | None = self._target.multipart_filename
        return name or None

    @property
    def content_type(self) -> str | None:
        content_type: str | None = self._target.multipart_content_type
        return content_type
