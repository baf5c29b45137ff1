"""Google service-account access tokens: the OAuth 2.0 JWT-bearer grant (RFC 7523).

Vertex AI takes an OAuth access token, and Google's tokens live an hour, so a
static token in the config stops working an hour after it was printed. Given a
service account's key file, :class:`ServiceAccountTokens` mints its own: it signs
a JWT with the account's RSA key (RS256), trades it at the account's
``token_uri`` for an access token, and reuses that token until a margin before it
expires. Callers that arrive while a token is being fetched wait for that one
fetch, so an expiry under load costs one call to the token endpoint, not one
per request.

The private key lives only in :class:`ServiceAccount` (left out of its ``repr``,
never quoted in an error) and access tokens are never logged.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Final

import httpx
import msgspec
import structlog
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from breakers.clock import Clock
from router.adapters.http_util import parse_retry_after, safe_json
from router.errors import ErrorKind, UpstreamError

__all__ = [
    "ASSERTION_LIFETIME_S",
    "GRANT_TYPE",
    "REFRESH_MARGIN_S",
    "SCOPE",
    "ServiceAccount",
    "ServiceAccountTokens",
]

SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"
GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_OAUTH_URI: Final = "https://oauth2.googleapis.com/token"
#: Google refuses assertions meant to live longer than an hour.
ASSERTION_LIFETIME_S: Final = 3600
#: A token is replaced this long before it expires, so one taken from the cache
#: still has time to reach Google (and to survive some clock skew) when it is used.
REFRESH_MARGIN_S: Final = 300.0
#: Token endpoint statuses that mean the credential (Google answers a bad
#: signature or an unknown account with 400 ``invalid_grant``).
_AUTH_STATUSES: Final = frozenset({400, 401, 403})

_log = structlog.get_logger("switchman.adapters.google_auth")


class _KeyFile(msgspec.Struct, frozen=True):
    """What Switchman reads of a service-account key file; its other fields are ignored."""

    client_email: str
    private_key: str
    private_key_id: str
    token_uri: str = GOOGLE_OAUTH_URI
    type: str = "service_account"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True, eq=False)
class ServiceAccount:
    """A Google service account: who it is, where it gets tokens, and its signing key."""

    client_email: str
    private_key_id: str
    token_uri: str
    private_key: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ServiceAccount:
        """The account in a key file's JSON.

        Raises :class:`ValueError` with a message that never quotes the file, so it is
        safe in a startup error.
        """
        try:
            data = msgspec.json.decode(text, type=_KeyFile)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"not a service-account key file: {exc}") from None
        if data.type != "service_account":
            raise ValueError(f"type is {data.type!r}, expected 'service_account'")
        if not data.token_uri.startswith(("https://", "http://")):
            raise ValueError("token_uri is not an http(s) URL")
        return cls(data.client_email, data.private_key_id, data.token_uri, _rsa_key(data))

    def assertion(self, now: float) -> str:
        """A signed JWT asking for a cloud-platform token, issued at ``now`` (unix seconds)."""
        issued = int(now)
        header = {"alg": "RS256", "typ": "JWT", "kid": self.private_key_id}
        claims = {
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME_S,
        }
        signed = f"{_b64url(msgspec.json.encode(header))}.{_b64url(msgspec.json.encode(claims))}"
        signature = self.private_key.sign(
            signed.encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{signed}.{_b64url(signature)}"


def _rsa_key(data: _KeyFile) -> rsa.RSAPrivateKey:
    # ``from None`` everywhere: cryptography's own exceptions are not ours to vouch for.
    try:
        key = serialization.load_pem_private_key(data.private_key.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("private_key is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("private_key is not an RSA key")
    return key


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)
    #: ``Clock.monotonic()`` after which the token is replaced.
    refresh_at: float
    #: ``Clock.monotonic()`` after which Google no longer accepts it.
    expires_at: float


class ServiceAccountTokens:
    """Access tokens for one service account, shared by every caller until they near expiry.

    Token endpoint failures raise :class:`UpstreamError`: ``auth`` for 400/401/403
    (a revoked key, an unknown account, a bad signature), ``rate_limited`` for 429,
    ``timeout`` or ``upstream_unavailable`` for the rest.
    """

    __slots__ = (
        "_account",
        "_clock",
        "_current",
        "_fetching",
        "_margin_s",
        "_provider",
        "_timeout_s",
    )

    def __init__(
        self,
        account: ServiceAccount,
        *,
        provider: str,
        clock: Clock,
        timeout_s: float = 30.0,
        refresh_margin_s: float = REFRESH_MARGIN_S,
    ) -> None:
        self._account = account
        self._provider = provider
        self._clock = clock
        self._timeout_s = timeout_s
        self._margin_s = refresh_margin_s
        self._current: _Token | None = None
        self._fetching: asyncio.Task[_Token] | None = None

    @property
    def account(self) -> ServiceAccount:
        """The service account the tokens are for."""
        return self._account

    def __repr__(self) -> str:
        return f"ServiceAccountTokens({self._account.client_email!r}, provider={self._provider!r})"

    async def token(self, client: httpx.AsyncClient) -> str:
        """A valid access token; fetched through ``client`` when the cached one is due."""
        current = self._current
        if current is not None and self._clock.monotonic() < current.refresh_at:
            return current.value
        if self._fetching is None:
            self._fetching = asyncio.create_task(self._fetch(client))
            self._fetching.add_done_callback(self._fetched)
        try:
            # Shielded: a caller whose attempt times out must not cancel the fetch others
            # await.
            return (await asyncio.shield(self._fetching)).value
        except UpstreamError as exc:
            # A refresh is early by design: while the old token is still valid, a failed
            # refresh (token endpoint down, throttled) must not fail the attempt. The
            # next caller tries the refresh again.
            if current is not None and self._clock.monotonic() < current.expires_at:
                _log.warning(
                    "google_auth.refresh_failed_using_current",
                    provider=self._provider,
                    kind=exc.kind,
                    valid_s=round(current.expires_at - self._clock.monotonic()),
                )
                return current.value
            raise

    def forget(self, token: str) -> None:
        """Drop ``token`` if it is the cached one: the API refused it (revoked, say).

        The next caller mints a fresh one instead of reusing it until its refresh point.
        """
        if self._current is not None and self._current.value == token:
            self._current = None

    def _fetched(self, task: asyncio.Task[_Token]) -> None:
        # Runs before any waiter resumes (callbacks run in the order they were added),
        # and retrieves a failure so that a fetch nobody awaits any more is not reported.
        self._fetching = None
        if not task.cancelled() and task.exception() is None:
            self._current = task.result()

    async def _fetch(self, client: httpx.AsyncClient) -> _Token:
        sent = self._clock.monotonic()
        form = {"grant_type": GRANT_TYPE, "assertion": self._account.assertion(self._clock.time())}
        try:
            # httpx's timeouts are per phase; this bounds the whole exchange, which every
            # waiting caller depends on.
            async with asyncio.timeout(self._timeout_s):
                response = await client.post(
                    self._account.token_uri, data=form, timeout=self._timeout_s
                )
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise self._failed("timeout", f"token endpoint {type(exc).__name__}") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            text = f"token endpoint {type(exc).__name__}: {exc}".rstrip(": ")
            raise self._failed("upstream_unavailable", text) from exc
        if response.status_code != 200:
            raise self._refused(response)
        token = self._parse(response.content, sent)
        _log.info(
            "google_auth.token_refreshed",
            provider=self._provider,
            account=self._account.client_email,
            valid_s=round(token.refresh_at - sent),
        )
        return token

    def _parse(self, body: bytes, sent: float) -> _Token:
        data = safe_json(body)
        data = data if isinstance(data, dict) else {}
        value = data.get("access_token")
        # RFC 6749 §5.1 makes expires_in optional; Google's documented lifetime is an hour.
        lifetime = data.get("expires_in", ASSERTION_LIFETIME_S)
        if (
            not isinstance(value, str)
            or not value
            or isinstance(lifetime, bool)
            or not isinstance(lifetime, int | float)
            or lifetime <= 0
        ):
            raise self._failed(
                "malformed_response",
                "token endpoint answered 200 without an access_token and a positive expires_in",
                http_status=200,
            )
        # Counted from when the request left: the token's clock started no earlier.
        # A short-lived token keeps half its life, or it would never be reused.
        return _Token(value, sent + lifetime - min(self._margin_s, lifetime / 2), sent + lifetime)

    def _refused(self, response: httpx.Response) -> UpstreamError:
        status = response.status_code
        data = safe_json(response.content)
        data = data if isinstance(data, dict) else {}
        error, description = data.get("error"), data.get("error_description")
        text = f"token endpoint {status}"
        if isinstance(error, str):
            text = f"{text} {error[:100]}"
        if isinstance(description, str) and description:
            text = f"{text}: {description[:200]}"
        kind: ErrorKind = "upstream_unavailable"
        if status in _AUTH_STATUSES:
            kind = "auth"
        elif status == 429:
            kind = "rate_limited"
        retry_after = parse_retry_after(response.headers, self._clock.time())
        return self._failed(kind, text, http_status=status, retry_after_s=retry_after)

    def _failed(
        self,
        kind: ErrorKind,
        message: str,
        *,
        http_status: int | None = None,
        retry_after_s: float | None = None,
    ) -> UpstreamError:
        _log.warning(
            "google_auth.token_refresh_failed",
            provider=self._provider,
            account=self._account.client_email,
            kind=kind,
            status=http_status,
        )
        return UpstreamError(
            kind,
            message,
            provider=self._provider,
            http_status=http_status,
            retry_after_s=retry_after_s,
        )
