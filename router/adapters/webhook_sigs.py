"""Webhook signatures the providers use, for adapters (verify) and emulators (sign).

Two schemes (provider-contracts §1, §2):

- **Standard Webhooks** (Replicate, OpenAI): HMAC-SHA256 with the base64 key
  after ``whsec_`` over ``f"{webhook-id}.{webhook-timestamp}.{body}"``; the
  ``webhook-signature`` header holds space-separated ``v1,<base64>`` entries (one
  per active secret during a rotation), any of which may match.
- **fal**: Ed25519 over ``request_id\\nuser_id\\ntimestamp\\nsha256_hex(body)``,
  hex-encoded in ``X-Fal-Webhook-Signature``, checked against every Ed25519 key
  of a JWKS.

Both reject a timestamp more than ``tolerance_s`` (300 s) from ``now`` in either
direction, so a captured delivery cannot be replayed later. Every check is
constant-time or done by ``cryptography``; a malformed header is simply "not
valid", never an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "FAL_HEADERS",
    "decode_whsec",
    "ed25519_jwk",
    "ed25519_keys_from_jwks",
    "fal_message",
    "header",
    "sign_fal",
    "sign_standard",
    "verify_fal",
    "verify_standard",
]

#: Accepted clock skew between the sender's timestamp and ours, both ways.
DEFAULT_TOLERANCE_S: Final = 300.0

#: fal's webhook headers: request id, user id, timestamp, signature (hex).
FAL_HEADERS: Final = (
    "x-fal-webhook-request-id",
    "x-fal-webhook-user-id",
    "x-fal-webhook-timestamp",
    "x-fal-webhook-signature",
)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, whatever its case in ``headers`` (a dict or ``httpx.Headers``)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def _fresh(timestamp: str | None, now: float, tolerance_s: float) -> bool:
    if timestamp is None:
        return False
    try:
        ts = int(timestamp.strip())
    except ValueError:
        return False
    return abs(now - ts) <= tolerance_s


# -- Standard Webhooks ----------------------------------------------------------------


def decode_whsec(secret: str) -> bytes:
    """The HMAC key in a ``whsec_<base64>`` secret; ``ValueError`` when it is not one."""
    raw = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret is not whsec_<base64>") from exc


def _standard_mac(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign_standard(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) for one delivery."""
    mac = _standard_mac(decode_whsec(secret), msg_id, str(timestamp), body)
    return "v1," + base64.b64encode(mac).decode("ascii")


def verify_standard(
    secrets: str | Iterable[str],
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Whether a Standard Webhooks delivery is signed by one of ``secrets`` and fresh.

    Several secrets are accepted so a secret can rotate without dropping webhooks.
    """
    msg_id = header(headers, "webhook-id")
    timestamp = header(headers, "webhook-timestamp")
    signature = header(headers, "webhook-signature")
    if not msg_id or not signature or not _fresh(timestamp, now, tolerance_s):
        return False
    assert timestamp is not None
    candidates: list[bytes] = []
    for entry in signature.split():
        version, _, value = entry.partition(",")
        if version != "v1" or not value:
            continue
        try:
            candidates.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not candidates:
        return False
    for secret in [secrets] if isinstance(secrets, str) else secrets:
        try:
            key = decode_whsec(secret)
        except ValueError:
            continue
        expected = _standard_mac(key, msg_id, timestamp.strip(), body)
        # Compare against every entry (no early exit on the first match's position).
        matched = False
        for got in candidates:
            matched |= hmac.compare_digest(expected, got)
        if matched:
            return True
    return False


# -- fal (Ed25519 + JWKS) -------------------------------------------------------------


def fal_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """What fal signs: the ids, the timestamp and the body's SHA-256, one per line."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((request_id, user_id, timestamp, digest)).encode()


def sign_fal(
    key: Ed25519PrivateKey, request_id: str, user_id: str, timestamp: int, body: bytes
) -> str:
    """The ``X-Fal-Webhook-Signature`` value (hex) for one delivery."""
    return key.sign(fal_message(request_id, user_id, str(timestamp), body)).hex()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ed25519_jwk(key: Ed25519PublicKey, kid: str) -> dict[str, str]:
    """``key`` as a JWK (``kty: OKP``, ``crv: Ed25519``), as a JWKS endpoint lists it."""
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "use": "sig"}


def ed25519_keys_from_jwks(jwks: Any) -> tuple[Ed25519PublicKey, ...]:
    """The Ed25519 keys in a JWKS (``{"keys": [...]}`` or a bare list); others are skipped."""
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else jwks
    if not isinstance(keys, list):
        return ()
    found: list[Ed25519PublicKey] = []
    for jwk in keys:
        if not isinstance(jwk, Mapping):
            continue
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        x = jwk.get("x")
        if not isinstance(x, str):
            continue
        try:
            found.append(Ed25519PublicKey.from_public_bytes(_b64url_decode(x)))
        except (ValueError, binascii.Error):
            continue
    return tuple(found)


def verify_fal(
    keys: Iterable[Ed25519PublicKey],
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Whether a fal webhook is signed by one of ``keys`` and fresh."""
    request_id, user_id, timestamp, signature = (header(headers, n) for n in FAL_HEADERS)
    if not request_id or user_id is None or not signature:
        return False
    if not _fresh(timestamp, now, tolerance_s):
        return False
    assert timestamp is not None
    try:
        sig = bytes.fromhex(signature.strip())
    except ValueError:
        return False
    message = fal_message(request_id, user_id, timestamp.strip(), body)
    for key in keys:
        try:
            key.verify(sig, message)
        except InvalidSignature:
            continue
        return True
    return False
