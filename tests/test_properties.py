"""Property tests (hypothesis): Range parsing against a reference model, Content-Disposition for
any name the service accepts, multipart limits wherever the body is cut.

A failing example is shrunk and printed by hypothesis; the examples are bounded (a few hundred
per property, no deadline) so the module runs in seconds.
"""

from __future__ import annotations

import email.utils
import itertools
import random
import re
import tempfile
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers, QueryParams

from mediasvc.delivery.disposition import content_disposition
from mediasvc.delivery.ranges import MAX_OVERLAPPING_RANGES, MAX_UNORDERED_RANGES, parse_range
from mediasvc.errors import InvalidFilename, MalformedMultipart, RangeNotSatisfiable
from mediasvc.ingest.multipart import MultipartFileReader
from mediasvc.ingest.names import name_from_request, validate_name
from mediasvc.ingest.sink import FileSink
from mediasvc.storage.part import PartFile
from tests.helpers import (
    assert_problem,
    form_part,
    multipart_body,
    multipart_headers,
    parse_byteranges,
)

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


# --- Range: a reference model -------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One well-formed byte-range-spec (RFC 9110 §14.1.1)."""

    first: int | None  # None: a suffix range
    last: int | None  # None: open-ended (first-) ; for a suffix, `suffix` is set
    suffix: int | None = None

    def text(self) -> str:
        if self.suffix is not None:
            return f"-{self.suffix}"
        return f"{self.first}-" if self.last is None else f"{self.first}-{self.last}"

    def interval(self, size: int) -> tuple[int, int] | None:
        """The half-open bytes this spec selects in a file of ``size``, None if unsatisfiable."""
        if self.suffix is not None:
            return (max(size - self.suffix, 0), size) if self.suffix > 0 else None
        assert self.first is not None
        if self.first >= size:
            return None
        end = size if self.last is None else min(self.last + 1, size)
        return (self.first, end)


def overlap_count(intervals: list[tuple[int, int]]) -> int:
    """How many ranges overlap (share a byte with) a range that sorts before them."""
    count, reach = 0, -1
    for start, end in sorted(intervals):
        if start < reach:
            count += 1
        reach = max(reach, end)
    return count


def union(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-adjacent intervals covering exactly the bytes of ``intervals``."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def reference(specs: list[Spec], size: int, max_ranges: int) -> list[tuple[int, int]] | None:
    """What the documented rules give: ranges to send, [] for the whole file, None for 416."""
    if size == 0 or len(specs) > max_ranges:
        return []
    requested = [iv for spec in specs if (iv := spec.interval(size)) is not None]
    if not requested:
        return None
    if len(requested) >= 2 and (
        sum(end - start for start, end in requested) > size  # more bytes than the file
        or overlap_count(requested) > MAX_OVERLAPPING_RANGES
        or (len(requested) > MAX_UNORDERED_RANGES and requested != sorted(requested))
    ):
        return []
    return union(requested)


@st.composite
def specs_for(draw: st.DrawFn, size: int, *, max_count: int = 14) -> list[Spec]:
    """Specs that mostly land inside a file of ``size`` bytes, sometimes past its end."""
    bound = size + 3

    def one() -> st.SearchStrategy[Spec]:
        closed = st.tuples(st.integers(0, bound), st.integers(0, bound)).map(
            lambda pair: Spec(min(pair), max(pair))
        )
        open_ended = st.integers(0, bound).map(lambda first: Spec(first, None))
        suffix = st.integers(0, bound).map(lambda n: Spec(None, None, suffix=n))
        tiny = st.integers(0, max(size - 1, 0)).map(lambda first: Spec(first, first))
        return st.one_of(closed, open_ended, suffix, tiny)

    return draw(st.lists(one(), min_size=1, max_size=max_count))


def header_of(specs: list[Spec], separator: str = ",") -> str:
    return "bytes=" + separator.join(spec.text() for spec in specs)


@st.composite
def range_cases(draw: st.DrawFn) -> tuple[int, list[Spec], int, str]:
    size = draw(st.one_of(st.integers(0, 40), st.integers(41, 5000)))
    specs = draw(specs_for(size))
    max_ranges = draw(st.one_of(st.just(100), st.integers(1, 16)))
    separator = draw(st.sampled_from([",", ", ", " , ", ",\t"]))  # OWS around commas
    return size, specs, max_ranges, header_of(specs, separator)


@PROPERTY_SETTINGS
@given(range_cases())
@example((100, [Spec(0, 49), Spec(1, 1), Spec(3, 3), Spec(5, 5)], 100, "bytes=0-49,1-1,3-3,5-5"))
@example((100, [Spec(None, None, suffix=0)], 100, "bytes=-0"))
@example((0, [Spec(0, 0)], 100, "bytes=0-0"))
@example(
    (
        1000,
        [Spec(i * 10, i * 10) for i in reversed(range(11))],
        100,
        header_of([Spec(i * 10, i * 10) for i in reversed(range(11))]),
    )
)
def test_parse_range_matches_the_reference_model(case: tuple[int, list[Spec], int, str]) -> None:
    size, specs, max_ranges, header = case
    expected = reference(specs, size, max_ranges)
    event({None: "416", 0: "whole file"}.get(None if expected is None else len(expected), "ranges"))
    if expected is None:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size, max_ranges=max_ranges)
        return
    result = parse_range(header, size, max_ranges=max_ranges)
    # Invariants that hold whatever the model says: sorted, disjoint, non-empty, inside the file.
    for start, end in result:
        assert 0 <= start < end <= size
    for (_, end), (start, _) in itertools.pairwise(result):
        assert end < start  # disjoint and not even adjacent: adjacent ranges are one part
    if result:
        # Exactly the satisfiable requested bytes: nothing more, nothing dropped.
        requested = [iv for spec in specs if (iv := spec.interval(size)) is not None]
        assert result == union(requested)
    assert result == expected


@PROPERTY_SETTINGS
@given(st.integers(1, 5000), st.integers(1, 20), st.data())
def test_more_specs_than_max_ranges_is_the_whole_file(
    size: int, max_ranges: int, data: st.DataObject
) -> None:
    specs = data.draw(specs_for(size, max_count=max_ranges + 10).filter(lambda s: len(s) > 0))
    extra = data.draw(st.lists(st.just(Spec(0, 0)), min_size=max(0, max_ranges + 1 - len(specs))))
    assert parse_range(header_of(specs + extra), size, max_ranges=max_ranges) == []


@PROPERTY_SETTINGS
@given(st.integers(1, 5000), st.data())
def test_only_unsatisfiable_specs_are_416(size: int, data: st.DataObject) -> None:
    beyond = st.one_of(
        st.integers(size, size + 10_000).map(lambda first: Spec(first, None)),
        st.tuples(st.integers(size, size + 100), st.integers(0, 100)).map(
            lambda pair: Spec(pair[0], pair[0] + pair[1])
        ),
        st.just(Spec(None, None, suffix=0)),
    )
    specs = data.draw(st.lists(beyond, min_size=1, max_size=20))
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header_of(specs), size, max_ranges=100)
    assert caught.value.headers.get("Content-Range") == f"bytes */{size}"


# --- Range end to end: the bytes of a 206 are the slice ------------------------------------------

E2E_SIZES = [1, 7, 1000, 3 * 64 * 1024 + 123]  # the last one spans several read chunks


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_range_responses_carry_exactly_the_model_bytes(
    client: httpx.AsyncClient, data: st.DataObject
) -> None:
    size = data.draw(st.sampled_from(E2E_SIZES))
    specs = data.draw(specs_for(size, max_count=6))
    content, uid = await _uploaded(client, size)
    header = header_of(specs)
    expected = reference(specs, size, 100)  # settings.max_ranges = 100 in the test settings
    response = await client.get(f"/api/v1/files/{uid}", headers={"Range": header})
    if expected is None:
        assert_problem(response, 416)
        assert response.headers["content-range"] == f"bytes */{size}"
    elif expected == []:
        assert response.status_code == 200, response.text
        assert response.content == content
    elif len(expected) == 1:
        (start, end) = expected[0]
        assert response.status_code == 206, response.text
        assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
        assert response.content == content[start:end]
    else:
        assert response.status_code == 206, response.text
        parts = parse_byteranges(response)
        assert [(p.first, p.last + 1) for p in parts] == expected
        for part in parts:
            assert part.total == size
            assert part.payload == content[part.first : part.last + 1]


# One upload per size and per app (the `client` fixture's app lives for the whole test).
_UPLOADS: dict[tuple[int, int], tuple[bytes, str]] = {}


async def _uploaded(client: httpx.AsyncClient, size: int) -> tuple[bytes, str]:
    key = (id(client), size)
    if key not in _UPLOADS:
        content = random.Random(size).randbytes(size)
        response = await client.post(
            "/api/v1/files/stream", content=content, headers={"X-Filename": "r.bin"}
        )
        assert response.status_code == 201, response.text
        _UPLOADS[key] = (content, response.json()["uid"])
    return _UPLOADS[key]


@pytest.fixture(autouse=True)
def _forget_uploads() -> Any:
    yield
    _UPLOADS.clear()


# --- Content-Disposition for any accepted name ---------------------------------------------------


def acceptable(name: str) -> bool:
    try:
        validate_name(name)
    except InvalidFilename:
        return False
    return True


# st.text() alone is mostly short and letter-heavy; mix in what breaks headers.
HOSTILE_ALPHABET = st.sampled_from([*"\"\\/%;,='* \u3000\u2028\u2029\u00a0\ufeff\u200e", "é"])
names = st.one_of(
    st.text(min_size=1),
    st.text(alphabet=st.one_of(HOSTILE_ALPHABET, st.characters()), min_size=1),
    st.text(alphabet=st.characters(codec="ascii"), min_size=1),
).filter(acceptable)


def disposition_params(header: str) -> list[tuple[str, Any]]:
    message = Message()
    message["Content-Disposition"] = header
    params: list[tuple[str, Any]] = message.get_params(header="content-disposition", failobj=[])
    return params


@PROPERTY_SETTINGS
@given(
    names, st.sampled_from(["application/octet-stream", "video/mp4", "text/html"]), st.booleans()
)
@example('a"b\\c/d%e.txt', "application/octet-stream", False)
@example("\u2028", "application/octet-stream", True)
@example("x" * 255, "video/mp4", True)
@example("<>", "application/octet-stream", False)
@example("a; filename*=UTF-8''evil.exe", "video/mp4", False)
def test_content_disposition_is_safe_and_round_trips(
    name: str, media_type: str, inline: bool
) -> None:
    header = content_disposition(name, media_type=media_type, inline=inline)
    expected_name = name.replace("/", "_").replace("\\", "_")

    # One line of printable ASCII: nothing a header parser or a log could split on.
    assert header.isascii() and header.isprintable(), header
    assert "\r" not in header and "\n" not in header

    disposition, _, rest = header.partition(";")
    assert disposition == ("inline" if inline and media_type != "text/html" else "attachment")
    assert rest.startswith(' filename="')
    # The fallback has no '"' (checked next), so the first quote after it closes it.
    fallback, _, after = rest[len(' filename="') :].partition('"')
    assert not set(fallback) & set('"\\/%')
    assert all(" " <= ch <= "~" for ch in fallback)
    assert len(fallback) == len(expected_name)  # one placeholder per character it can't carry

    params = disposition_params(header)
    assert params[0][0] == disposition
    plain = [value for key, value in params if key == "filename" and isinstance(value, str)]
    extended = [value for key, value in params if key == "filename" and isinstance(value, tuple)]
    assert plain == [fallback]
    if fallback == expected_name:
        assert after == ""
        assert extended == []
    else:
        # RFC 8187: UTF-8, no language, attr-char or %XX; decodes back to the name.
        assert after.startswith("; filename*=UTF-8''")
        ext_value = after.removeprefix("; filename*=")
        assert re.fullmatch(r"UTF-8''(?:[!#$&+\-.^_`|~0-9A-Za-z]|%[0-9A-F]{2})*", ext_value)
        assert unquote(ext_value[len("UTF-8''") :], errors="strict") == expected_name
        assert len(extended) == 1
        charset, language, _ = extended[0]
        assert (charset, language) == ("UTF-8", "")
        assert collapse_rfc2231_value(extended[0]) == expected_name
    # The stdlib's get_filename() returns the first `filename` parameter, the ASCII fallback
    # (RFC 6266 §4.3 recipients prefer filename*, checked above); it also strips whitespace and,
    # unquoting twice, a pair of <> around the value (`filename="<x>"` gives "x"): its quirks.
    message = Message()
    message["Content-Disposition"] = header
    stdlib_view = email.utils.unquote(fallback if extended else expected_name).strip()
    assert message.get_filename() == stdlib_view
    # Our own upload parser reads the download's header back to the same name (a re-upload
    # with `curl -H "Content-Disposition: …"` keeps it).
    reparsed = name_from_request(Headers({"content-disposition": header}), QueryParams(""), None)
    assert reparsed == expected_name
    # Nothing in the name may smuggle a parameter in.
    assert {key for key, _ in params} <= {disposition, "filename"}


# --- multipart limits do not depend on where the body is cut --------------------------------------


@st.composite
def multipart_cases(draw: st.DrawFn) -> tuple[list[bytes], bytes, list[int], int, int]:
    """(parts, file bytes, cut points, max_parts, max_part_header_bytes)."""
    payload = st.binary(max_size=300).map(lambda b: b.replace(b"\r\n--", b"\n--"))
    fields = draw(st.lists(st.tuples(st.integers(0, 700), payload), max_size=20))
    file_data = draw(payload)
    parts = [
        form_part(f"f{i}", data, disposition=f'form-data; name="f{i}"; x="{"p" * pad}"'.encode())
        for i, (pad, data) in enumerate(fields)
    ]
    parts.append(form_part("file", file_data, filename="f.bin"))
    size = len(multipart_body(*parts))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(size - 1, 1)), max_size=12))))
    return parts, file_data, cuts, draw(st.integers(1, 22)), draw(st.integers(256, 1024))


def part_header_bytes(part: bytes) -> int:
    """What the limit counts: a part's header lines (without the spaces after the colon) and
    the empty line that ends them."""
    lines = part[: part.index(b"\r\n\r\n")].split(b"\r\n")
    fields = (line.partition(b":") for line in lines)
    return 2 + sum(len(name) + 1 + len(value.lstrip(b" ")) + 2 for name, _, value in fields)


@PROPERTY_SETTINGS
@given(multipart_cases())
def test_multipart_limits_hold_wherever_the_body_is_cut(
    case: tuple[list[bytes], bytes, list[int], int, int],
) -> None:
    parts, file_data, cuts, max_parts, max_header = case
    body = multipart_body(*parts)
    too_many = len(parts) > max_parts
    too_big = any(part_header_bytes(part) > max_header for part in parts)
    with tempfile.TemporaryDirectory() as directory:
        blob = FileSink(PartFile(Path(directory) / "x.part", fsync=False), max_size_bytes=0)
        reader = MultipartFileReader(
            multipart_headers()["Content-Type"],
            blob,
            max_parts=max_parts,
            max_part_header_bytes=max_header,
        )
        pieces = [body[a:b] for a, b in itertools.pairwise([0, *cuts, len(body)])]
        try:
            for piece in pieces:
                reader.process(memoryview(piece))
            reader.check_complete()
        except MalformedMultipart as exc:
            event("refused")
            assert too_many or too_big, exc
            if not too_big:
                assert f"more than {max_parts} parts" in str(exc)
            if not too_many:
                assert f"headers exceed {max_header} bytes" in str(exc)
        else:
            event("accepted")
            assert not (too_many or too_big)
            assert blob.finish().size == len(file_data)
            assert (Path(directory) / "x.part").read_bytes() == file_data
        finally:
            blob.discard()
