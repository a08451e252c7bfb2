"""Signed download links: required when configured, byte-exact, expiring, tamper-proof."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from pydantic import ValidationError
from starlette.datastructures import QueryParams

from mediasvc.auth import ApiKey
from mediasvc.config import MIN_SIGNING_SECRET_BYTES, Settings, describe_error
from mediasvc.delivery import signing
from mediasvc.errors import Forbidden
from mediasvc.ids import hash_token
from tests.conftest import RunningServer
from tests.helpers import assert_clean, bearer, fresh_client, probed

SECRET = "signed-links-test-secret-of-32-bytes"
MAX_LINK_S = 3600
DATA = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes
OTHER = b"another file's bytes"
# Signed downloads need API keys (else anyone could mint links): the files' owner, another
# user and an admin. The plain requests below carry no key unless a test says so.
OWNER = "signed-owner-key-0123"
STRANGER = "signed-stranger-key-0123"
ADMIN = "signed-admin-key-0123"
KEYS = [
    ApiKey(name="owner", sha256=hash_token(OWNER)),
    ApiKey(name="stranger", sha256=hash_token(STRANGER)),
    ApiKey(name="admin", sha256=hash_token(ADMIN), admin=True),
]


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        require_signed_downloads=True,
        signing_secret=SECRET,
        max_link_expires_s=MAX_LINK_S,
        api_keys=KEYS,
    )


async def upload(client: httpx.AsyncClient, data: bytes, **params: int) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/files/stream", content=data, params=params, headers=bearer(OWNER)
    )
    assert response.status_code == 201, response.text
    meta: dict[str, Any] = response.json()
    return meta


async def link(client: httpx.AsyncClient, uid: str, **params: Any) -> str:
    response = await client.get(f"/api/v1/files/{uid}/link", params=params, headers=bearer(OWNER))
    assert response.status_code == 200, response.text
    url: str = response.json()["url"]
    return url


def with_query(url: str, params: list[tuple[str, str]]) -> str:
    return url.split("?", 1)[0] + "?" + urlencode(params)


def query_of(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def assert_forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    if response.request.method != "HEAD":
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 403


async def test_plain_download_is_refused_when_signed_downloads_are_required(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    meta = await upload(client, DATA, max_downloads=1)
    url = f"/api/v1/files/{meta['uid']}"
    assert_forbidden(await client.get(url))
    assert_forbidden(await client.get(url, headers={"Range": "bytes=0-9"}))
    assert_forbidden(await client.get(url, params={"inline": "true"}))
    assert_forbidden(await client.head(url))
    # The metadata (its sha256 confirms a guess of the content) follows the same rule; the
    # refusals cost none of the download budget.
    assert_forbidden(await client.get(f"{url}/metadata"))
    metadata = await client.get(f"{url}/metadata", headers=bearer(OWNER))
    assert metadata.status_code == 200
    assert metadata.json()["downloads"] == 0
    await assert_clean(settings, {meta["uid"]: None})


async def test_signed_link_downloads_byte_exact_with_head_and_range(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    meta = await upload(client, DATA)
    before = int(time.time())
    response = await client.get(
        f"/api/v1/files/{meta['uid']}/link", params={"expires_in": 60}, headers=bearer(OWNER)
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"url", "expires_at"}
    url = body["url"]
    assert url.startswith(f"http://testserver/api/v1/files/{meta['uid']}?")
    expires = int(dict(query_of(url))["expires"])
    assert before + 60 <= expires <= int(time.time()) + 60

    full = await client.get(url)
    assert full.status_code == 200
    assert full.content == DATA
    assert full.headers["content-disposition"].startswith("attachment")
    head = await client.head(url)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(DATA))
    ranged = await client.get(url, headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206
    assert ranged.content == DATA[100:200]
    suffix = await client.get(url, headers={"Range": "bytes=-4"})
    assert suffix.status_code == 206
    assert suffix.content == b"tail"

    inline = await link(client, meta["uid"], inline="true")
    shown = await client.get(inline)
    assert shown.status_code == 200
    assert shown.content == DATA
    assert shown.headers["content-disposition"].startswith("inline")
    await assert_clean(settings, {meta["uid"]: None})


async def test_expired_link_is_refused(client: httpx.AsyncClient, settings: Settings) -> None:
    meta = await upload(client, DATA)
    uid = meta["uid"]
    url = await link(client, uid, expires_in=1)
    query = QueryParams(urlsplit(url).query)
    expires = int(query["expires"])
    # Move the clock instead of waiting: valid up to and including `expires`, not a second after.
    signing.verify(SECRET, uid, query, now_s=expires)
    with pytest.raises(Forbidden, match="expired"):
        signing.verify(SECRET, uid, query, now_s=expires + 1)

    # Through the service: a correctly signed URL whose expiry has passed.
    expired = signing.signed_query(SECRET, uid, expires_at_s=int(time.time()) - 1, inline=False)
    assert_forbidden(await client.get(f"/api/v1/files/{uid}?{expired}"))
    assert_forbidden(await client.head(f"/api/v1/files/{uid}?{expired}"))
    long_ago = signing.signed_query(SECRET, uid, expires_at_s=0, inline=True)
    assert_forbidden(await client.get(f"/api/v1/files/{uid}?{long_ago}"))
    # The same construction with a future expiry works: only the time made the difference.
    fresh = signing.signed_query(SECRET, uid, expires_at_s=int(time.time()) + 60, inline=False)
    assert (await client.get(f"/api/v1/files/{uid}?{fresh}")).content == DATA
    await assert_clean(settings, {uid: None})


def _flip(hex_digit: str) -> str:
    return "0" if hex_digit != "0" else "1"


# Each takes the plain and the inline link's params → ("own" or "other" uid, tampered params).
TAMPERINGS: dict[str, Callable[[list[tuple[str, str]], list[tuple[str, str]]], Any]] = {
    "other-uid": lambda plain, inline: ("other", plain),
    "changed-expires": lambda plain, inline: (
        "own",
        [(k, str(int(v) + 1) if k == "expires" else v) for k, v in plain],
    ),
    "earlier-expires": lambda plain, inline: (
        "own",
        [(k, str(int(v) - 1) if k == "expires" else v) for k, v in plain],
    ),
    "added-inline": lambda plain, inline: ("own", [*plain, ("inline", "true")]),
    "removed-inline": lambda plain, inline: ("own", [(k, v) for k, v in inline if k != "inline"]),
    "changed-inline": lambda plain, inline: (
        "own",
        [(k, "false" if k == "inline" else v) for k, v in inline],
    ),
    "extra-parameter": lambda plain, inline: ("own", [*plain, ("x", "1")]),
    "duplicated-expires": lambda plain, inline: (
        "own",
        [*plain, ("expires", dict(plain)["expires"])],
    ),
    "flipped-signature-char": lambda plain, inline: (
        "own",
        [(k, v[:-1] + _flip(v[-1]) if k == "signature" else v) for k, v in plain],
    ),
    "uppercased-signature": lambda plain, inline: (
        "own",
        [(k, v.upper() if k == "signature" else v) for k, v in plain],
    ),
    "truncated-signature": lambda plain, inline: (
        "own",
        [(k, v[:-2] if k == "signature" else v) for k, v in plain],
    ),
    "missing-signature": lambda plain, inline: ("own", [p for p in plain if p[0] != "signature"]),
    "empty-signature": lambda plain, inline: (
        "own",
        [(k, "" if k == "signature" else v) for k, v in plain],
    ),
    "missing-expires": lambda plain, inline: ("own", [p for p in plain if p[0] != "expires"]),
    "inline-signature-on-plain": lambda plain, inline: (
        "own",
        [(k, dict(inline)["signature"] if k == "signature" else v) for k, v in plain],
    ),
}


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("tampering", list(TAMPERINGS))
async def test_tampered_link_is_refused(
    client: httpx.AsyncClient, settings: Settings, tampering: str, method: str
) -> None:
    meta = await upload(client, DATA, max_downloads=1)
    other = await upload(client, OTHER, max_downloads=1)
    plain_url = await link(client, meta["uid"])
    inline_url = await link(client, meta["uid"], inline="true")
    which, params = TAMPERINGS[tampering](query_of(plain_url), query_of(inline_url))
    uid = other["uid"] if which == "other" else meta["uid"]
    assert params != query_of(plain_url) or uid != meta["uid"]

    assert_forbidden(await client.request(method, f"/api/v1/files/{uid}?{urlencode(params)}"))
    # Nothing was spent: both files still have their one download, through their real links.
    for record in (meta, other):
        metadata = await client.get(
            f"/api/v1/files/{record['uid']}/metadata", headers=bearer(OWNER)
        )
        assert metadata.json()["downloads"] == 0
    assert (await client.get(plain_url)).content == DATA
    await assert_clean(settings, {meta["uid"]: None, other["uid"]: None})


async def test_link_expires_in_above_the_maximum_is_422(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    meta = await upload(client, DATA)
    url = f"/api/v1/files/{meta['uid']}/link"
    for bad in (MAX_LINK_S + 1, 0, -5, "soon"):
        response = await client.get(url, params={"expires_in": bad}, headers=bearer(OWNER))
        assert response.status_code == 422, (bad, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    ok = await client.get(url, params={"expires_in": MAX_LINK_S}, headers=bearer(OWNER))
    assert ok.status_code == 200
    assert (await client.get(ok.json()["url"])).content == DATA
    await assert_clean(settings, {meta["uid"]: None})


async def test_link_for_unknown_or_gone_files(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    unknown = await client.get(f"/api/v1/files/{'a' * 26}/link", headers=bearer(OWNER))
    assert unknown.status_code == 404
    not_a_uid = await client.get("/api/v1/files/not-a-uid/link", headers=bearer(OWNER))
    assert not_a_uid.status_code == 404
    meta = await upload(client, DATA)
    url = await link(client, meta["uid"])
    deleted = await client.delete(
        f"/api/v1/files/{meta['uid']}", headers={"X-Delete-Token": meta["delete_token"]}
    )
    assert deleted.status_code == 204
    # A valid signature does not bring a deleted file back.
    assert (await client.get(url)).status_code == 410
    gone = await client.get(f"/api/v1/files/{meta['uid']}/link", headers=bearer(OWNER))
    assert gone.status_code == 410
    await assert_clean(settings, {meta["uid"]: "deleted"})


async def test_link_without_signing_secret_is_404(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with fresh_client(settings) as client:
        meta = await upload(client, DATA)
        response = await client.get(f"/api/v1/files/{meta['uid']}/link")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert "signed links are not configured" in response.json()["detail"]
        await assert_clean(settings, {meta["uid"]: None})


async def test_secret_without_requirement_keeps_plain_downloads_and_signed_links_working(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(signing_secret=SECRET)
    async with fresh_client(settings) as client:
        meta = await upload(client, DATA)
        assert (await client.get(f"/api/v1/files/{meta['uid']}")).content == DATA
        assert (await client.get(await link(client, meta["uid"]))).content == DATA
        await assert_clean(settings, {meta["uid"]: None})


def test_require_signed_downloads_without_secret_is_a_settings_error(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ValidationError, match="MEDIASVC_SIGNING_SECRET"):
        make_settings(require_signed_downloads=True, api_keys=KEYS)
    assert make_settings(
        require_signed_downloads=True, signing_secret=SECRET, api_keys=KEYS
    ).signing_secret


@pytest.mark.parametrize("require", [True, False], ids=["required", "links-only"])
@pytest.mark.parametrize(
    "secret",
    ["", "s", "x" * (MIN_SIGNING_SECRET_BYTES - 1), "é" * 15],
    ids=["empty", "1-byte", "31-bytes", "30-bytes-15-chars"],
)
def test_a_signing_secret_shorter_than_32_bytes_is_a_settings_error(
    make_settings: Callable[..., Settings], secret: str, require: bool
) -> None:
    """An empty key signed links anyone could compute: the service must not start with it."""
    with pytest.raises(ValidationError) as refused:
        make_settings(require_signed_downloads=require, signing_secret=secret, api_keys=KEYS)
    line = describe_error(refused.value)
    n_bytes = len(secret.encode())
    assert f"MEDIASVC_SIGNING_SECRET is {n_bytes} bytes, signed links need at least 32" in line
    assert "openssl rand -hex 32" in line
    if len(secret) > 1:
        assert secret not in line  # never printed


def test_a_32_byte_signing_secret_is_enough(make_settings: Callable[..., Settings]) -> None:
    for secret in ("x" * MIN_SIGNING_SECRET_BYTES, "é" * 16):  # bytes, not characters
        settings = make_settings(
            require_signed_downloads=True, signing_secret=secret, api_keys=KEYS
        )
        assert settings.signing_secret is not None


# --- one rule for every route that reveals a file ------------------------------------------------

# Routes that show a file's bytes, or facts that confirm a guess of them (name, size, sha256).
REVEALING = {
    "GET /files/{uid}": ("GET", ""),
    "HEAD /files/{uid}": ("HEAD", ""),
    "GET /files/{uid}/metadata": ("GET", "/metadata"),
    # Not a picture or a video (probed first, so the answer does not race the probe): a caller
    # that passes the rule gets the preview's own 404.
    "GET /files/{uid}/preview": ("GET", "/preview"),
}
# credential → expected status when the rule lets the caller through (None) or not.
READ_CREDENTIALS: dict[str, tuple[dict[str, str] | str, int | None]] = {
    "nothing": ({}, 403),
    "signed-link": ("link", None),
    "owner-key": (bearer(OWNER), None),
    "admin-key": (bearer(ADMIN), None),
    "another-users-key": (bearer(STRANGER), 403),
    "unknown-key": (bearer("not-a-configured-key"), 403),
    "basic-scheme": ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, 401),
    "signed-link-of-another-file": ("other-link", 403),
}


@pytest.mark.parametrize("credential", list(READ_CREDENTIALS))
@pytest.mark.parametrize("route", list(REVEALING))
async def test_every_route_that_reveals_a_file_follows_the_download_rule(
    client: httpx.AsyncClient, settings: Settings, route: str, credential: str
) -> None:
    """Metadata and preview answer exactly when the download does: a link or the owner's key."""
    meta = await upload(client, DATA, max_downloads=1)
    other = await upload(client, OTHER)
    await probed(client, meta["uid"], headers=bearer(ADMIN))
    method, suffix = REVEALING[route]
    given, refused_with = READ_CREDENTIALS[credential]
    url = f"/api/v1/files/{meta['uid']}{suffix}"
    headers: dict[str, str] = {}
    if given == "link":
        url += "?" + urlsplit(await link(client, meta["uid"])).query
    elif given == "other-link":
        url += "?" + urlsplit(await link(client, other["uid"])).query
    else:
        assert isinstance(given, dict)
        headers = given

    response = await client.request(method, url, headers=headers)
    if refused_with is not None:
        assert response.status_code == refused_with, response.text
        if method == "GET":
            assert response.headers["content-type"] == "application/problem+json"
            assert "sha256" not in response.text and meta["sha256"] not in response.text
    elif suffix == "/preview":
        assert response.status_code == 404, response.text
        assert "not a video or an image" in response.json()["detail"]
    else:
        assert response.status_code == 200, response.text
        if suffix == "/metadata":
            assert response.json()["sha256"] == meta["sha256"]
        elif method == "GET":
            assert response.content == DATA
        else:
            assert response.headers["content-length"] == str(len(DATA))
    # Refusals, metadata and HEAD cost nothing; only a GET of the bytes used the one download.
    spent = 1 if refused_with is None and route == "GET /files/{uid}" else 0
    counted = await client.get(f"/api/v1/files/{meta['uid']}/metadata", headers=bearer(ADMIN))
    assert counted.json()["downloads"] == spent
    await assert_clean(settings, {meta["uid"]: None, other["uid"]: None})


@pytest.mark.parametrize("suffix", ["", "/metadata", "/preview"])
async def test_an_unknown_uid_without_credentials_is_403_not_404(
    client: httpx.AsyncClient, settings: Settings, suffix: str
) -> None:
    """Without a credential the answer does not tell which UIDs exist."""
    response = await client.get(f"/api/v1/files/{'a' * 26}{suffix}")
    assert_forbidden(response)
    with_key = await client.get(f"/api/v1/files/{'a' * 26}{suffix}", headers=bearer(OWNER))
    assert with_key.status_code == 404


async def test_link_needs_the_owners_or_an_admin_key_when_signed_downloads_are_required(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    uid = (await upload(client, DATA))["uid"]
    url = f"/api/v1/files/{uid}/link"
    nothing = await client.get(url)
    assert nothing.status_code == 401, nothing.text
    assert nothing.headers["www-authenticate"].startswith("Bearer")
    assert (await client.get(url, headers=bearer(STRANGER))).status_code == 403
    # A signed link does not mint another (it could outlive the first).
    signed = urlsplit(await link(client, uid)).query
    assert (await client.get(f"{url}?{signed}")).status_code == 401
    for key in (OWNER, ADMIN):
        minted = await client.get(url, headers=bearer(key))
        assert minted.status_code == 200
        assert (await client.get(minted.json()["url"])).content == DATA
    await assert_clean(settings, {uid: None})


def test_require_signed_downloads_without_api_keys_is_a_settings_error(
    make_settings: Callable[..., Settings],
) -> None:
    """Without keys anyone may call /link and mint a valid link for any UID."""
    with pytest.raises(ValidationError, match="MEDIASVC_API_KEYS"):
        make_settings(require_signed_downloads=True, signing_secret=SECRET)
    assert make_settings(require_signed_downloads=True, signing_secret=SECRET, api_keys=KEYS)


def test_serve_refuses_to_start_with_signed_downloads_and_no_keys(
    start_server: Callable[..., RunningServer], pg_url: str
) -> None:
    env = {
        "MEDIASVC_DATABASE_URL": pg_url,
        "MEDIASVC_REQUIRE_SIGNED_DOWNLOADS": "true",
        "MEDIASVC_SIGNING_SECRET": SECRET,
    }
    with pytest.raises(RuntimeError, match="MEDIASVC_API_KEYS") as refused:
        start_server(env)
    assert "server exited" in str(refused.value)
