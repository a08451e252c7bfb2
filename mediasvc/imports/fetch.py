"""The source of an import: one GET through the address guard, redirects followed by hand (each
one admitted again, at most ``import_max_redirects``), the body as one stream of chunks that
resumes a cut transfer with ``Range`` when the source allows it.

httpcore (httpx's transport) sends the requests. Every connection goes through
``GuardedBackend``: the URL given to httpcore carries the address the guard checked, never the
name, and the backend refuses any address the guard does not admit, so nothing else can be
reached even by mistake. The Host header and the TLS server name are the URL's own host.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import httpcore
from httpcore import AsyncNetworkBackend, AsyncNetworkStream

from mediasvc.errors import ImportRefused
from mediasvc.imports.guard import AddressGuard, Target
from mediasvc.jobs.config import JobsConfig

USER_AGENT = "mediasvc-import"
REDIRECTS = {301, 302, 303, 307, 308}
#: What a transfer cut short raises: resumed with Range when the source allows it.
CUT = (httpcore.ReadError, httpcore.RemoteProtocolError, httpcore.ReadTimeout)
_CONTENT_RANGE = re.compile(rb"^bytes (\d+)-(\d+)/(\d+|\*)$")


class ImportFailed(Exception):
    """Why an import failed, in words for its status (never a path or a secret)."""


class GuardedBackend(AsyncNetworkBackend):
    """Connects only to address literals the guard admits (the last check before a packet)."""

    def __init__(self, guard: AddressGuard, inner: AsyncNetworkBackend) -> None:
        self._guard = guard
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AsyncNetworkStream:
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ImportRefused("an import connects to checked addresses only") from None
        if not self._guard.is_admitted(address):
            raise ImportRefused(f"{address} is an address imports may not reach")
        return await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@dataclass(frozen=True, slots=True)
class SourceInfo:
    length: int | None  # Content-Length of the whole body, if the source said
    content_type: str | None
    name: str | None  # the last segment of the final URL's path
    resumable: bool  # Accept-Ranges: bytes and a known length


def _header(response: httpcore.Response, name: bytes) -> bytes | None:
    for key, value in response.headers:
        if key.lower() == name:
            return bytes(value)
    return None


class Source:
    """``async with Source(...) as source``: ``open`` follows redirects to the body,
    ``chunks`` yields it, resuming where a cut left off."""

    def __init__(
        self, url: str, guard: AddressGuard, backend: AsyncNetworkBackend, config: JobsConfig
    ) -> None:
        self._url = url
        self._guard = guard
        self._config = config
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(),
            network_backend=GuardedBackend(guard, backend),
            retries=0,
            max_connections=1,
        )
        self._response: httpcore.Response | None = None
        self._final_url = url
        self._validator: bytes | None = None
        self.info: SourceInfo | None = None

    async def __aenter__(self) -> Source:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close_response()
        await self._pool.aclose()

    async def open(self) -> SourceInfo:
        """GET the URL, following redirects; the body's facts. ``ImportRefused`` when the guard
        refuses a hop, ``ImportFailed`` when the source does not give the body."""
        url = self._url
        for _ in range(self._config.import_max_redirects + 1):
            response = await self._get(await self._guard.admit(url), {})
            location = _header(response, b"location")
            if response.status in REDIRECTS and location:
                await response.aclose()
                url = urljoin(url, location.decode("latin-1"))
                continue
            if response.status != 200:
                await response.aclose()
                raise ImportFailed(f"the source answered HTTP {response.status}")
            self._response, self._final_url = response, url
            length = _header(response, b"content-length")
            ranges = (_header(response, b"accept-ranges") or b"").strip().lower()
            etag = _header(response, b"etag")
            # If-Range needs a strong validator: an ETag that is not weak, else Last-Modified.
            self._validator = (
                etag if etag and not etag.startswith(b"W/") else _header(response, b"last-modified")
            )
            content_type = _header(response, b"content-type")
            self.info = SourceInfo(
                length=int(length) if length and length.isdigit() else None,
                content_type=content_type.decode("latin-1") if content_type else None,
                name=_last_segment(url),
                resumable=ranges == b"bytes" and length is not None,
            )
            return self.info
        raise ImportFailed(f"more than {self._config.import_max_redirects} redirects")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, resumed with Range after a cut (at most ``import_max_resumes`` times)."""
        assert self.info is not None and self._response is not None
        received = 0
        resumes = 0
        while True:
            response = self._response
            try:
                async for chunk in response.aiter_stream():
                    received += len(chunk)
                    yield chunk
                return
            except CUT as exc:
                cut = f"the source cut the transfer after {received} bytes ({type(exc).__name__})"
                if not self.info.resumable:
                    raise ImportFailed(f"{cut} and does not support Range") from None
                if resumes >= self._config.import_max_resumes:
                    raise ImportFailed(f"{cut}, {resumes} resumes already") from None
                resumes += 1
            await self._close_response()
            self._response = await self._resume(received)

    async def _resume(self, offset: int) -> httpcore.Response:
        headers = {"range": f"bytes={offset}-".encode()}
        if self._validator:
            headers["if-range"] = self._validator
        target = await self._guard.admit(self._final_url)
        response = await self._get(target, headers)
        found = _CONTENT_RANGE.match((_header(response, b"content-range") or b"").strip())
        total = self.info.length if self.info else None
        if (
            response.status != 206
            or not found
            or int(found[1]) != offset
            or (found[3] != b"*" and total is not None and int(found[3]) != total)
        ):
            await response.aclose()
            raise ImportFailed(
                f"the source did not resume at byte {offset} (HTTP {response.status}): "
                "it changed, or ignores Range"
            )
        return response

    async def _get(self, target: Target, extra: dict[str, bytes]) -> httpcore.Response:
        config = self._config
        headers = {
            "host": target.host_header.encode("idna" if not target.host.isascii() else "ascii"),
            "user-agent": USER_AGENT.encode(),
            "accept-encoding": b"identity",  # the bytes as they are: their sha256 is checked
            **extra,
        }
        extensions: dict[str, Any] = {
            "timeout": {
                "connect": config.import_connect_timeout_s,
                "pool": config.import_connect_timeout_s,
                "read": config.import_idle_timeout_s,
                "write": config.import_idle_timeout_s,
            },
            "sni_hostname": target.host,
        }
        request = httpcore.Request(
            "GET", target.connect_url, headers=list(headers.items()), extensions=extensions
        )
        try:
            return await self._pool.handle_async_request(request)
        except httpcore.TimeoutException as exc:
            raise ImportFailed(
                f"the source did not answer in time ({type(exc).__name__})"
            ) from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise ImportFailed(f"could not reach the source: {type(exc).__name__}: {exc}") from None

    async def _close_response(self) -> None:
        if self._response is not None:
            await self._response.aclose()
            self._response = None


def _last_segment(url: str) -> str | None:
    segment = unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2])
    return segment or None
