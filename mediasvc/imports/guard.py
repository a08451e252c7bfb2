"""The address guard of imports: which URLs and addresses an import may reach.

Only ``http`` and ``https``. The host is resolved here and every address it resolves to must be
admitted, else the URL is refused: an address is refused when it is not globally routable
(private, loopback, link-local, multicast, reserved, unspecified, shared or documentation
ranges, IPv4 and IPv6 alike, an IPv4-mapped IPv6 address judged as its IPv4 address) unless
``import_allowed_networks`` contains it. The fetcher connects to the address checked here, not
to the name (``GuardedBackend`` checks it again at connect), so a name that resolves elsewhere
a moment later (DNS rebinding) changes nothing; every redirect goes through ``admit`` again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from mediasvc.errors import ImportRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: A resolver: (host, port) → the addresses, as strings, in the order to try them.
Resolver = Callable[[str, int], Awaitable[list[str]]]
SCHEMES = {"http": 80, "https": 443}


async def system_resolver(host: str, port: int) -> list[str]:
    """The system's resolver (getaddrinfo, in a thread of the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class Target:
    """A URL the guard admitted, and the address to connect to for it."""

    url: SplitResult
    host: str  # as in the URL (the Host header, the TLS server name)
    port: int
    address: IPAddress

    @property
    def connect_url(self) -> str:
        """The URL with the checked address in place of the name: what is connected to."""
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        path = self.url.path or "/"
        query = f"?{self.url.query}" if self.url.query else ""
        return f"{self.url.scheme}://{literal}:{self.port}{path}{query}"

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = SCHEMES[self.url.scheme]
        return name if self.port == default else f"{name}:{self.port}"


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: IPv4-mapped, 6to4, Teredo (its client) or the
    NAT64 well-known prefix."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class AddressGuard:
    def __init__(self, allowed: Iterable[IPNetwork], resolver: Resolver = system_resolver) -> None:
        self._allowed = tuple(allowed)
        self._resolver = resolver

    def is_admitted(self, address: IPAddress) -> bool:
        if any(
            address in network for network in self._allowed if network.version == address.version
        ):
            return True
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:  # reaches that IPv4 address: judged as it
                return self.is_admitted(embedded)
        # is_global is False for every private, loopback, link-local, reserved, shared (CGNAT),
        # documentation and unspecified range; multicast is refused apart (some are "global").
        return address.is_global and not address.is_multicast

    async def admit(self, url: str) -> Target:
        """The target of ``url`` if the guard lets an import reach it; ``ImportRefused`` (422)
        if not, before any connection is made."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ImportRefused(f"not a usable URL: {exc}") from None
        if parts.scheme not in SCHEMES:
            raise ImportRefused("only http and https URLs can be imported")
        host = parts.hostname
        if not host:
            raise ImportRefused("the URL has no host")
        if parts.username is not None or parts.password is not None:
            raise ImportRefused("credentials in the URL are not accepted")
        port = port or SCHEMES[parts.scheme]
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                found = await self._resolver(host, port)
            except OSError as exc:
                raise ImportRefused(f"the host {host!r} does not resolve: {exc}") from None
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in found]
        if not addresses:
            raise ImportRefused(f"the host {host!r} does not resolve")
        refused = [a for a in addresses if not self.is_admitted(a)]
        if refused:
            raise ImportRefused(
                f"the URL leads to {refused[0]}, an address imports may not reach "
                "(private, loopback, link-local, multicast or reserved; see "
                "MEDIASVC_IMPORT_ALLOWED_NETWORKS)"
            )
        return Target(url=parts, host=host, port=port, address=addresses[0])
