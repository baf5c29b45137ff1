"""Tenant provider credentials at rest: AES-256-GCM under a key ring (DESIGN §3, §4).

``security.encryption_keys`` maps key ids to base64 32-byte keys; the *first* is
current. Each secret is sealed with the current key and a fresh random 96-bit nonce,
and the key id is stored beside the ciphertext, so an old key keeps opening what it
sealed until :meth:`KeyRing.rotate` (``switchman rotate-keys``) re-seals everything
under the current key and the old one can be removed (MultiFernet's pattern, with an
AEAD that meets the AES-256-GCM requirement).

The associated data binds a ciphertext to its tenant, provider and key id: a row
copied to another tenant or provider, or relabelled with another key id, fails to
open instead of handing one tenant's key to another. Random nonces are safe well past
any realistic number of stored credentials (NIST's bound is 2³² seals per key).

Nothing here logs, and no error message carries a secret or a key.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from router.errors import ConfigError

__all__ = ["DecryptionFailed", "KeyRing", "Sealed", "UnknownKeyId", "new_encryption_key"]

_NONCE_BYTES: Final = 12
_KEY_BYTES: Final = 32
_AAD_PREFIX: Final = b"switchman.credential.v1"


class DecryptionFailed(Exception):
    """A ciphertext did not open: tampered, or bound to another tenant/provider/key id."""


class UnknownKeyId(DecryptionFailed):
    """A ciphertext names a key id the ring no longer has."""


@dataclass(frozen=True, slots=True)
class Sealed:
    """A sealed secret: the key id it was sealed under, and ``nonce || ciphertext+tag``."""

    kid: str
    blob: bytes

    def encoded(self) -> str:
        """The blob as base64 text (what the store keeps)."""
        return base64.b64encode(self.blob).decode("ascii")

    @classmethod
    def decode(cls, kid: str, text: str) -> Sealed:
        """A :class:`Sealed` back from the store's ``kid`` and base64 text."""
        try:
            return cls(kid, base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise DecryptionFailed("stored ciphertext is not base64") from None


def new_encryption_key() -> str:
    """A fresh base64 32-byte key for ``security.encryption_keys``."""
    return base64.b64encode(os.urandom(_KEY_BYTES)).decode("ascii")


def _aad(tenant: str, provider: str, kid: str) -> bytes:
    # NUL separators: none of the three may contain one, so the encoding is unambiguous.
    return b"\x00".join((_AAD_PREFIX, tenant.encode(), provider.encode(), kid.encode()))


class KeyRing:
    """Seals and opens credentials; the first key is current, the rest only open."""

    __slots__ = ("_ciphers", "current")

    def __init__(self, keys: Mapping[str, str]) -> None:
        errors: list[str] = []
        self._ciphers: dict[str, AESGCM] = {}
        for kid, encoded in keys.items():
            path = f"security.encryption_keys.{kid}"
            if not kid or "\x00" in kid:
                errors.append(f"{path}: invalid key id")
                continue
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                errors.append(f"{path}: expected base64")
                continue
            if len(raw) != _KEY_BYTES:
                errors.append(f"{path}: expected {_KEY_BYTES} bytes, got {len(raw)}")
                continue
            self._ciphers[kid] = AESGCM(raw)
        if errors:
            raise ConfigError(errors)
        #: The key id new secrets are sealed under; ``None`` when no key is configured.
        self.current: str | None = next(iter(self._ciphers), None)

    @property
    def enabled(self) -> bool:
        """Whether secrets can be stored at all (at least one key configured)."""
        return self.current is not None

    def encrypt(self, secret: str, *, tenant: str, provider: str) -> Sealed:
        """Seal ``secret`` under the current key for ``tenant`` and ``provider``."""
        kid = self.current
        if kid is None:
            raise ConfigError(["security.encryption_keys: no key configured"])
        nonce = os.urandom(_NONCE_BYTES)
        ct = self._ciphers[kid].encrypt(nonce, secret.encode("utf-8"), _aad(tenant, provider, kid))
        return Sealed(kid, nonce + ct)

    def decrypt(self, sealed: Sealed, *, tenant: str, provider: str) -> str:
        """Open ``sealed``; :class:`DecryptionFailed` when it was tampered with or rebound."""
        cipher = self._ciphers.get(sealed.kid)
        if cipher is None:
            raise UnknownKeyId(f"no encryption key {sealed.kid!r} in security.encryption_keys")
        if len(sealed.blob) < _NONCE_BYTES + 16:
            raise DecryptionFailed("ciphertext too short")
        nonce, ct = sealed.blob[:_NONCE_BYTES], sealed.blob[_NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, ct, _aad(tenant, provider, sealed.kid))
        except InvalidTag:
            raise DecryptionFailed("ciphertext does not authenticate") from None
        return plain.decode("utf-8")

    def rotate(self, sealed: Sealed, *, tenant: str, provider: str) -> Sealed:
        """``sealed`` re-sealed under the current key (unchanged when it already is)."""
        if sealed.kid == self.current:
            return sealed
        secret = self.decrypt(sealed, tenant=tenant, provider=provider)
        return self.encrypt(secret, tenant=tenant, provider=provider)
