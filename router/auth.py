"""Caller authentication: bearer API keys, stored as SHA-256 hashes, with scopes.

Keys are high-entropy random strings, so a single unsalted SHA-256 is the right
hash (no password stretching needed); lookups compare digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from router.config import TenantConfig
from router.errors import Forbidden, Unauthorized

__all__ = ["KEY_PREFIX", "Authenticator", "Principal", "hash_key", "new_api_key"]

KEY_PREFIX = "sk_sw_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant and its scopes."""

    tenant: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        """Raise :class:`Forbidden` unless this principal holds ``scope``."""
        if scope not in self.scopes:
            raise Forbidden(f"this API key lacks the {scope!r} scope")


def hash_key(key: str) -> str:
    """The ``sha256:<hex>`` form that config stores."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    """A new key: a recognisable prefix and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class Authenticator:
    """Maps bearer keys to principals. Several keys per tenant may be live (rotation)."""

    __slots__ = ("_entries",)

    def __init__(self, tenants: Iterable[TenantConfig]) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        for tenant in tenants:
            principal = Principal(tenant.id, frozenset(tenant.scopes))
            for stored in tenant.api_keys:
                digest = bytes.fromhex(stored.removeprefix("sha256:"))
                self._entries.append((digest, principal))

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind an ``Authorization`` header; raise :class:`Unauthorized`."""
        if not authorization:
            raise Unauthorized("missing Authorization: Bearer <api key>")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("expected Authorization: Bearer <api key>")
        digest = hashlib.sha256(key.strip().encode("utf-8")).digest()
        found: Principal | None = None
        # Compare against every entry so timing does not reveal which key matched.
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, digest):
                found = principal
        if found is None:
            raise Unauthorized("invalid API key")
        return found
