"""Google's OAuth 2.0 token endpoint, emulated: the JWT-bearer grant (RFC 7523).

:class:`TokenIssuer` checks a service account's signed assertion the way
``oauth2.googleapis.com/token`` does (an RS256 signature by a trusted account's
key, ``aud`` naming the endpoint itself, ``iat``/``exp`` at most an hour apart
and around now, a scope) and issues opaque access tokens that expire
:attr:`TokenIssuer.lifetime_s` later on the emulator's clock. Refusals are
Google's: ``400 {"error": "invalid_grant", "error_description": …}``.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from breakers.clock import Clock

__all__ = ["GRANT_TYPE", "TokenIssuer"]

GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Google refuses assertions meant to live longer than an hour.
_MAX_ASSERTION_S: Final = 3600
#: How far ahead of the emulator's clock an ``iat`` may be (the caller's clock runs fast).
_SKEW_S: Final = 300
_REMEMBERED: Final = 10_000
_BAD_TIMES: Final = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
    "timeframe. Check your iat and exp values in the JWT claim."
)


class _Refused(Exception):
    """Raised while checking an assertion; becomes a 400 with ``error`` and its description."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def _segment(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _Refused("invalid_grant", "Invalid JWT: not base64url.") from None


class TokenIssuer:
    """The token endpoint's state: trusted accounts and the access tokens it issued."""

    __slots__ = ("_clock", "_issued", "accounts", "issued", "lifetime_s", "refused")

    def __init__(
        self,
        clock: Clock,
        *,
        accounts: Mapping[str, rsa.RSAPublicKey] | None = None,
        lifetime_s: int = 3600,
    ) -> None:
        self._clock = clock
        #: ``client_email`` → the public half of its key.
        self.accounts: dict[str, rsa.RSAPublicKey] = dict(accounts or {})
        #: The ``expires_in`` of issued tokens.
        self.lifetime_s = lifetime_s
        #: Tokens issued and assertions refused, for tests to count.
        self.issued = 0
        self.refused = 0
        self._issued: OrderedDict[str, float] = OrderedDict()

    def valid(self, token: str) -> bool:
        """Whether ``token`` was issued here and has not expired."""
        expires = self._issued.get(token)
        return expires is not None and self._clock.monotonic() < expires

    def exchange(self, form: Mapping[str, str], audience: str) -> tuple[int, dict[str, Any]]:
        """The status and JSON body answering a token request's form fields.

        ``audience`` is the endpoint's own URL, which the assertion's ``aud`` must name.
        """
        try:
            if form.get("grant_type") != GRANT_TYPE:
                raise _Refused("unsupported_grant_type", "Invalid grant_type.")
            self._check(form.get("assertion", ""), audience)
        except _Refused as exc:
            self.refused += 1
            return 400, {"error": exc.error, "error_description": exc.description}
        return 200, self._issue()

    def _check(self, assertion: str, audience: str) -> None:
        """Refuse the assertion unless everything about it checks out."""
        parts = assertion.split(".")
        if len(parts) != 3:
            raise _Refused("invalid_request", "Invalid JWT: expected header.claims.signature.")
        header, claims = (self._json(p) for p in parts[:2])
        if header.get("alg") != "RS256":
            raise _Refused("invalid_grant", "Invalid JWT: alg must be RS256.")
        email = claims.get("iss")
        if not isinstance(email, str) or email not in self.accounts:
            raise _Refused("invalid_grant", "Invalid grant: account not found")
        try:
            self.accounts[email].verify(
                _segment(parts[2]),
                f"{parts[0]}.{parts[1]}".encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise _Refused("invalid_grant", "Invalid JWT Signature.") from None
        if claims.get("aud") != audience:
            raise _Refused("invalid_grant", "Invalid JWT: Failed audience check.")
        self._check_times(claims)
        if not isinstance(claims.get("scope"), str) or not claims["scope"]:
            raise _Refused("invalid_scope", "Empty or missing scope not allowed.")

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        issued, expires = claims.get("iat"), claims.get("exp")
        if not (isinstance(issued, int) and isinstance(expires, int)):
            raise _Refused("invalid_grant", _BAD_TIMES)
        now = self._clock.time()
        if not (issued <= now + _SKEW_S and now < expires <= issued + _MAX_ASSERTION_S):
            raise _Refused("invalid_grant", _BAD_TIMES)

    @staticmethod
    def _json(segment: str) -> dict[str, Any]:
        try:
            value = msgspec.json.decode(_segment(segment))
        except msgspec.DecodeError:
            value = None
        if not isinstance(value, dict):
            raise _Refused("invalid_grant", "Invalid JWT: not a JSON object.")
        return value

    def _issue(self) -> dict[str, Any]:
        token = f"ya29.sandbox-{secrets.token_urlsafe(24)}"
        self._issued[token] = self._clock.monotonic() + self.lifetime_s
        while len(self._issued) > _REMEMBERED:
            self._issued.popitem(last=False)
        self.issued += 1
        return {"access_token": token, "expires_in": self.lifetime_s, "token_type": "Bearer"}
