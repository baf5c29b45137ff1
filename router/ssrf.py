"""Server-side request forgery guards for caller-supplied URLs (OWASP API7).

Two URLs in a request make Switchman itself connect somewhere the caller chose:
``callback_url`` (the job is POSTed there) and ``input_image_url`` (some adapters
download it). Without a guard either one reaches the cloud metadata service, the
loopback admin ports of the host, or anything on the private network.

The rules (:class:`UrlPolicy`):

- ``https`` only, no credentials in the URL; ``http`` only for an allow-listed host.
- Every address the host resolves to must be public: not loopback, private (RFC 1918,
  CGNAT), link-local (including the metadata address ``169.254.169.254``), unique-local
  (``fd00::/8``), IPv4-mapped or -embedded IPv6 (``::ffff:127.0.0.1``), unspecified,
  multicast or reserved. One bad address refuses the URL (a name that resolves to a
  public and a private address is an attack, not a mistake).
- A host matching the allow list (``security.callback_hosts`` for callbacks,
  ``security.input_image_hosts`` for input images; ``fnmatch`` globs) is trusted with
  private addresses and ``http`` — that is what allow-listing an internal service
  means. A bare ``*`` admits any host name but trusts none, and metadata, unspecified
  and multicast addresses are refused even for an allow-listed host.
- No redirects are followed (a redirect could point anywhere); a 3xx is a failure.

Checks happen twice. At admission :func:`check_url` resolves the host and refuses the
request with a 422 naming the field, so a caller learns at once. At fetch time the
address is checked again *at connect time* by :class:`GuardedBackend`, an httpcore
network backend: it resolves the name itself, checks every address, and opens the TCP
connection to the checked IP. The URL, the ``Host`` header and TLS SNI/certificate
verification keep the host *name* (httpcore starts TLS with ``server_hostname`` taken
from the URL, not from the address it connected to), so a DNS answer that changes
between the check and the connect (DNS rebinding) cannot slip a private address in.
:func:`guarded_client` builds an ``httpx.AsyncClient`` on that backend; a refused
connect raises :class:`BlockedAddress`, an ``httpx.ConnectError``, so code that already
handles transport errors handles it too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import urlsplit

import httpcore
import httpx

from router.errors import FieldError, ValidationFailed
from router.http_client import CycleFreeClient

__all__ = [
    "BlockedAddress",
    "GuardedBackend",
    "Resolver",
    "SystemResolver",
    "UrlPolicy",
    "address_problem",
    "check_url",
    "guarded_client",
    "read_capped",
    "safe_get",
    "url_problem",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: httpcore's socket option shapes.
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)

#: Cloud metadata endpoints (AWS/GCP/Azure/OpenStack share the IPv4 one; AWS's IPv6 one).
_METADATA: Final = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")


class BlockedAddress(httpx.ConnectError):
    """A connection Switchman refused to open: the host resolves to a forbidden address."""


class Resolver(Protocol):
    """Name resolution, injectable so tests can make any name resolve anywhere."""

    async def resolve(self, host: str, port: int) -> list[str]:
        """Every address ``host`` resolves to (raise ``OSError`` when it does not)."""
        ...


class SystemResolver:
    """The system resolver (``getaddrinfo``) through the event loop's executor."""

    async def resolve(self, host: str, port: int) -> list[str]:
        """Every TCP address of ``host``, in the resolver's order, without duplicates."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        seen: dict[str, None] = {}
        for *_, sockaddr in infos:
            seen.setdefault(str(sockaddr[0]), None)
        return list(seen)


def address_problem(ip: IPAddress, *, trusted: bool = False) -> str | None:
    """Why Switchman must not connect to ``ip`` (``None``: it may).

    ``trusted`` (an allow-listed host) permits private, loopback and link-local
    addresses but never metadata, unspecified or multicast ones.
    """
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            # Some stacks connect ::ffff:a.b.c.d to a.b.c.d: judge the embedded address,
            # and refuse the form itself for untrusted hosts (no public name needs it).
            inner = address_problem(ip.ipv4_mapped, trusted=trusted)
            return inner if inner or trusted else "an IPv4-mapped IPv6 address"
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not trusted:
            return "an IPv6 address embedding an IPv4 one"
    if trusted:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.ip_network("fc00::/7"):
        return "a unique-local address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a shared (CGNAT) address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved address"
    return None


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """Which URLs one kind of outbound fetch may reach (see the module doc)."""

    #: The request field the URL came from, for error messages (``callback_url``).
    field: str
    #: ``fnmatch`` globs of trusted hosts (lower-case compared).
    allow_hosts: tuple[str, ...] = ()
    #: Ports an untrusted host may use; an allow-listed host may use any.
    ports: frozenset[int] = dataclasses.field(default_factory=lambda: frozenset({443, 8443}))

    def trusts(self, host: str) -> bool:
        """Whether ``host`` is allow-listed by a pattern narrower than a bare ``*``."""
        host = host.lower().rstrip(".")
        return any(
            p.strip() != "*" and fnmatch.fnmatchcase(host, p.lower()) for p in self.allow_hosts
        )


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def url_problem(url: str, policy: UrlPolicy) -> str | None:
    """Why ``url`` is refused before any lookup (scheme, credentials, port, literal IP)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "expected an absolute URL"
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        return "expected an absolute https URL"
    if parts.username or parts.password:
        return "credentials in the URL are not allowed"
    trusted = policy.trusts(host)
    if parts.scheme != "https" and not trusted:
        return "expected an https URL (http only for an allow-listed host)"
    if port is not None and not trusted and port not in policy.ports:
        return f"port {port} is not allowed (allowed: {sorted(policy.ports)})"
    ip = _literal_ip(host)
    if ip is not None and (why := address_problem(ip, trusted=trusted)) is not None:
        return f"{host} is {why}"
    internal = host == "localhost" or host.endswith((".localhost", ".local", ".internal"))
    if internal and not trusted:
        return f"host {host!r} is internal"
    return None


async def check_url(
    url: str, policy: UrlPolicy, resolver: Resolver | None = None, *, timeout_s: float = 2.0
) -> None:
    """Refuse (422 on ``policy.field``) a URL that would reach a forbidden address.

    A name that does not resolve (or not in time) is let through: it is not an SSRF
    target now, and the fetch-time guard checks whatever it resolves to later.
    """
    why = url_problem(url, policy)
    if why is None:
        why = await _resolved_problem(url, policy, resolver or SystemResolver(), timeout_s)
    if why is not None:
        raise ValidationFailed([FieldError(policy.field, why)])


async def _resolved_problem(
    url: str, policy: UrlPolicy, resolver: Resolver, timeout_s: float
) -> str | None:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if _literal_ip(host) is not None or policy.trusts(host):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(timeout_s):
            addresses = await resolver.resolve(host, port)
    except (OSError, TimeoutError, UnicodeError):
        return None
    for text in addresses:
        ip = _literal_ip(text.split("%", 1)[0])
        if ip is None:
            return f"{host} resolves to an unparseable address"
        if (why := address_problem(ip)) is not None:
            return f"{host} resolves to {why}"
    return None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to checked addresses.

    ``connect_tcp`` gets the URL's host *name*; it resolves the name itself, refuses
    the connection when any address is forbidden, and connects to the first checked
    address. TLS still verifies the certificate against the name (httpcore passes the
    URL host as ``server_hostname``), and the ``Host`` header is the URL's.
    """

    def __init__(
        self,
        policy: UrlPolicy,
        resolver: Resolver | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.resolver = resolver or SystemResolver()
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve, check every address, then connect to the checked one."""
        trusted = self.policy.trusts(host)
        literal = _literal_ip(host)
        if literal is not None:
            addresses: Sequence[str] = [str(literal)]
        else:
            try:
                addresses = await self.resolver.resolve(host, port)
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to nothing")
        checked: list[str] = []
        for text in addresses:
            ip = _literal_ip(text.split("%", 1)[0])
            why = "unparseable" if ip is None else address_problem(ip, trusted=trusted)
            if why is not None:
                raise BlockedAddress(f"refused to connect: {host} resolves to {why}")
            checked.append(text)
        return await self.inner.connect_tcp(
            checked[0],
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: an outbound fetch has no business with local sockets."""
        raise BlockedAddress("refused to connect to a unix socket")

    async def sleep(self, seconds: float) -> None:
        """Delegate (httpcore's retry backoff)."""
        await self.inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport with its connection pool on a :class:`GuardedBackend`."""

    def __init__(self, backend: GuardedBackend, limits: httpx.Limits) -> None:
        super().__init__(trust_env=False, limits=limits)
        # The pool is rebuilt because httpx offers no network-backend argument.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


def guarded_client(
    policy: UrlPolicy,
    resolver: Resolver | None = None,
    *,
    timeout_s: float = 10.0,
    max_connections: int = 50,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose every connection passes :class:`GuardedBackend`.

    It follows no redirects and ignores proxy environment variables (a proxy would
    connect on our behalf, beyond the guard).
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=10)
    return CycleFreeClient(
        transport=_GuardedTransport(GuardedBackend(policy, resolver), limits),
        follow_redirects=False,
        trust_env=False,
        timeout=timeout_s,
    )


async def safe_get(
    client: httpx.AsyncClient, url: str, policy: UrlPolicy, *, max_bytes: int
) -> bytes:
    """GET ``url`` through a :func:`guarded_client`: 200 only, no redirects, size-capped.

    Raises ``httpx.HTTPError`` (:class:`BlockedAddress` for a forbidden address) or
    ``ValueError`` (policy, status or size) with a message safe to show the caller.
    """
    if (why := url_problem(url, policy)) is not None:
        raise ValueError(why)
    async with client.stream("GET", url, follow_redirects=False) as response:
        return await read_capped(response, max_bytes)


async def read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """A streamed 200 response's body, refused (``ValueError``) past ``max_bytes``.

    The declared length is checked first and the running total after every chunk,
    so an oversized body is never held whole in memory.
    """
    if response.status_code != 200:
        raise ValueError(f"fetching it returned {response.status_code}")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ValueError(f"it is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ValueError(f"it is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
