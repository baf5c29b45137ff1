"""SSRF guards: URL policy, address classes, and the resolver-checked connect."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import httpx
import pytest

from router.errors import ValidationFailed
from router.ssrf import (
    BlockedAddress,
    UrlPolicy,
    address_problem,
    check_url,
    guarded_client,
    safe_get,
    url_problem,
)

POLICY = UrlPolicy("callback_url", ("hooks.trusted.test", "127.0.0.1"))
BAD_ADDRESSES = [
    "127.0.0.1",
    "127.1.2.3",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.169.254",
    "169.254.10.10",
    "0.0.0.0",
    "224.0.0.1",
    "::1",
    "fd00::1",
    "fc00::5",
    "fe80::1",
    "::ffff:127.0.0.1",
    "::ffff:8.8.8.8",
    "2002:7f00:1::",  # 6to4 embedding 127.0.0.1
    "::",
    "ff02::1",
    "240.0.0.1",
]


class FakeResolver:
    """Resolves every name to fixed addresses; a sequence of answers models DNS rebinding."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def resolve(self, host: str, port: int) -> list[str]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return answer


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_internal_addresses_are_refused(address: str) -> None:
    """Loopback, private, link-local, metadata, ULA, mapped, unspecified, multicast: refused."""
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    """Ordinary public addresses are fine."""
    assert address_problem(ipaddress.ip_address(address)) is None


def test_trusted_hosts_may_be_private_but_never_metadata() -> None:
    """An allow-listed host may reach private addresses, never the metadata service."""
    assert address_problem(ipaddress.ip_address("10.1.2.3"), trusted=True) is None
    assert address_problem(ipaddress.ip_address("127.0.0.1"), trusted=True) is None
    for bad in ("169.254.169.254", "fd00:ec2::254", "0.0.0.0", "224.0.0.1"):
        assert address_problem(ipaddress.ip_address(bad), trusted=True) is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",  # http for an untrusted host
        "ftp://example.com/x",
        "https://user:pw@example.com/x",
        "https://example.com:22/x",
        "https://127.0.0.1/x",
        "https://10.0.0.1/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/x",
        "https://[fd00::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://localhost/x",
        "https://metadata.google.internal/x",
        "https://example.com:99999/x",
        "/relative",
    ],
)
def test_url_policy_refuses_before_any_lookup(url: str) -> None:
    """Scheme, credentials, port and literal internal addresses are refused outright."""
    assert url_problem(url, UrlPolicy("callback_url")) is not None


def test_url_policy_trusts_allow_listed_hosts_but_not_a_bare_star() -> None:
    """An allow-listed host may use http and a private address; ``*`` trusts nobody."""
    assert url_problem("http://hooks.trusted.test:8080/x", POLICY) is None
    assert url_problem("http://127.0.0.1:9000/x", POLICY) is None
    star = UrlPolicy("callback_url", ("*",))
    assert url_problem("https://127.0.0.1/x", star) is not None
    assert url_problem("https://example.com/x", star) is None


@pytest.mark.parametrize("address", BAD_ADDRESSES[:12])
async def test_check_url_refuses_names_resolving_inside(address: str) -> None:
    """A public-looking name that resolves to an internal address is a 422 on the field."""
    with pytest.raises(ValidationFailed) as info:
        await check_url("https://evil.test/x", POLICY, FakeResolver([address]))
    assert info.value.errors[0].field == "callback_url"


async def test_one_bad_address_among_good_ones_refuses() -> None:
    """A name with a public and a private address is refused (any bad address)."""
    with pytest.raises(ValidationFailed):
        await check_url("https://evil.test/x", POLICY, FakeResolver(["8.8.8.8", "10.0.0.1"]))


async def test_check_url_passes_public_and_unresolvable_names() -> None:
    """Public answers pass; a name that does not resolve is left to the fetch-time guard."""
    await check_url("https://good.test/x", POLICY, FakeResolver(["93.184.216.34"]))

    class Broken:
        async def resolve(self, host: str, port: int) -> list[str]:
            raise OSError("NXDOMAIN")

    await check_url("https://nowhere.test/x", POLICY, Broken())


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A tiny HTTP server on 127.0.0.1 that records requests; ``/redirect`` answers 302."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        if head.startswith(b"GET /redirect"):
            writer.write(
                b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\n"
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, seen
    finally:
        server.close()
        await server.wait_closed()


async def test_guarded_client_refuses_at_connect_time(
    http_server: tuple[int, list[bytes]],
) -> None:
    """A name resolving to loopback is refused when connecting; nothing reaches the server."""
    port, seen = http_server
    policy = UrlPolicy("input_image_url", ("trusted.test",), ports=frozenset({port}))
    async with guarded_client(policy, FakeResolver(["127.0.0.1"])) as client:
        with pytest.raises(BlockedAddress):
            await client.get(f"http://evil.test:{port}/x")
    assert seen == []


async def test_dns_rebinding_after_the_admission_check_is_caught(
    http_server: tuple[int, list[bytes]],
) -> None:
    """The admission check sees a public address, the connect sees loopback: refused."""
    port, seen = http_server
    policy = UrlPolicy("callback_url", ports=frozenset({port}))
    resolver = FakeResolver(["93.184.216.34"], ["127.0.0.1"])
    await check_url(f"https://rebind.test:{port}/x", policy, resolver)
    async with guarded_client(policy, resolver) as client:
        with pytest.raises(BlockedAddress):
            await client.get(f"https://rebind.test:{port}/x")
    assert seen == []


async def test_trusted_host_connects_to_the_checked_address_with_its_own_name(
    http_server: tuple[int, list[bytes]],
) -> None:
    """An allow-listed name connects to the address it resolved to, keeping its Host."""
    port, seen = http_server
    policy = UrlPolicy("callback_url", ("hooks.trusted.test",))
    async with guarded_client(policy, FakeResolver(["127.0.0.1"])) as client:
        response = await client.get(f"http://hooks.trusted.test:{port}/x")
    assert response.status_code == 200
    assert f"host: hooks.trusted.test:{port}".encode() in seen[0].lower()


async def test_redirects_are_not_followed(http_server: tuple[int, list[bytes]]) -> None:
    """A 302 towards the metadata address is a failure, and no second request is made."""
    port, seen = http_server
    policy = UrlPolicy("input_image_url", ("img.trusted.test",))
    async with guarded_client(policy, FakeResolver(["127.0.0.1"])) as client:
        with pytest.raises(ValueError, match="302"):
            await safe_get(client, f"http://img.trusted.test:{port}/redirect", policy, max_bytes=10)
        assert await safe_get(client, f"http://img.trusted.test:{port}/x", policy, max_bytes=10)
        with pytest.raises(ValueError, match="larger"):
            await safe_get(client, f"http://img.trusted.test:{port}/x", policy, max_bytes=1)
    assert len(seen) == 3


async def test_blocked_address_is_an_httpx_transport_error() -> None:
    """Code that handles ``httpx.HTTPError`` already handles a refused connect."""
    policy = UrlPolicy("callback_url")
    async with guarded_client(policy, FakeResolver(["10.0.0.7"])) as client:
        with pytest.raises(httpx.HTTPError):
            await client.post("https://evil.test/x", content=b"{}")
