"""Webhook signature helpers: Standard Webhooks HMAC and fal's Ed25519 over a JWKS."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from router.adapters.webhook_sigs import (
    decode_whsec,
    ed25519_jwk,
    ed25519_keys_from_jwks,
    fal_message,
    header,
    sign_fal,
    sign_standard,
    verify_fal,
    verify_standard,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"another-secret-another-secret!!!").decode()
NOW = 1_800_000_000
BODY = b'{"id":"p1","status":"succeeded"}'


def std_headers(
    secret: str = SECRET, ts: int = NOW, body: bytes = BODY, msg_id: str = "msg_1"
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign_standard(secret, msg_id, ts, body),
    }


def test_standard_webhooks_reference_vector() -> None:
    """The signature matches the Standard Webhooks specification's published example."""
    sig = sign_standard(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_standard_good_signature_verifies() -> None:
    """A delivery signed with the secret, at now, is valid."""
    assert verify_standard(SECRET, std_headers(), BODY, NOW)


@pytest.mark.parametrize(
    ("case", "headers", "body", "now"),
    [
        ("tampered body", std_headers(), BODY + b" ", NOW),
        ("wrong secret", std_headers(secret=OTHER), BODY, NOW),
        ("stale by 301 s", std_headers(ts=NOW - 301), BODY, NOW),
        ("future by 301 s", std_headers(ts=NOW + 301), BODY, NOW),
        ("other id signed", std_headers() | {"webhook-id": "msg_2"}, BODY, NOW),
        ("no signature", {"webhook-id": "msg_1", "webhook-timestamp": str(NOW)}, BODY, NOW),
        ("no id", {k: v for k, v in std_headers().items() if k != "webhook-id"}, BODY, NOW),
        ("bad timestamp", std_headers() | {"webhook-timestamp": "soon"}, BODY, NOW),
        ("v2 only", std_headers() | {"webhook-signature": "v2,AAAA"}, BODY, NOW),
        ("not base64", std_headers() | {"webhook-signature": "v1,@@@"}, BODY, NOW),
    ],
)
def test_standard_rejects(case: str, headers: dict[str, str], body: bytes, now: int) -> None:
    """Tampering, another secret, staleness either way and malformed headers are all invalid."""
    assert not verify_standard(SECRET, headers, body, now), case


def test_standard_within_tolerance_verifies() -> None:
    """A timestamp 299 s old is still fresh."""
    assert verify_standard(SECRET, std_headers(ts=NOW - 299), BODY, NOW)


def test_standard_any_of_several_v1_entries_matches() -> None:
    """During a rotation several ``v1,`` entries are sent; one good one is enough."""
    good = std_headers()["webhook-signature"]
    bad = std_headers(secret=OTHER)["webhook-signature"]
    headers = std_headers() | {"webhook-signature": f"v1a,xyz {bad} {good}"}
    assert verify_standard(SECRET, headers, BODY, NOW)


def test_standard_accepts_any_of_several_secrets() -> None:
    """Verification tries every configured secret (rotation on our side)."""
    assert verify_standard([OTHER, SECRET], std_headers(), BODY, NOW)
    assert not verify_standard([OTHER], std_headers(), BODY, NOW)


def test_standard_headers_are_case_insensitive() -> None:
    """Header names match whatever their case."""
    headers = {k.title(): v for k, v in std_headers().items()}
    assert verify_standard(SECRET, headers, BODY, NOW)
    assert header(headers, "WEBHOOK-ID") == "msg_1"


def test_decode_whsec_rejects_non_base64() -> None:
    """A secret that is not ``whsec_<base64>`` is an error, and verifies nothing."""
    with pytest.raises(ValueError, match="whsec_"):
        decode_whsec("whsec_***")
    assert not verify_standard("whsec_***", std_headers(), BODY, NOW)


# -- fal Ed25519 ----------------------------------------------------------------------

KEY = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
WRONG = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
JWKS = {
    "keys": [
        {"kty": "RSA", "n": "xx", "e": "AQAB"},
        {"kty": "OKP", "crv": "X25519", "x": "AAAA"},
        ed25519_jwk(KEY.public_key(), "k1"),
    ]
}


def fal_headers(
    key: Ed25519PrivateKey = KEY, ts: int = NOW, body: bytes = BODY, rid: str = "req-1"
) -> dict[str, str]:
    return {
        "X-Fal-Webhook-Request-Id": rid,
        "X-Fal-Webhook-User-Id": "user-1",
        "X-Fal-Webhook-Timestamp": str(ts),
        "X-Fal-Webhook-Signature": sign_fal(key, rid, "user-1", ts, body),
    }


def test_fal_message_layout() -> None:
    """fal signs ids, timestamp and the body's SHA-256 hex, newline-separated."""
    msg = fal_message("r", "u", "1", b"{}")
    assert msg == b"r\nu\n1\n44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_jwks_keeps_only_ed25519_keys() -> None:
    """RSA and X25519 entries are skipped; the Ed25519 one is parsed."""
    keys = ed25519_keys_from_jwks(JWKS)
    assert len(keys) == 1
    assert ed25519_keys_from_jwks({"nope": 1}) == ()
    assert ed25519_keys_from_jwks([{"kty": "OKP", "crv": "Ed25519", "x": "!!"}]) == ()


def test_fal_good_signature_verifies() -> None:
    """A webhook signed by a key in the JWKS, at now, is valid."""
    assert verify_fal(ed25519_keys_from_jwks(JWKS), fal_headers(), BODY, NOW)


def test_fal_any_key_of_the_jwks_may_sign() -> None:
    """With two keys published (rotation), a signature by either verifies."""
    jwks = {"keys": [ed25519_jwk(WRONG.public_key(), "k2"), ed25519_jwk(KEY.public_key(), "k1")]}
    assert verify_fal(ed25519_keys_from_jwks(jwks), fal_headers(), BODY, NOW)


@pytest.mark.parametrize(
    ("case", "headers", "body"),
    [
        ("other key", fal_headers(key=WRONG), BODY),
        ("tampered body", fal_headers(), BODY + b"x"),
        ("stale", fal_headers(ts=NOW - 301), BODY),
        ("other request id", fal_headers() | {"X-Fal-Webhook-Request-Id": "req-2"}, BODY),
        ("not hex", fal_headers() | {"X-Fal-Webhook-Signature": "zz"}, BODY),
        ("no signature", {"X-Fal-Webhook-Request-Id": "req-1"}, BODY),
    ],
)
def test_fal_rejects(case: str, headers: dict[str, str], body: bytes) -> None:
    """Another key, tampering, staleness and missing headers are all invalid."""
    assert not verify_fal(ed25519_keys_from_jwks(JWKS), headers, body, NOW), case


def test_fal_no_keys_verifies_nothing() -> None:
    """Without keys nothing can be valid."""
    assert not verify_fal((), fal_headers(), BODY, NOW)
