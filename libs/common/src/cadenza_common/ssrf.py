"""SSRF guard for every outbound HTTP call: check the URL and its resolved addresses, pin them.

Rules:
- only `http` and `https` URLs with a host;
- every address the host resolves to must be public; loopback, private (RFC 1918),
  shared (100.64/10), link-local, unique-local (fc00::/7), site-local, multicast,
  unspecified and reserved addresses are refused unless `allow_private=True`;
- cloud metadata endpoints (169.254.169.254, fd00:ec2::254, 100.100.100.200, ...) are
  refused always, even with `allow_private`;
- when `allowed_hosts` is given (a connection's list), the host must match one entry
  exactly or a `*.suffix` wildcard.

No DNS rebinding: `PinnedTransport` resolves and checks every request itself and then
connects to the address it checked (the URL's host is replaced by the IP; the `Host`
header and TLS SNI/certificate check keep the original name). Because the check runs
per request inside the transport, a redirect followed by httpx is re-checked too; the
transport refuses redirects outright unless `follow_redirects` is enabled on the client.

Usage:
    target = await resolve_and_check(url, allow_private=False)      # raises SsrfRefused
    async with httpx.AsyncClient(transport=PinnedTransport(allow_private=False)) as c:
        await c.get(url)                                             # raises SsrfRefused
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS DNS / IMDS neighbours
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)
METADATA_HOSTNAMES = frozenset({"metadata.google.internal", "metadata", "instance-data"})

Resolver = Callable[[str, int], Awaitable[list[str]]]


class SsrfRefused(Exception):
    """An outbound request the SSRF guard refuses; `reason` says why (safe to show users)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CheckedTarget:
    """A URL whose host resolved only to allowed addresses; connect to `address`."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]

    @property
    def address(self) -> IPAddress:
        """The checked address to connect to (the first one resolved)."""
        return self.addresses[0]


def check_address(address: IPAddress, *, allow_private: bool) -> None:
    """Refuse an address that is not allowed.

    Args:
        address: the resolved IP address.
        allow_private: allow loopback/private/link-local/unique-local addresses.

    Raises:
        SsrfRefused: the address is a metadata endpoint, multicast/unspecified/reserved,
            or non-public while `allow_private` is false.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        raise SsrfRefused(f"address {address} is a cloud metadata endpoint")
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        raise SsrfRefused(f"address {address} is multicast, unspecified or reserved")
    if not allow_private and not address.is_global:
        raise SsrfRefused(f"address {address} is not public ({_kind(address)})")


def _kind(address: IPAddress) -> str:
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if isinstance(address, ipaddress.IPv6Address) and address in ipaddress.ip_network("fc00::/7"):
        return "unique-local"
    return "private"


def host_allowed(host: str, allowed_hosts: Sequence[str]) -> bool:
    """True when `host` matches an entry exactly or a `*.suffix` wildcard (case-insensitive)."""
    host = host.lower().rstrip(".")
    for entry in (e.lower().rstrip(".") for e in allowed_hosts):
        if entry == host or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve `host` with the system resolver (getaddrinfo), returning unique addresses."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SsrfRefused(f"host {host!r} does not resolve: {exc.strerror}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(
    url: str, *, allow_private: bool, allowed_hosts: Sequence[str] = ()
) -> tuple[str, str, int]:
    """The checks that need no DNS: scheme, host, allowed hosts, and an IP-literal host.

    Use it before handing a URL to a client whose resolver checks names (see
    `resolve_and_check` for the full check).

    Returns:
        The URL's scheme, host and port.

    Raises:
        SsrfRefused: a bad scheme, no host, a host not allowed, or a refused IP literal.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise SsrfRefused(f"scheme {scheme or '(none)'!r} is not allowed (only http and https)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise SsrfRefused("URL has no host")
    if host.lower() in METADATA_HOSTNAMES:
        raise SsrfRefused(f"host {host!r} is a cloud metadata endpoint")
    if allowed_hosts and not host_allowed(host, allowed_hosts):
        raise SsrfRefused(f"host {host!r} is not in the connection's allowed hosts")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise SsrfRefused("URL has an invalid port") from None
    literal = ip_literal(host)
    if literal is not None:
        check_address(literal, allow_private=allow_private)
    return scheme, host, port


def ip_literal(host: str) -> IPAddress | None:
    """The address when `host` is an IP literal, else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve_and_check(
    url: str,
    *,
    allow_private: bool,
    allowed_hosts: Sequence[str] = (),
    resolver: Resolver = system_resolver,
) -> CheckedTarget:
    """Parse, resolve and check an outbound URL.

    Args:
        url: the absolute URL to call.
        allow_private: allow non-public addresses (tests, local development, private links).
        allowed_hosts: when non-empty, the host must match one of these.
        resolver: how to resolve names (default: the system resolver).

    Returns:
        The target with every resolved address checked.

    Raises:
        SsrfRefused: a bad scheme, a host not allowed, or any resolved address refused.
    """
    scheme, host, port = check_url(url, allow_private=allow_private, allowed_hosts=allowed_hosts)
    addresses = await _addresses(host, port, resolver)
    for address in addresses:
        check_address(address, allow_private=allow_private)
    return CheckedTarget(url=url, scheme=scheme, host=host, port=port, addresses=addresses)


async def _addresses(host: str, port: int, resolver: Resolver) -> tuple[IPAddress, ...]:
    literal = ip_literal(host)
    if literal is not None:
        return (literal,)
    resolved = await resolver(host, port)
    if not resolved:
        raise SsrfRefused(f"host {host!r} does not resolve")
    # getaddrinfo may return scoped IPv6 addresses (`fe80::1%eth0`): drop the scope
    return tuple(ipaddress.ip_address(a.split("%", 1)[0]) for a in resolved)


class PinnedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that SSRF-checks every request and connects to the checked address.

    The request's URL host is replaced by the checked IP; the `Host` header (set by httpx
    from the original URL) and the TLS SNI / certificate hostname stay the original name.
    Checked resolutions are cached for `cache_ttl_s` seconds (0 disables the cache).
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        allowed_hosts: Sequence[str] = (),
        resolver: Resolver = system_resolver,
        cache_ttl_s: float = 30.0,
        **transport_options: Any,
    ) -> None:
        self._allow_private = allow_private
        self._allowed_hosts = tuple(allowed_hosts)
        self._resolver = resolver
        self._ttl = cache_ttl_s
        self._cache: dict[tuple[str, str, int], tuple[float, CheckedTarget]] = {}
        self._inner = httpx.AsyncHTTPTransport(**transport_options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Check the request's target, pin it to the checked address and send it."""
        target = await self._check(request.url)
        address = target.address
        request.url = request.url.copy_with(host=str(address))
        if target.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": target.host}
        return await self._inner.handle_async_request(request)

    async def _check(self, url: httpx.URL) -> CheckedTarget:
        key = (url.scheme, url.host, url.port or 0)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        target = await resolve_and_check(
            str(url),
            allow_private=self._allow_private,
            allowed_hosts=self._allowed_hosts,
            resolver=self._resolver,
        )
        if self._ttl > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now + self._ttl, target)
        return target

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._inner.aclose()


def pinned_client(
    *,
    allow_private: bool = False,
    allowed_hosts: Sequence[str] = (),
    follow_redirects: bool = False,
    resolver: Resolver = system_resolver,
    **client_options: Any,
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` whose every request (and redirect hop) goes through the guard.

    Redirects are not followed by default (a 3xx comes back as the response); with
    `follow_redirects=True` each hop is re-checked by the transport.
    """
    limits = client_options.pop("limits", httpx.Limits())
    transport = PinnedTransport(
        allow_private=allow_private,
        allowed_hosts=allowed_hosts,
        resolver=resolver,
        limits=limits,
    )
    return httpx.AsyncClient(
        transport=transport, follow_redirects=follow_redirects, trust_env=False, **client_options
    )


__all__ = [
    "CheckedTarget",
    "PinnedTransport",
    "SsrfRefused",
    "check_address",
    "check_url",
    "host_allowed",
    "ip_literal",
    "pinned_client",
    "resolve_and_check",
    "system_resolver",
]
