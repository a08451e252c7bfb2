"""The IETF resumable upload draft at /api/v1/uploads, in process (real PostgreSQL, real disk):
interop 6 (draft -05), 7 (-08), 8 (-11) and 9 (the text after -11), where their rules differ, every
problem the draft names, digests, limits, the plain upload's upgrade, and one upload driven by
tus and the draft in turn. In process there is no 104 (the ASGI transport has no informational
extension): tests/test_ietf_e2e.py sees it from a real uvicorn."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from mediasvc.config import Settings
from tests.conftest import leftovers
from tests.helpers import (
    OCTETS,
    TUS,
    UPLOADS,
    assert_problem,
    client_for,
    own_postgres_database,
    random_bytes,
    with_file_insert_cut_off,
)

DATA = random_bytes(300_000, seed=15)
SHA = hashlib.sha256(DATA).hexdigest()
PARTIAL = {"Content-Type": "application/partial-upload"}
IANA = "https://iana.org/assignments/http-problem-types#"


def v(version: int, **headers: str) -> dict[str, str]:
    fields = {name.replace("_", "-"): value for name, value in headers.items()}
    return {"Upload-Draft-Interop-Version": str(version), **fields}


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


async def create(client: httpx.AsyncClient, version: int, body: bytes = b"", **headers: str) -> str:
    response = await client.post(
        UPLOADS, content=body, headers=v(version, Upload_Complete="?0", **headers)
    )
    assert response.status_code == 201, response.text
    assert response.headers["upload-complete"] == "?0"
    assert int(response.headers["upload-offset"]) == len(body)
    return httpx.URL(response.headers["location"]).path


async def append(
    client: httpx.AsyncClient, path: str, version: int, at: int, body: bytes, complete: bool
) -> httpx.Response:
    return await client.patch(
        path,
        content=body,
        headers={
            **PARTIAL,
            **v(version, Upload_Offset=str(at), Upload_Complete="?1" if complete else "?0"),
        },
    )


async def sha_of_file(client: httpx.AsyncClient, location: str) -> str:
    meta = await client.get(f"{location}/metadata")
    assert meta.status_code == 200, meta.text
    sha: str = meta.json()["sha256"]
    return sha


# --- discovery and versions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "age_key", "accept_patch"),
    [
        (6, "expires", None),
        (7, "max-age", None),
        (8, "max-age", "application/partial-upload"),  # -10 and -11: MUST
        (9, "max-age", None),  # the text after -11 removed it
    ],
)
async def test_options_tell_the_limits(
    make_settings: object,
    client: httpx.AsyncClient,
    version: int,
    age_key: str,
    accept_patch: str | None,
) -> None:
    response = await client.options(UPLOADS, headers=v(version))
    assert response.status_code == 204
    limits = dict(item.split("=") for item in response.headers["upload-limit"].split(", "))
    assert limits[age_key] == "86400"
    assert response.headers.get("accept-patch") == accept_patch


async def test_an_unknown_interop_version_is_refused_with_those_spoken(
    client: httpx.AsyncClient,
) -> None:
    for value in ("10", "5", "x"):
        response = await client.post(
            UPLOADS, headers=v(6, Upload_Complete="?0") | {"Upload-Draft-Interop-Version": value}
        )
        problem = assert_problem(response, 400)
        assert problem["supported-versions"] == [6, 7, 8, 9]
    assert (await client.get("/api/v1/files")).json()["items"] == []


async def test_tus_requests_still_reach_tus(client: httpx.AsyncClient) -> None:
    # A tus request that also names an interop version is tus's (Tus-Resumable decides).
    response = await client.post(UPLOADS, headers={**TUS, **v(8), "Upload-Length": "5"})
    assert response.status_code == 201
    assert "upload-complete" not in response.headers
    assert (await client.post(UPLOADS, headers={"Upload-Length": "5"})).status_code == 412


async def test_draft_answers_carry_no_tus_field_and_tus_answers_do(
    client: httpx.AsyncClient,
) -> None:
    """Tus-Resumable belongs to tus: an answer to the draft (success or problem, any version,
    a refused version too) has none; a tus answer to the same upload has it."""
    path = await create(client, 9, DATA[:10])
    draft_answers = [
        await client.options(UPLOADS, headers=v(9)),
        await client.head(path, headers=v(9)),
        await client.get(path, headers=v(8)),
        await append(client, path, 9, 10, DATA[10:20], False),
        await append(client, path, 9, 5, DATA[5:20], False),  # 409
        await client.post(UPLOADS, headers=v(10, Upload_Complete="?0")),  # 400: unknown version
        await client.delete(path, headers=v(6)),
        await client.head(path, headers=v(8)),  # 404: gone
    ]
    assert [r.status_code for r in draft_answers] == [204, 204, 204, 204, 409, 400, 204, 404]
    for response in draft_answers:
        assert "tus-resumable" not in response.headers, response.request
    tus_path = await create(client, 8, DATA[:10])
    tus_answers = [
        await client.head(tus_path, headers=TUS),
        await client.options(UPLOADS),
        await client.post(UPLOADS, headers={"Upload-Length": "5"}),  # 412: no Tus-Resumable
    ]
    assert [r.status_code for r in tus_answers] == [200, 204, 412]
    for response in tus_answers:
        assert response.headers["tus-resumable"] == "1.0.0"


# --- creation, retrieval, append, completion ---------------------------------------------------


@pytest.mark.parametrize(("version", "append_status"), [(6, 201), (7, 204), (8, 204), (9, 204)])
async def test_an_upload_in_three_requests(
    client: httpx.AsyncClient, version: int, append_status: int
) -> None:
    path = await create(client, version, DATA[:100_000], Upload_Length=str(len(DATA)))
    head = await client.head(path, headers=v(version))
    assert head.status_code == 204
    assert head.headers["upload-offset"] == "100000"
    assert head.headers["upload-complete"] == "?0"
    assert head.headers["upload-length"] == str(len(DATA))
    assert head.headers["cache-control"] == "no-store"
    assert "upload-limit" in head.headers
    middle = await append(client, path, version, 100_000, DATA[100_000:200_000], False)
    assert middle.status_code == append_status
    assert middle.headers["upload-complete"] == "?0"
    assert middle.headers["upload-offset"] == "200000"
    last = await append(client, path, version, 200_000, DATA[200_000:], True)
    assert last.status_code == 201, last.text
    assert last.headers["upload-complete"] == "?1"
    assert last.headers["upload-offset"] == str(len(DATA))
    assert last.headers["repr-digest"] == f"sha-256=:{digest(DATA)}:"
    created = last.json()
    assert created["sha256"] == SHA and created["delete_token"]
    location = last.headers["content-location"]
    assert location == f"/api/v1/files/{created['uid']}"
    assert await sha_of_file(client, location) == SHA
    done = await client.head(path, headers=v(version))
    assert done.headers["upload-complete"] == "?1"
    assert done.headers["content-location"] == location


async def test_creation_with_the_whole_body_is_one_request(client: httpx.AsyncClient) -> None:
    response = await client.post(
        UPLOADS,
        content=DATA,
        headers=v(8, Upload_Complete="?1", Content_Disposition='inline; filename="a b.bin"'),
    )
    assert response.status_code == 201, response.text
    assert response.headers["upload-complete"] == "?1"
    assert response.json()["original_name"] == "a b.bin"
    assert response.json()["sha256"] == SHA


async def test_a_length_told_only_by_completion(client: httpx.AsyncClient) -> None:
    """No Upload-Length, chunked bodies: the request with Upload-Complete: ?1 ends the file."""

    async def pieces(data: bytes) -> object:
        for start in range(0, len(data), 50_000):
            yield data[start : start + 50_000]

    path = await create(client, 8)
    head = await client.head(path, headers=v(8))
    assert "upload-length" not in head.headers
    first = await client.patch(
        path,
        content=pieces(DATA[:150_000]),
        headers={**PARTIAL, **v(8, Upload_Offset="0", Upload_Complete="?0")},
    )
    assert first.status_code == 204
    last = await client.patch(
        path,
        content=pieces(DATA[150_000:]),
        headers={**PARTIAL, **v(8, Upload_Offset="150000", Upload_Complete="?1")},
    )
    assert last.status_code == 201, last.text
    assert last.json()["sha256"] == SHA


async def test_an_empty_append_completes(client: httpx.AsyncClient) -> None:
    path = await create(client, 8, DATA)
    done = await append(client, path, 8, len(DATA), b"", True)
    assert done.status_code == 201, done.text
    assert done.json()["size"] == len(DATA)
    # Again (its response was lost): the file's place, nothing appended.
    again = await append(client, path, 8, len(DATA), b"", True)
    assert again.status_code == 200
    assert again.headers["upload-complete"] == "?1"
    assert again.headers["content-location"] == done.headers["content-location"]


@pytest.mark.parametrize(
    ("version", "slug"),
    [
        (6, "completed-upload"),
        (7, "completed-upload"),
        (8, "inconsistent-upload-length"),
        (9, "inconsistent-upload-length"),
    ],
)
async def test_bytes_for_a_complete_upload(
    client: httpx.AsyncClient, version: int, slug: str
) -> None:
    path = await create(client, version, DATA[:10])
    assert (await append(client, path, version, 10, b"", True)).status_code == 201
    response = await append(client, path, version, 10, b"more", True)
    problem = assert_problem(response, 400)
    assert problem["type"] == IANA + slug


async def test_get_retrieves_the_offset_from_interop_8(client: httpx.AsyncClient) -> None:
    path = await create(client, 8, DATA[:5])
    for version in (8, 9):
        got = await client.get(path, headers=v(version))
        assert got.status_code == 204
        assert got.headers["upload-offset"] == "5"
        assert got.headers["upload-complete"] == "?0"
    for version in (6, 7):
        assert (await client.get(path, headers=v(version))).status_code == 405


# --- conflicts and problems ---------------------------------------------------------------------


@pytest.mark.parametrize("version", [6, 7, 8, 9])
async def test_a_wrong_offset_is_409_with_the_expected_one(
    client: httpx.AsyncClient, version: int
) -> None:
    path = await create(client, version, DATA[:1000])
    response = await append(client, path, version, 5000, DATA[5000:6000], False)
    problem = assert_problem(response, 409)
    assert problem["type"] == IANA + "mismatching-upload-offset"
    assert problem["expected-offset"] == 1000
    assert problem["provided-offset"] == 5000
    assert response.headers["upload-offset"] == "1000"
    assert response.headers["upload-complete"] == "?0"


async def test_inconsistent_lengths(client: httpx.AsyncClient) -> None:
    response = await client.post(
        UPLOADS, content=DATA[:10], headers=v(8, Upload_Complete="?1", Upload_Length="11")
    )
    problem = assert_problem(response, 400)
    assert problem["type"] == IANA + "inconsistent-upload-length"
    path = await create(client, 8, DATA[:10], Upload_Length="20")
    changed = await client.patch(
        path,
        content=b"",
        headers={**PARTIAL, **v(8, Upload_Offset="10", Upload_Complete="?0", Upload_Length="30")},
    )
    assert assert_problem(changed, 400)["type"] == IANA + "inconsistent-upload-length"
    short = await append(client, path, 8, 10, DATA[10:15], True)  # ends at 15 of 20
    assert assert_problem(short, 400)["type"] == IANA + "inconsistent-upload-length"


async def test_what_an_append_must_carry(client: httpx.AsyncClient) -> None:
    path = await create(client, 8)
    wrong_type = await client.patch(
        path,
        content=b"x",
        headers={
            "Content-Type": "application/offset+octet-stream",
            **v(8, Upload_Offset="0", Upload_Complete="?0"),
        },
    )
    assert_problem(wrong_type, 415)
    no_offset = await client.patch(
        path, content=b"x", headers={**PARTIAL, **v(8, Upload_Complete="?0")}
    )
    assert_problem(no_offset, 400)
    no_complete = await client.patch(
        path, content=b"x", headers={**PARTIAL, **v(8, Upload_Offset="0")}
    )
    assert_problem(no_complete, 400)
    # -05 allows an append without Upload-Complete: an incomplete one, answered 201.
    path6 = await create(client, 6)
    ok = await client.patch(path6, content=b"x", headers={**PARTIAL, **v(6, Upload_Offset="0")})
    assert ok.status_code == 201
    assert ok.headers["upload-offset"] == "1"


async def test_interop_6_refuses_upload_fields_in_head_and_delete(
    client: httpx.AsyncClient,
) -> None:
    path = await create(client, 6)
    assert_problem(await client.head(path, headers=v(6, Upload_Offset="0")), 400)
    assert_problem(await client.delete(path, headers=v(6, Upload_Complete="?0")), 400)
    assert (await client.head(path, headers=v(8, Upload_Offset="0"))).status_code == 204


# --- digests ------------------------------------------------------------------------------------


async def test_content_digest_per_request(client: httpx.AsyncClient, settings: Settings) -> None:
    path = await create(client, 8, DATA[:1000])
    wrong = await client.patch(
        path,
        content=DATA[1000:2000],
        headers={
            **PARTIAL,
            **v(8, Upload_Offset="1000", Upload_Complete="?0"),
            "Content-Digest": f"sha-256=:{digest(b'other')}:",
        },
    )
    problem = assert_problem(wrong, 400)
    assert problem["type"] == "urn:mediasvc:problem:content-digest-mismatch"
    assert (await client.head(path, headers=v(8))).headers["upload-offset"] == "1000"
    right = await client.patch(
        path,
        content=DATA[1000:2000],
        headers={
            **PARTIAL,
            **v(8, Upload_Offset="1000", Upload_Complete="?0"),
            "Content-Digest": f"sha-512=:{digest(DATA[1000:2000], 'sha512')}:",
        },
    )
    assert right.status_code == 204
    assert right.headers["upload-offset"] == "2000"


async def test_repr_digest_so_far_and_at_the_end(client: httpx.AsyncClient) -> None:
    path = await create(client, 8, DATA[:1234], Want_Repr_Digest="sha-256=5")
    head = await client.head(path, headers=v(8, Want_Repr_Digest="sha-256=10"))
    assert head.headers["repr-digest"] == f"sha-256=:{digest(DATA[:1234])}:"
    plain = await client.head(path, headers=v(8))
    assert "repr-digest" not in plain.headers


async def test_a_wrong_repr_digest_fails_the_completed_upload(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.post(
        UPLOADS,
        content=DATA,
        headers=v(8, Upload_Complete="?1", Repr_Digest=f"sha-256=:{digest(b'other')}:"),
    )
    assert_problem(response, 422)
    assert response.headers["upload-complete"] == "?1"  # the file's processing said no
    assert leftovers(settings.media_root) == []


# --- limits and cancellation --------------------------------------------------------------------


async def test_a_database_outage_at_completion_keeps_the_upload(
    make_settings: Callable[..., Settings],
) -> None:
    """The draft's completing append meets a database outage mid-commit: 503 with
    ``Upload-Complete: ?0`` (not over), every byte kept; the next offset retrieval completes it."""
    async with own_postgres_database() as url:
        settings = make_settings(database_url=url)
        async with client_for(settings, raise_app_exceptions=False) as http:
            path = await create(
                http,
                8,
                DATA[:100_000],
                Upload_Length=str(len(DATA)),
                Repr_Digest=f"sha-256=:{digest(DATA)}:",
            )
            last = append(http, path, 8, 100_000, DATA[100_000:], True)
            response = await with_file_insert_cut_off(url, last)
            assert_problem(response, 503)
            assert response.headers["upload-complete"] == "?0"
            assert [p.suffix for p in leftovers(settings.media_root)] == [".upload"]
            head = await http.head(path, headers=v(8))
            assert head.status_code == 204, head.text
            assert head.headers["upload-complete"] == "?1"
            assert head.headers["upload-offset"] == str(len(DATA))
            location = head.headers["content-location"]
            assert await sha_of_file(http, location) == SHA
        uid = location.rsplit("/", 1)[1]
        root = settings.media_root.resolve()
        assert leftovers(root) == [root / uid[:2] / uid]


async def test_over_max_size_is_413_with_the_limit(
    make_settings: object, settings: Settings
) -> None:
    from tests.helpers import fresh_client

    small = settings.model_copy(update={"max_upload_size_bytes": 1000})
    async with fresh_client(small) as client:
        response = await client.post(
            UPLOADS, headers=v(8, Upload_Complete="?0", Upload_Length="1001")
        )
        assert_problem(response, 413)
        assert "max-size=1000" in response.headers["upload-limit"]
        path = await create(client, 8, Upload_Length="1000")
        head = await client.head(path, headers=v(8))
        assert head.headers["upload-limit"].startswith("max-size=1000, max-age=")


async def test_cancellation(client: httpx.AsyncClient, settings: Settings) -> None:
    path = await create(client, 8, DATA[:5000])
    assert (await client.delete(path, headers=v(8))).status_code == 204
    assert_problem(await client.head(path, headers=v(8)), 404)
    assert leftovers(settings.media_root) == []


# --- the plain upload's upgrade, and tus on the same upload ------------------------------------


async def test_a_plain_upload_with_upload_complete_is_resumable(
    client: httpx.AsyncClient,
) -> None:
    response = await client.put(
        "/api/v1/files/stream/clip.bin",
        content=DATA,
        headers=v(8, Upload_Complete="?1", Upload_Length=str(len(DATA))),
    )
    assert response.status_code == 201, response.text
    assert response.headers["upload-complete"] == "?1"
    created = response.json()
    assert created["original_name"] == "clip.bin" and created["sha256"] == SHA
    # The upload it went through answers too.
    head = await client.head(f"{UPLOADS}/{created['uid']}", headers=v(8))
    assert head.headers["upload-complete"] == "?1"


async def test_a_plain_upload_from_an_unknown_version_stays_plain(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/api/v1/files/stream", content=DATA, headers=v(10, Upload_Complete="?1")
    )
    assert response.status_code == 201
    assert "upload-complete" not in response.headers
    head = await client.head(f"{UPLOADS}/{response.json()['uid']}", headers=v(8))
    assert head.status_code == 404  # no resumable upload behind it


async def test_tus_created_ietf_finished(client: httpx.AsyncClient) -> None:
    created = await client.post(
        UPLOADS,
        headers={**TUS, "Upload-Length": str(len(DATA)), "Upload-Metadata": "filename YS5iaW4="},
    )
    path = httpx.URL(created.headers["location"]).path
    first = await client.patch(
        path, content=DATA[:100_000], headers={**TUS, **OCTETS, "Upload-Offset": "0"}
    )
    assert first.status_code == 204
    head = await client.head(path, headers=v(8))
    assert head.headers["upload-offset"] == "100000"
    assert head.headers["upload-length"] == str(len(DATA))
    last = await append(client, path, 8, 100_000, DATA[100_000:], True)
    assert last.status_code == 201, last.text
    assert last.json()["original_name"] == "a.bin" and last.json()["sha256"] == SHA


async def test_ietf_created_tus_finished(client: httpx.AsyncClient) -> None:
    path = await create(client, 8, DATA[:100_000], Content_Disposition='inline; filename="b.bin"')
    head = await client.head(path, headers=TUS)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == "100000"
    assert head.headers["upload-defer-length"] == "1"  # the draft told no length
    assert head.headers["upload-metadata"] == "filename Yi5iaW4="
    last = await client.patch(
        path,
        content=DATA[100_000:],
        headers={**TUS, **OCTETS, "Upload-Offset": "100000", "Upload-Length": str(len(DATA))},
    )
    assert last.status_code == 204, last.text
    location = last.headers["content-location"]
    assert await sha_of_file(client, location) == SHA
    assert (await client.head(path, headers=v(8))).headers["upload-complete"] == "?1"


def test_an_internal_url_may_name_this_machine() -> None:
    """docker-compose.yml gives every API container the same MEDIASVC_INTERNAL_URL."""
    import socket

    secret = "s" * 32
    settings = Settings(
        _env_file=None, internal_url="http://{hostname}:8000/", internal_secret=secret
    )  # type: ignore[call-arg]
    assert settings.internal_url == f"http://{socket.gethostname()}:8000"
    ip = Settings(
        _env_file=None, internal_url="http://{ip}:8000", internal_secret=secret
    ).internal_url  # type: ignore[call-arg]
    assert ip == f"http://{socket.gethostbyname(socket.gethostname())}:8000"


@pytest.mark.parametrize("secret", [None, "", "a-secret-too-short"])
def test_an_internal_url_needs_a_long_internal_secret(secret: str | None) -> None:
    """Forwarded requests are signed with it: none, or one easy to guess, is refused at start."""
    with pytest.raises(ValueError, match="MEDIASVC_INTERNAL_SECRET"):
        Settings(_env_file=None, internal_url="http://10.0.0.5:8000", internal_secret=secret)  # type: ignore[call-arg]


async def test_the_openapi_schema_describes_the_draft(client: httpx.AsyncClient) -> None:
    """Each operation of the draft is in the schema (merged into tus's on the same path and
    method, GET on its own): its fields, statuses, response fields and problem types."""
    schema = (await client.get("/openapi.json")).json()
    upload = schema["paths"][f"{UPLOADS}/{{uid}}"]
    operations = {
        ("options", UPLOADS): schema["paths"][UPLOADS]["options"],
        ("post", UPLOADS): schema["paths"][UPLOADS]["post"],
        **{(method, "upload"): upload[method] for method in ("head", "get", "patch", "delete")},
    }
    for (method, _), operation in operations.items():
        assert "IETF resumable upload" in operation["tags"]
        params = {p["name"].lower(): p for p in operation["parameters"] if p["in"] == "header"}
        interop = params["upload-draft-interop-version"]
        assert interop["schema"]["enum"] == ["6", "7", "8", "9"]
        assert interop["required"] is (method == "get")  # GET is the draft's alone
        if "tus-resumable" in params:
            assert params["tus-resumable"]["required"] is False  # a draft request has none
    post, patch = operations["post", UPLOADS], operations["patch", "upload"]
    assert {"upload-complete", "upload-length", "content-digest", "repr-digest"} <= {
        p["name"].lower() for p in post["parameters"]
    }
    assert set(post["responses"]["104"]["headers"]) == {"Location", "Upload-Limit"}
    assert "application/partial-upload" in patch["requestBody"]["content"]
    offset = next(p for p in patch["parameters"] if p["name"] == "Upload-Offset")
    assert offset["required"] is True
    assert IANA + "mismatching-upload-offset" in patch["responses"]["409"]["x-problem-types"]
    problems_400 = patch["responses"]["400"]["x-problem-types"]
    assert IANA + "inconsistent-upload-length" in problems_400
    assert "urn:mediasvc:problem:unsupported-interop-version" in problems_400
    assert "urn:mediasvc:problem:content-digest-mismatch" in problems_400
    assert "uid" in {p["name"] for p in upload["get"]["parameters"] if p["in"] == "path"}


DRAFT_FIELDS = (
    "upload-complete",
    "upload-offset",
    "upload-length",
    "upload-limit",
    "location",
    "content-location",
    "repr-digest",
    "accept-patch",
    "x-delete-token",
)


async def test_what_the_draft_answers_is_what_the_schema_says(client: httpx.AsyncClient) -> None:
    """Real answers of the draft, each held against its operation in the schema: the status is
    declared, and so is every draft field it carries."""
    schema = (await client.get("/openapi.json")).json()["paths"]
    answers: list[tuple[str, httpx.Response]] = []

    async def send(method: str, path: str, **kwargs: object) -> httpx.Response:
        response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
        answers.append((UPLOADS if path == UPLOADS else f"{UPLOADS}/{{uid}}", response))
        return response

    await send("OPTIONS", UPLOADS, headers=v(8))
    created = await send(
        "POST",
        UPLOADS,
        content=DATA[:10],
        headers=v(9, Upload_Complete="?0", Want_Repr_Digest="sha-256=1"),
    )
    path = httpx.URL(created.headers["location"]).path
    await send("OPTIONS", path, headers=v(9))
    await send("HEAD", path, headers=v(9))
    await send("GET", path, headers=v(8))
    await send("GET", path, headers=v(7))  # 405
    await send(
        "PATCH",
        path,
        content=DATA[10:20],
        headers={**PARTIAL, **v(9, Upload_Offset="10", Upload_Complete="?0")},
    )
    await send(
        "PATCH", path, content=DATA[10:20], headers={**PARTIAL, **v(6, Upload_Offset="20")}
    )  # 201
    await send(
        "PATCH",
        path,
        content=b"x",
        headers={**PARTIAL, **v(9, Upload_Offset="5", Upload_Complete="?0")},
    )  # 409
    await send(
        "PATCH", path, content=b"x", headers=v(9, Upload_Offset="30", Upload_Complete="?0")
    )  # 415
    await send(
        "PATCH",
        path,
        content=DATA[30:40],
        headers={**PARTIAL, **v(9, Upload_Offset="30", Upload_Complete="?1")},
    )  # 201
    await send(
        "PATCH", path, headers={**PARTIAL, **v(9, Upload_Offset="40", Upload_Complete="?1")}
    )  # 200
    await send("HEAD", path, headers=v(8))
    await send("POST", UPLOADS, headers=v(10, Upload_Complete="?0"))  # 400
    other = await send("POST", UPLOADS, content=DATA[:5], headers=v(8, Upload_Complete="?1"))
    await send("DELETE", path, headers=v(9))
    await send("HEAD", path, headers=v(9))  # 404
    statuses = sorted({response.status_code for _, response in answers})
    assert statuses == [200, 201, 204, 400, 404, 405, 409, 415], statuses
    assert other.json()["sha256"] == hashlib.sha256(DATA[:5]).hexdigest()
    for schema_path, response in answers:
        operation = schema[schema_path][response.request.method.lower()]
        declared = operation["responses"].get(str(response.status_code))
        assert declared is not None, (response.request.method, response.status_code)
        names = {name.lower() for name in declared.get("headers", {})}
        carried = {name for name in DRAFT_FIELDS if name in response.headers}
        assert carried <= names, (response.request.method, response.status_code, carried)
        if response.content:  # declared content: problem+json for a 4xx, the file's JSON
            content_type = response.headers["content-type"].partition(";")[0]
            assert content_type in declared.get("content", {}) or response.status_code == 201


def test_a_forwarding_signature_holds_for_its_own_request_only() -> None:
    """resumable/node_signature.py: what is signed is the method, target, time, both nodes and
    the client; a change to any of them, a field twice, or no secret or URL here is refused."""
    from mediasvc.errors import ForwardingRefused
    from mediasvc.resumable import node_signature as ns

    key, now = b"k" * 32, 1_800_000_000.0
    fields = ns.sign(
        key, method="PATCH", target="/u/1", by="http://b", to="http://a", client="10.1.2.3", now=now
    )
    raw = [(name.encode(), value.encode()) for name, value in fields]

    def verify(
        headers: list[tuple[bytes, bytes]],
        *,
        secret: bytes | None = key,
        own_url: str | None = "http://a",
        method: str = "PATCH",
        path: bytes = b"/u/1",
        at: float = now,
    ) -> ns.Forwarded | None:
        return ns.verify(
            secret, own_url=own_url, method=method, raw_path=path, query=b"", headers=headers,
            now=at,
        )  # fmt: skip

    assert verify(raw, at=now + 10) == ns.Forwarded(by="http://b", client="10.1.2.3")
    assert verify([]) is None
    other_client = [(n, b"10.9.9.9" if n.endswith(b"-for") else v) for n, v in raw]
    refused: list[dict[str, Any]] = [
        {"method": "HEAD"},  # another method
        {"path": b"/u/2"},  # another target
        {"own_url": "http://c"},  # another node than the one it was sent to (a replay there)
        {"at": now + ns.MAX_SKEW_S + 1},  # too late
        {"secret": None},  # no secret here
        {"own_url": None},  # no URL here
        {"headers": [*raw, (b"x-mediasvc-forwarded-for", b"10.9.9.9")]},  # twice
        {"headers": other_client},  # another client
        {"headers": raw[:-1]},  # no signature
    ]
    for change in refused:
        with pytest.raises(ForwardingRefused):
            verify(**{"headers": raw, **change})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("at", "\u00b2"),  # "²".isdigit(), but int() refuses it
        ("at", "180000000\u00b3"),
        ("at", ""),
        ("at", "-1800000000"),
        ("at", "9" * 400),
        ("at", " 1800000000"),
        ("signature", "\u00e9" * 64),  # compare_digest refuses a str with other than ASCII
        ("signature", "\u00e9"),
        ("signature", ""),
        ("signature", "0" * 10_000),
        ("signature", "Z" * 64),
    ],
)
def test_a_malformed_forwarding_field_is_refused_not_an_error(field: str, value: str) -> None:
    """Headers come as latin-1: whatever a client puts in them is a 403, never a 500."""
    from mediasvc.errors import ForwardingRefused
    from mediasvc.resumable import node_signature as ns

    key, now = b"k" * 32, 1_800_000_000.0
    fields = dict(
        ns.sign(key, method="GET", target="/u", by="http://b", to="http://a", client="", now=now)
    )
    fields[ns.FORWARDED_AT if field == "at" else ns.SIGNATURE] = value
    headers = [(name.encode(), v.encode("latin-1")) for name, v in fields.items()]
    with pytest.raises(ForwardingRefused):
        ns.verify(
            key, own_url="http://a", method="GET", raw_path=b"/u", query=b"", headers=headers,
            now=now,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("raw_path", "query"),
    [
        (b"/api/v1/uploads/%61bc", b"x=1&y=%zz"),
        (b"/api/v1/uploads/abc/", b"q=caf\xc3\xa9&r=a%20b"),
        (b"/a%2Fb/c{d}", b""),
        (b"/a", b'x="<>"&z=%'),
    ],
)
def test_the_signed_target_is_what_the_receiver_sees(raw_path: bytes, query: bytes) -> None:
    """One form of the target on both sides: the sender signs ``target()`` of what its client
    sent and sends that (httpx leaves it as it is); the receiver's ``target()`` of it is the
    same, so percent-escapes and queries verify."""
    from mediasvc.resumable import node_signature as ns

    sent = ns.target(raw_path, query)
    request = httpx.Request("PATCH", "http://a:8000" + sent)
    assert request.url.raw_path.decode("ascii") == sent
    path, _, got_query = request.url.raw_path.partition(b"?")
    key, now = b"k" * 32, 1_800_000_000.0
    fields = ns.sign(
        key, method="PATCH", target=sent, by="http://b", to="http://a:8000", client=None, now=now
    )
    assert ns.verify(
        key,
        own_url="http://a:8000",
        method="PATCH",
        raw_path=path,
        query=got_query,
        headers=[(name.encode(), value.encode()) for name, value in fields],
        now=now,
    ) == ns.Forwarded(by="http://b", client=None)


def test_a_target_no_url_carries_is_refused() -> None:
    from mediasvc.errors import ForwardingRefused
    from mediasvc.resumable import node_signature as ns

    for raw_path in (b"*", b"/a\x7f", b"/a\x01b"):
        with pytest.raises(ForwardingRefused):
            ns.target(raw_path, b"")
