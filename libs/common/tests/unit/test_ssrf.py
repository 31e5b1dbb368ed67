"""The SSRF guard refuses non-public targets and pins connections to the checked address."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from cadenza_common.ssrf import (
    SsrfRefused,
    check_address,
    host_allowed,
    pinned_client,
    resolve_and_check,
)


def fixed_resolver(*addresses: str):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://10.1.2.3/",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[fd12::1]/",
        "http://[fe80::1]/",
        "http://100.64.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
    ],
)
async def test_refuses_non_public_addresses(url: str) -> None:
    with pytest.raises(SsrfRefused):
        await resolve_and_check(url, allow_private=False)


async def test_refuses_hostname_resolving_to_loopback() -> None:
    with pytest.raises(SsrfRefused, match="loopback"):
        await resolve_and_check("http://localhost:8080/", allow_private=False)


async def test_refuses_when_any_resolved_address_is_private() -> None:
    resolver = fixed_resolver("93.184.216.34", "10.0.0.5")

    with pytest.raises(SsrfRefused, match=r"10\.0\.0\.5"):
        await resolve_and_check("https://example.test/", allow_private=False, resolver=resolver)


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "gopher://x/", "//x"])
async def test_refuses_schemes_other_than_http(url: str) -> None:
    with pytest.raises(SsrfRefused, match="scheme"):
        await resolve_and_check(url, allow_private=True)


async def test_allows_loopback_when_explicitly_allowed() -> None:
    target = await resolve_and_check("http://127.0.0.1:9000/x", allow_private=True)

    assert target.address == ipaddress.ip_address("127.0.0.1")
    assert target.port == 9000


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://metadata.google.internal/"],
)
async def test_refuses_cloud_metadata_even_when_private_allowed(url: str) -> None:
    with pytest.raises(SsrfRefused, match="metadata"):
        await resolve_and_check(url, allow_private=True)


async def test_accepts_public_address() -> None:
    target = await resolve_and_check(
        "https://api.example.test/v1", allow_private=False, resolver=fixed_resolver("8.8.8.8")
    )

    assert str(target.address) == "8.8.8.8"
    assert target.host == "api.example.test"
    assert target.port == 443


async def test_refuses_host_outside_allowed_hosts() -> None:
    with pytest.raises(SsrfRefused, match="allowed hosts"):
        await resolve_and_check(
            "http://evil.test/", allow_private=True, allowed_hosts=["api.good.test"]
        )


def test_allowed_hosts_match_exactly_or_by_wildcard() -> None:
    assert host_allowed("API.good.test", ["api.good.test"])
    assert host_allowed("eu.good.test", ["*.good.test"])
    assert not host_allowed("good.test.evil", ["*.good.test"])
    assert not host_allowed("notgood.test", ["*.good.test"])


def test_check_address_allows_private_only_when_asked() -> None:
    check_address(ipaddress.ip_address("10.0.0.1"), allow_private=True)

    with pytest.raises(SsrfRefused):
        check_address(ipaddress.ip_address("10.0.0.1"), allow_private=False)


async def test_pinned_client_refuses_before_connecting() -> None:
    async with pinned_client(allow_private=False) as client:
        with pytest.raises(SsrfRefused):
            await client.get("http://127.0.0.1:1/")


async def test_pinned_client_connects_to_the_checked_address_keeping_the_host_header() -> None:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    async with server, pinned_client(allow_private=True, resolver=resolver) as client:
        response = await client.get(f"http://svc.internal.test:{port}/x")

    assert response.text == "ok"
    assert calls == ["svc.internal.test"]
    assert f"host: svc.internal.test:{port}".encode() in seen[0].lower()


async def test_pinned_client_refuses_a_name_that_rebinds_to_a_private_address() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["10.0.0.7"]

    async with pinned_client(allow_private=False, resolver=resolver) as client:
        with pytest.raises(SsrfRefused, match=r"10\.0\.0\.7"):
            await client.get("http://rebind.test/")
