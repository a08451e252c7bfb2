"""multipart/form-data bodies: python-multipart's callback parser, writing the file as it goes.

python-multipart (the parser Starlette uses), because it stays fast on bodies full of
``\r\n--`` (it searches part data with ``bytes.find``; docs/performance.md has the comparison).
Its low-level parser hands out header and data slices through callbacks and buffers nothing
itself; part counts and header blocks are bounded here. Everything here runs in the ingest
worker thread, never on the event loop.
"""

from __future__ import annotations

import re
from concurrent.futures import Future

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from mediasvc.errors import InvalidMetadata, MalformedMultipart
from mediasvc.events.metadata import MAX_METADATA_BYTES
from mediasvc.ingest.names import decode_name_bytes, filename_from_disposition, validate_name
from mediasvc.ingest.sink import FileSink

FILE_FIELD = "file"
# The caller's metadata (events/metadata.py), kept in memory up to its bound, before or after
# the file.
METADATA_FIELD = "metadata"
# Room for the multipart framing around the file: boundaries, part headers, small fields.
FRAMING_ALLOWANCE_BYTES = 64 * 1024
# An RFC 8187 filename* parameter in a Content-Disposition value.
_EXTENDED_FILENAME = re.compile(rb";\s*filename\*\s*=", re.IGNORECASE)


def _decode(value: bytes) -> str:
    """A part's Content-Type: UTF-8, else latin-1 (file names are strict: names.py)."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


class MultipartFileReader:
    """Feeds body batches to the parser; the part named ``file`` goes to ``sink``, the one named
    ``metadata`` to ``metadata`` (bounded); other fields are skipped."""

    def __init__(
        self,
        content_type: str | None,
        sink: FileSink,
        *,
        max_parts: int,
        max_part_header_bytes: int,
    ) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary or len(boundary) > 70:  # RFC 2046 §5.1.1: 1–70 characters
            raise MalformedMultipart("the multipart Content-Type has no usable boundary")
        self._sink = sink
        self._max_parts = max_parts
        self._max_header_bytes = max_part_header_bytes
        self._parts = 0
        self._header_bytes = 0
        self._field = bytearray()
        self._value = bytearray()
        self._part_headers: dict[bytes, bytes] = {}
        self._in_file = False
        self._in_metadata = False
        self._in_headers = False
        self.metadata: bytes | None = None
        self.file_started = False
        self.ended = False
        self.filename: str | None = None
        self.content_type: str | None = None
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
            # Our count of a part's header bytes (below) decides, with a clearer message; the
            # parser's own per-line bounds stay as a backstop, because only it sees the spaces
            # it skips after a colon (a flood of them would otherwise cost CPU without limit).
            # A header line is at least 4 of our bytes, so neither bound is ever stricter.
            max_header_count=max_part_header_bytes // 4,
            max_header_size=max_part_header_bytes,
        )

    def process(self, batch: memoryview) -> Future[None]:
        """Parse ``batch``; the future is done already: the parser reads a copy, so the batch's
        buffer is free when this returns."""
        done: Future[None] = Future()
        done.set_result(None)
        if self.ended:
            return done  # an epilogue after the closing delimiter (RFC 2046): ignored
        try:
            self._parser.write(bytes(batch))  # it searches with bytes.find: bytes, not a view
        except MultipartParseError as exc:
            if self._in_headers and str(exc).startswith("Maximum header"):  # the backstop
                raise MalformedMultipart(
                    f"a part's headers exceed {self._max_header_bytes} bytes"
                ) from exc
            raise MalformedMultipart(f"bad multipart framing: {exc}") from exc
        return done

    def check_complete(self) -> None:
        if not self.ended:
            raise MalformedMultipart("the multipart body ends before its closing delimiter")
        if not self.file_started:
            raise MalformedMultipart(f"the body has no part named {FILE_FIELD!r}")

    # --- parser callbacks ---------------------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise MalformedMultipart(f"the body has more than {self._max_parts} parts")
        self._part_headers = {}
        self._in_headers = True
        self._header_bytes = 0
        self._count_header_bytes(2)  # the empty line that ends the headers

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._count_header_bytes(3)  # ":" and CRLF (the spaces after ":" are not counted)
        self._part_headers[bytes(self._field).strip().lower()] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        self._in_headers = False
        disposition = self._part_headers.get(b"content-disposition", b"")
        disposition_type, options = parse_options_header(disposition)
        if disposition_type != b"form-data":  # RFC 7578 §4.2: every part has one
            raise MalformedMultipart("a part has no Content-Disposition: form-data header")
        name = options.get(b"name")
        if name == METADATA_FIELD.encode():
            if self.metadata is not None:
                raise MalformedMultipart(
                    f"the body has more than one part named {METADATA_FIELD!r}"
                )
            self.metadata = b""
            self._in_metadata = True
            return
        if name != FILE_FIELD.encode():
            return  # another field: its data is skipped
        if self.file_started:
            raise MalformedMultipart(f"the body has more than one part named {FILE_FIELD!r}")
        self.file_started = self._in_file = True
        if _EXTENDED_FILENAME.search(disposition):
            # python-multipart drops RFC 8187 parameters (RFC 7578 forbids them), but some
            # clients send them: the same parser as for raw uploads' Content-Disposition.
            filename = filename_from_disposition(disposition.decode("latin-1")) or ""
        else:
            # RFC 7578 §4.2: UTF-8, as browsers send it; not the latin-1 guess we make for a
            # part's Content-Type, so the rule is the raw uploads' (names.py).
            filename = decode_name_bytes(
                options.get(b"filename", b""), source="the part's filename"
            )
        if filename:  # browsers send filename="" when no name is known
            validate_name(filename)
        self.filename = filename or None
        content_type = self._part_headers.get(b"content-type")
        self.content_type = _decode(content_type) if content_type else None

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._sink.write(memoryview(data)[start:end])
        elif self._in_metadata:
            assert self.metadata is not None
            if len(self.metadata) + end - start > MAX_METADATA_BYTES:
                raise InvalidMetadata(f"metadata is more than {MAX_METADATA_BYTES} bytes")
            self.metadata += data[start:end]

    def _on_part_end(self) -> None:
        self._in_file = self._in_metadata = False

    def _on_end(self) -> None:
        self.ended = True

    def _count_header_bytes(self, n: int) -> None:
        """Counted before anything is kept, so no more than the limit is ever buffered."""
        self._header_bytes += n
        if self._header_bytes > self._max_header_bytes:
            raise MalformedMultipart(f"a part's headers exceed {self._max_header_bytes} bytes")
