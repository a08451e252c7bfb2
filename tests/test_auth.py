"""API keys: the auth matrix, refusal before the body, ownership, admin delete, keys off."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from mediasvc.auth import ApiKey
from mediasvc.config import Settings
from mediasvc.ids import hash_token
from tests.helpers import assert_clean, bearer, fresh_client

ALICE = "alice-key-0123456789"
BOB = "bob-key-0123456789"
ADMIN = "admin-key-0123456789"
SIGNING_SECRET = "auth-tests-signing-secret-of-32-bytes"
BOUNDARY = "auth-matrix-boundary-7f3a"
PAYLOAD = bytes(range(256)) * 256  # 64 KiB
CHUNK = 4096


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Keys on (two users and an admin), signing configured so /link answers."""
    return make_settings(
        api_keys=[
            ApiKey(name="alice", sha256=hash_token(ALICE)),
            ApiKey(name="bob", sha256=hash_token(BOB)),
            ApiKey(name="root", sha256=hash_token(ADMIN), admin=True),
        ],
        signing_secret=SIGNING_SECRET,
    )


@dataclass
class PulledBody:
    """A request body from an async generator that counts the chunks the server pulled."""

    data: bytes
    pulled: int = 0
    chunks: list[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.chunks = [self.data[i : i + CHUNK] for i in range(0, len(self.data), CHUNK)]

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk


def multipart(data: bytes, name: str = "a.bin") -> bytes:
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


async def upload(
    client: httpx.AsyncClient, key: str | None, data: bytes = PAYLOAD
) -> dict[str, Any]:
    headers = bearer(key) if key else {}
    response = await client.post("/api/v1/files/stream", content=data, headers=headers)
    assert response.status_code == 201, response.text
    meta: dict[str, Any] = response.json()
    return meta


# --- the matrix ------------------------------------------------------------------------------

UPLOADS = {
    "POST /files (multipart)": ("POST", "/api/v1/files", True),
    "POST /files/stream": ("POST", "/api/v1/files/stream", False),
    "PUT /files/stream": ("PUT", "/api/v1/files/stream", False),
    "PUT /files/stream/{name}": ("PUT", "/api/v1/files/stream/a.bin", False),
}
# Endpoints that need a key when keys are on: method, path (``{uid}``: a file alice uploaded).
GUARDED = {
    "GET /files": ("GET", "/api/v1/files"),
    "GET /files/{uid}/link": ("GET", "/api/v1/files/{uid}/link"),
    "DELETE /files/{uid}": ("DELETE", "/api/v1/files/{uid}"),
}
# Capability URLs: the UID is the credential, Authorization is not looked at.
CAPABILITY = {
    "GET /files/{uid}": ("GET", "/api/v1/files/{uid}"),
    "HEAD /files/{uid}": ("HEAD", "/api/v1/files/{uid}"),
    "GET /files/{uid}/metadata": ("GET", "/api/v1/files/{uid}/metadata"),
}
SUCCESS = {"GET": 200, "HEAD": 200, "DELETE": 204, "POST": 201, "PUT": 201}

# credential case → (Authorization header or None, status for guarded endpoints)
CREDENTIALS = {
    "no-key": (None, 401),
    "wrong-key": ("Bearer not-a-configured-key", 403),
    "basic-scheme": ("Basic YWxpY2U6c2VjcmV0", 401),
    "bearer-without-token": ("Bearer", 401),
    "bearer-blank-token": ("Bearer   ", 401),
    "right-key": ("right", None),
}


def _right_key(method: str) -> str:
    # Deleting without the token is an admin's right; everything else alice may do with hers.
    return ADMIN if method == "DELETE" else ALICE


def _authorization(credential: str, method: str) -> dict[str, str]:
    header, _ = CREDENTIALS[credential]
    if header is None:
        return {}
    if header == "right":
        return bearer(_right_key(method))
    return {"Authorization": header}


def _assert_auth_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert {"type", "title", "detail"} <= problem.keys()
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    else:
        assert "www-authenticate" not in response.headers


@pytest.mark.parametrize("credential", list(CREDENTIALS))
@pytest.mark.parametrize("endpoint", list(UPLOADS))
async def test_auth_matrix_uploads(
    client: httpx.AsyncClient, settings: Settings, endpoint: str, credential: str
) -> None:
    """Uploads need a key; a refused upload pulls no body chunk and leaves no .part or row."""
    method, path, is_multipart = UPLOADS[endpoint]
    body = PulledBody(multipart(PAYLOAD) if is_multipart else PAYLOAD)
    headers = _authorization(credential, method)
    if is_multipart:
        headers["Content-Type"] = f"multipart/form-data; boundary={BOUNDARY}"
    response = await client.request(method, path, content=body.stream(), headers=headers)

    _, status = CREDENTIALS[credential]
    if status is None:
        assert response.status_code == 201, response.text
        meta = response.json()
        assert meta["size"] == len(PAYLOAD)
        assert body.pulled == len(body.chunks)
        await assert_clean(settings, {meta["uid"]: None})
        listed = await client.get("/api/v1/files", headers=bearer(ALICE))
        assert [item["uid"] for item in listed.json()["items"]] == [meta["uid"]]
    else:
        _assert_auth_problem(response, status)
        assert body.pulled == 0  # refused before the first body byte was read
        await assert_clean(settings, {})


@pytest.mark.parametrize("credential", list(CREDENTIALS))
@pytest.mark.parametrize("endpoint", list(GUARDED))
async def test_auth_matrix_guarded_endpoints(
    client: httpx.AsyncClient, settings: Settings, endpoint: str, credential: str
) -> None:
    meta = await upload(client, ALICE)
    uid = meta["uid"]
    method, path = GUARDED[endpoint]
    response = await client.request(
        method, path.format(uid=uid), headers=_authorization(credential, method)
    )
    _, status = CREDENTIALS[credential]
    if status is not None:
        _assert_auth_problem(response, status)
        await assert_clean(settings, {uid: None})
        assert (await client.get(f"/api/v1/files/{uid}")).content == PAYLOAD
        return
    assert response.status_code == SUCCESS[method], response.text
    if endpoint == "GET /files":
        assert [item["uid"] for item in response.json()["items"]] == [uid]
    elif endpoint == "GET /files/{uid}/link":
        link = response.json()
        assert link["url"].startswith(f"http://testserver/api/v1/files/{uid}?")
        assert (await client.get(link["url"])).content == PAYLOAD
    else:
        await assert_clean(settings, {uid: "deleted"})


@pytest.mark.parametrize("credential", list(CREDENTIALS))
@pytest.mark.parametrize("endpoint", list(CAPABILITY))
async def test_auth_matrix_capability_urls_ignore_keys(
    client: httpx.AsyncClient, settings: Settings, endpoint: str, credential: str
) -> None:
    """Download, HEAD and metadata stay capability URLs: any Authorization, or none, works."""
    meta = await upload(client, ALICE)
    method, path = CAPABILITY[endpoint]
    response = await client.request(
        method, path.format(uid=meta["uid"]), headers=_authorization(credential, method)
    )
    assert response.status_code == 200, response.text
    if endpoint == "GET /files/{uid}":
        assert response.content == PAYLOAD
    elif endpoint == "HEAD /files/{uid}":
        assert response.headers["content-length"] == str(len(PAYLOAD))
    else:
        assert response.json()["uid"] == meta["uid"]
    await assert_clean(settings, {meta["uid"]: None})


async def test_upload_without_key_is_refused_before_the_body_is_read(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    body = PulledBody(PAYLOAD * 16)  # 1 MiB in 256 chunks
    response = await client.post(
        "/api/v1/files/stream", content=body.stream(), params={"max_downloads": 3}
    )
    _assert_auth_problem(response, 401)
    assert body.pulled == 0
    await assert_clean(settings, {})


async def test_bearer_scheme_is_case_insensitive(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.post(
        "/api/v1/files/stream", content=b"x", headers={"Authorization": f"bearer {ALICE}"}
    )
    assert response.status_code == 201, response.text
    await assert_clean(settings, {response.json()["uid"]: None})


# --- ownership ---------------------------------------------------------------------------------


async def test_each_key_lists_only_its_own_files_and_admin_lists_all(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = [(await upload(client, ALICE, b"a%d" % i))["uid"] for i in range(3)]
    bob = [(await upload(client, BOB, b"b%d" % i))["uid"] for i in range(2)]
    root = [(await upload(client, ADMIN, b"r"))["uid"]]

    async def listed(key: str, limit: int = 1000) -> list[str]:
        uids: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor:
                params["cursor"] = cursor
            response = await client.get("/api/v1/files", params=params, headers=bearer(key))
            assert response.status_code == 200, response.text
            page = response.json()
            uids += [item["uid"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return uids

    assert sorted(await listed(ALICE)) == sorted(alice)
    assert sorted(await listed(ALICE, limit=1)) == sorted(alice)  # paging stays in the owner
    assert sorted(await listed(BOB)) == sorted(bob)
    assert sorted(await listed(ADMIN)) == sorted(alice + bob + root)
    assert sorted(await listed(ADMIN, limit=2)) == sorted(alice + bob + root)
    await assert_clean(settings, dict.fromkeys(alice + bob + root))


async def test_link_is_refused_for_another_non_admin_keys_file(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    uid = (await upload(client, ALICE))["uid"]
    url = f"/api/v1/files/{uid}/link"
    refused = await client.get(url, headers=bearer(BOB))
    _assert_auth_problem(refused, 403)
    for key in (ALICE, ADMIN):
        response = await client.get(url, headers=bearer(key))
        assert response.status_code == 200, response.text
        assert (await client.get(response.json()["url"])).content == PAYLOAD
    await assert_clean(settings, {uid: None})


# --- delete ------------------------------------------------------------------------------------


async def test_delete_with_the_token_needs_no_key(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    meta = await upload(client, ALICE)
    response = await client.delete(
        f"/api/v1/files/{meta['uid']}", headers={"X-Delete-Token": meta["delete_token"]}
    )
    assert response.status_code == 204
    await assert_clean(settings, {meta["uid"]: "deleted"})


async def test_delete_with_the_token_and_another_users_key(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The token is the capability: a (valid) key beside it changes nothing."""
    meta = await upload(client, ALICE)
    response = await client.delete(
        f"/api/v1/files/{meta['uid']}",
        headers={"X-Delete-Token": meta["delete_token"], **bearer(BOB)},
    )
    assert response.status_code == 204
    await assert_clean(settings, {meta["uid"]: "deleted"})


async def test_admin_key_deletes_any_file_without_token(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    uids = [(await upload(client, key))["uid"] for key in (ALICE, BOB)]
    for uid in uids:
        response = await client.delete(f"/api/v1/files/{uid}", headers=bearer(ADMIN))
        assert response.status_code == 204, response.text
    await assert_clean(settings, dict.fromkeys(uids, "deleted"))
    assert (await client.get(f"/api/v1/files/{uids[0]}")).status_code == 410


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param(bearer(ALICE), 403, id="owner-key-without-token"),
        pytest.param(bearer(BOB), 403, id="other-key-without-token"),
        pytest.param({"X-Delete-Token": "wrong", **bearer(ADMIN)}, 403, id="wrong-token-admin"),
        pytest.param({"X-Delete-Token": "wrong", **bearer(ALICE)}, 403, id="wrong-token-owner"),
        pytest.param({"X-Delete-Token": "wrong"}, 403, id="wrong-token-no-key"),
        pytest.param({"X-Delete-Token": ""}, 403, id="empty-token"),
        pytest.param({}, 401, id="nothing"),
        pytest.param({"Authorization": "Bearer nope"}, 403, id="invalid-key-without-token"),
    ],
)
async def test_delete_refused(
    client: httpx.AsyncClient, settings: Settings, headers: dict[str, str], status: int
) -> None:
    meta = await upload(client, ALICE)
    response = await client.delete(f"/api/v1/files/{meta['uid']}", headers=headers)
    _assert_auth_problem(response, status)
    await assert_clean(settings, {meta["uid"]: None})
    assert (await client.get(f"/api/v1/files/{meta['uid']}")).content == PAYLOAD


# --- keys off (the default) ---------------------------------------------------------------------


async def test_with_keys_off_everything_works_without_authorization(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(signing_secret=SIGNING_SECRET)
    assert settings.api_keys == []
    async with fresh_client(settings) as client:
        uids = []
        for name, (method, path, is_multipart) in UPLOADS.items():
            body = PulledBody(multipart(PAYLOAD) if is_multipart else PAYLOAD)
            headers = (
                {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
                if is_multipart
                else {}
            )
            response = await client.request(method, path, content=body.stream(), headers=headers)
            assert response.status_code == 201, (name, response.text)
            uids.append(response.json()["uid"])
        # An Authorization header is ignored, not an error, when no keys are configured.
        ignored = await client.post(
            "/api/v1/files/stream", content=PAYLOAD, headers={"Authorization": "Bearer whatever"}
        )
        assert ignored.status_code == 201
        uids.append(ignored.json()["uid"])

        listed = await client.get("/api/v1/files")
        assert listed.status_code == 200
        assert sorted(item["uid"] for item in listed.json()["items"]) == sorted(uids)
        for uid in uids:
            assert (await client.get(f"/api/v1/files/{uid}")).content == PAYLOAD
            assert (await client.head(f"/api/v1/files/{uid}")).status_code == 200
            assert (await client.get(f"/api/v1/files/{uid}/metadata")).status_code == 200
            link = await client.get(f"/api/v1/files/{uid}/link")
            assert link.status_code == 200
            assert (await client.get(link.json()["url"])).content == PAYLOAD

        # Without keys there is no admin: deleting needs the token.
        no_token = await client.delete(f"/api/v1/files/{uids[0]}", headers=bearer(ADMIN))
        assert no_token.status_code == 403
        assert "www-authenticate" not in no_token.headers
        token = (await client.post("/api/v1/files/stream", content=b"to delete")).json()
        deleted = await client.delete(
            f"/api/v1/files/{token['uid']}", headers={"X-Delete-Token": token["delete_token"]}
        )
        assert deleted.status_code == 204
        await assert_clean(settings, {**dict.fromkeys(uids), token["uid"]: "deleted"})
