"""Service-account access tokens against ``httpx.MockTransport``: signing, caching, refresh."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from structlog.testing import capture_logs

from breakers.clock import FakeClock
from router.adapters.google_auth import (
    GRANT_TYPE,
    SCOPE,
    ServiceAccount,
    ServiceAccountTokens,
)
from router.errors import UpstreamError
from tests.service_accounts import CLIENT_EMAIL, KEY_ID, key_file, pem, rsa_key

TOKEN_URI = "https://oauth2.test/token"
Handler = Callable[[httpx.Request], httpx.Response]


def account() -> ServiceAccount:
    return ServiceAccount.from_json(key_file(TOKEN_URI))


def b64url_json(segment: str) -> Any:
    return msgspec.json.decode(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def granted(value: str = "ya29.first", expires_in: int = 3600) -> httpx.Response:
    return httpx.Response(
        200, json={"access_token": value, "expires_in": expires_in, "token_type": "Bearer"}
    )


class TokenEndpoint:
    """A token endpoint that answers each request with the next of ``responses``."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.responses[min(len(self.requests), len(self.responses)) - 1]


class HeldEndpoint:
    """A token endpoint that holds every request until :attr:`release` is set; counts them."""

    def __init__(self) -> None:
        self.entered, self.release = asyncio.Event(), asyncio.Event()
        self.calls = 0

    async def __call__(self, _request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.entered.set()
        await self.release.wait()
        return granted()


async def fetch(
    handler: Handler, tokens: ServiceAccountTokens, callers: int = 1
) -> list[str | BaseException]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await asyncio.gather(
            *(tokens.token(client) for _ in range(callers)), return_exceptions=True
        )


def minter(clock: FakeClock | None = None) -> ServiceAccountTokens:
    return ServiceAccountTokens(account(), provider="veo", clock=clock or FakeClock())


# -- the assertion -----------------------------------------------------------------------------


def test_assertion_is_an_rs256_jwt_with_google_claims() -> None:
    """Header names RS256 and the key id; claims ask for cloud-platform, for one hour, at
    the token URI; the signature verifies with the account's public key."""
    header, claims, signature = account().assertion(1_800_000_000.7).split(".")
    assert b64url_json(header) == {"alg": "RS256", "typ": "JWT", "kid": KEY_ID}
    assert b64url_json(claims) == {
        "iss": CLIENT_EMAIL,
        "scope": SCOPE,
        "aud": TOKEN_URI,
        "iat": 1_800_000_000,
        "exp": 1_800_003_600,
    }
    rsa_key().public_key().verify(
        base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
        f"{header}.{claims}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def ec_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"private_key": "-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY-----\n"}, "PEM"),
        ({"private_key": None}, "private_key"),
        ({"client_email": None}, "client_email"),
        ({"type": "authorized_user"}, "type"),
        ({"token_uri": "file:///etc/passwd"}, "token_uri"),
    ],
)
def test_a_bad_key_file_is_refused_without_quoting_it(change: dict[str, Any], message: str) -> None:
    """Broken fields are named; the message holds no part of the key file's PEM."""
    data = msgspec.json.decode(key_file(TOKEN_URI)) | change
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ValueError, match=message) as info:
        ServiceAccount.from_json(msgspec.json.encode(data))
    assert "QUJD" not in str(info.value)
    assert pem(rsa_key())[40:80] not in str(info.value)
    assert info.value.__cause__ is None


def test_a_non_rsa_key_and_non_json_are_refused() -> None:
    """An EC key cannot sign RS256; a file that is not JSON says so."""
    data = msgspec.json.decode(key_file(TOKEN_URI)) | {"private_key": ec_pem()}
    with pytest.raises(ValueError, match="not an RSA key"):
        ServiceAccount.from_json(msgspec.json.encode(data))
    with pytest.raises(ValueError, match="not a service-account key file"):
        ServiceAccount.from_json("-----BEGIN PRIVATE KEY-----")


def test_repr_shows_the_account_never_the_key() -> None:
    """The account's and the minter's reprs name the account and hold no key material."""
    tokens = minter()
    text = repr(tokens.account) + repr(tokens)
    assert CLIENT_EMAIL in text
    assert "PRIVATE KEY" not in text
    assert "private_key=" not in text


# -- fetching and caching ----------------------------------------------------------------------


async def test_the_request_is_a_form_encoded_jwt_bearer_grant() -> None:
    """POST to token_uri, form-encoded grant_type and a verifiable assertion."""
    endpoint = TokenEndpoint(granted())
    assert await fetch(endpoint, minter()) == ["ya29.first"]
    (request,) = endpoint.requests
    assert (request.method, str(request.url)) == ("POST", TOKEN_URI)
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = parse_qs(request.content.decode())
    assert form["grant_type"] == [GRANT_TYPE]
    _header, claims, _signature = form["assertion"][0].split(".")
    assert b64url_json(claims)["iss"] == CLIENT_EMAIL


async def test_concurrent_callers_share_one_fetch() -> None:
    """Twenty callers arriving while the token is being fetched cause one token request."""
    endpoint = HeldEndpoint()
    tokens = minter()
    async with httpx.AsyncClient(transport=httpx.MockTransport(endpoint)) as client:
        callers = [asyncio.create_task(tokens.token(client)) for _ in range(20)]
        await endpoint.entered.wait()  # every caller ran before the fetch task did
        endpoint.release.set()
        results = await asyncio.gather(*callers)
    assert endpoint.calls == 1
    assert set(results) == {"ya29.first"}


async def test_a_canceled_caller_does_not_cancel_the_shared_fetch() -> None:
    """The first caller's attempt ends while it waits; the others still get that fetch's token."""
    endpoint = HeldEndpoint()
    tokens = minter()
    async with httpx.AsyncClient(transport=httpx.MockTransport(endpoint)) as client:
        first = asyncio.create_task(tokens.token(client))
        second = asyncio.create_task(tokens.token(client))
        await endpoint.entered.wait()
        first.cancel()
        endpoint.release.set()
        assert await second == "ya29.first"
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await tokens.token(client) == "ya29.first"
    assert endpoint.calls == 1


async def test_the_token_is_replaced_exactly_at_expiry_minus_the_margin() -> None:
    """A one-hour token is reused for 55 minutes to the tick, then fetched anew."""
    clock = FakeClock()
    tokens = minter(clock)
    endpoint = TokenEndpoint(granted("ya29.first"), granted("ya29.second"))
    assert await fetch(endpoint, tokens) == ["ya29.first"]
    clock.advance(3600 - 300 - 1)
    assert await fetch(endpoint, tokens, callers=3) == ["ya29.first"] * 3
    clock.advance(1)
    assert await fetch(endpoint, tokens, callers=3) == ["ya29.second"] * 3
    assert len(endpoint.requests) == 2


async def test_a_short_lived_token_is_kept_for_half_its_life() -> None:
    """With expires_in under twice the margin the token is replaced at half its life."""
    clock = FakeClock()
    tokens = minter(clock)
    endpoint = TokenEndpoint(granted("ya29.first", 120), granted("ya29.second", 120))
    await fetch(endpoint, tokens)
    clock.advance(59)
    assert await fetch(endpoint, tokens) == ["ya29.first"]
    clock.advance(1)
    assert await fetch(endpoint, tokens) == ["ya29.second"]


async def test_each_assertion_is_issued_at_the_clocks_time() -> None:
    """A refresh signs a new assertion with the current iat (an old one would be expired)."""
    clock = FakeClock()
    tokens = minter(clock)
    endpoint = TokenEndpoint(granted(), granted())
    await fetch(endpoint, tokens)
    clock.advance(3600)
    await fetch(endpoint, tokens)
    issued = [
        b64url_json(parse_qs(r.content.decode())["assertion"][0].split(".")[1])["iat"]
        for r in endpoint.requests
    ]
    assert issued == [1_800_000_000, 1_800_003_600]


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "auth"),
        (401, "auth"),
        (403, "auth"),
        (429, "rate_limited"),
        (500, "upstream_unavailable"),
        (503, "upstream_unavailable"),
    ],
)
async def test_a_refusal_maps_to_an_error_kind(status: int, kind: str) -> None:
    """400/401/403 are the credential (auth); 429 a rate limit; others the upstream."""
    body = {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    endpoint = TokenEndpoint(httpx.Response(status, json=body, headers={"Retry-After": "7"}))
    (error,) = await fetch(endpoint, minter())
    assert isinstance(error, UpstreamError)
    assert (error.kind, error.http_status, error.provider) == (kind, status, "veo")
    assert error.message == f"token endpoint {status} invalid_grant: Invalid JWT Signature."
    assert error.retry_after_s == 7


async def test_an_unauthorized_token_endpoint_fails_every_waiting_caller_once() -> None:
    """A 401 reaches all concurrent callers from one request, and is not cached."""
    endpoint = TokenEndpoint(httpx.Response(401, json={"error": "unauthorized_client"}), granted())
    tokens = minter()
    errors = await fetch(endpoint, tokens, callers=5)
    assert all(isinstance(e, UpstreamError) and e.kind == "auth" for e in errors)
    assert len(endpoint.requests) == 1
    assert await fetch(endpoint, tokens) == ["ya29.first"]


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("connection refused"), "upstream_unavailable"),
        (httpx.ReadTimeout("timed out"), "timeout"),
    ],
)
async def test_a_transport_failure_maps_to_unavailable_or_timeout(
    exc: Exception, kind: str
) -> None:
    """No answer from the token endpoint is the upstream's trouble, as for any call."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    (error,) = await fetch(handler, minter())
    assert isinstance(error, UpstreamError)
    assert error.kind == kind
    assert error.message.startswith("token endpoint ")


@pytest.mark.parametrize(
    "body",
    [
        {"token_type": "Bearer"},
        {"access_token": "", "expires_in": 3600},
        {"access_token": "t", "expires_in": 0},
    ],
)
async def test_a_200_without_a_usable_token_is_malformed(body: dict[str, Any]) -> None:
    """A success that carries no token (or no positive lifetime) is a malformed response."""
    (error,) = await fetch(TokenEndpoint(httpx.Response(200, json=body)), minter())
    assert isinstance(error, UpstreamError)
    assert error.kind == "malformed_response"


async def test_neither_the_token_nor_the_key_reaches_logs_or_errors() -> None:
    """Logs name the account, never the token; a refusal's error holds no assertion."""
    endpoint = TokenEndpoint(granted("ya29.secret-token"), httpx.Response(400, json={}))
    clock = FakeClock()
    tokens = minter(clock)
    with capture_logs() as logs:
        await fetch(endpoint, tokens)
        clock.advance(3600)
        (error,) = await fetch(endpoint, tokens)
    assert isinstance(error, UpstreamError)
    assertion = parse_qs(endpoint.requests[1].content.decode())["assertion"][0]
    text = repr(logs) + str(error) + repr(error.__cause__)
    failed = [e for e in logs if e["event"] == "google_auth.token_refresh_failed"]
    assert [(e["account"], e["kind"], e["status"]) for e in failed] == [(CLIENT_EMAIL, "auth", 400)]
    assert "ya29.secret-token" not in text
    assert assertion.split(".")[2] not in text
    assert "PRIVATE KEY" not in text


async def test_forgetting_the_cached_token_mints_a_new_one() -> None:
    """``forget`` drops only the token it names: a stale name leaves the cache alone."""
    endpoint = TokenEndpoint(granted("ya29.first"), granted("ya29.second"))
    tokens = minter()
    async with httpx.AsyncClient(transport=httpx.MockTransport(endpoint)) as client:
        assert await tokens.token(client) == "ya29.first"
        tokens.forget("ya29.some-other")
        assert await tokens.token(client) == "ya29.first"
        tokens.forget("ya29.first")
        assert await tokens.token(client) == "ya29.second"
    assert len(endpoint.requests) == 2


async def test_a_failed_refresh_keeps_using_the_still_valid_token() -> None:
    """Between the refresh point and expiry a token endpoint outage does not fail callers;
    each later call tries the refresh again, and past expiry the failure is the caller's."""
    clock = FakeClock()
    tokens = minter(clock)
    down = httpx.Response(503, json={"error": "backend_error"})
    endpoint = TokenEndpoint(granted("ya29.first"), down, down, down)
    assert await fetch(endpoint, tokens) == ["ya29.first"]
    clock.advance(3600 - 300)  # the refresh point: the endpoint is down from here
    assert await fetch(endpoint, tokens, callers=3) == ["ya29.first"] * 3
    clock.advance(299)  # one second of validity left
    assert await fetch(endpoint, tokens) == ["ya29.first"]
    clock.advance(1)  # expired
    (failure,) = await fetch(endpoint, tokens)
    assert isinstance(failure, UpstreamError)
    assert failure.kind == "upstream_unavailable"
    assert len(endpoint.requests) == 4
