"""The credential key ring: AES-256-GCM, bound to tenant, provider and key id."""

from __future__ import annotations

import base64

import pytest

from router.crypto import DecryptionFailed, KeyRing, Sealed, UnknownKeyId, new_encryption_key
from router.errors import ConfigError

K1 = new_encryption_key()
K2 = new_encryption_key()
SECRET = "sk-canary-0123456789abcdef"


def test_round_trip_under_the_current_key() -> None:
    """A sealed secret opens to itself, sealed under the first key, without the plaintext."""
    ring = KeyRing({"k1": K1, "k0": K2})
    sealed = ring.encrypt(SECRET, tenant="a", provider="fal")
    assert sealed.kid == "k1"
    assert SECRET.encode() not in sealed.blob
    assert ring.decrypt(sealed, tenant="a", provider="fal") == SECRET


def test_nonces_are_random() -> None:
    """Two seals of one secret differ (a fresh 96-bit nonce each time)."""
    ring = KeyRing({"k1": K1})
    a = ring.encrypt(SECRET, tenant="a", provider="fal")
    b = ring.encrypt(SECRET, tenant="a", provider="fal")
    assert a.blob[:12] != b.blob[:12]
    assert a.blob != b.blob


@pytest.mark.parametrize("index", [0, 5, 12, 20, -1])
def test_a_flipped_byte_fails(index: int) -> None:
    """Any flipped byte (nonce, ciphertext or tag) fails authentication."""
    ring = KeyRing({"k1": K1})
    sealed = ring.encrypt(SECRET, tenant="a", provider="fal")
    blob = bytearray(sealed.blob)
    blob[index] ^= 0x01
    with pytest.raises(DecryptionFailed):
        ring.decrypt(Sealed("k1", bytes(blob)), tenant="a", provider="fal")


@pytest.mark.parametrize(
    ("tenant", "provider"), [("b", "fal"), ("a", "replicate"), ("a\x00fal", ""), ("", "fal")]
)
def test_changed_associated_data_fails(tenant: str, provider: str) -> None:
    """A ciphertext moved to another tenant or provider does not open."""
    ring = KeyRing({"k1": K1})
    sealed = ring.encrypt(SECRET, tenant="a", provider="fal")
    with pytest.raises(DecryptionFailed):
        ring.decrypt(sealed, tenant=tenant, provider=provider)


def test_a_relabelled_key_id_fails() -> None:
    """Claiming another key id (even one holding the same key) fails: the id is bound too."""
    ring = KeyRing({"k1": K1, "k2": K1})
    sealed = ring.encrypt(SECRET, tenant="a", provider="fal")
    with pytest.raises(DecryptionFailed):
        ring.decrypt(Sealed("k2", sealed.blob), tenant="a", provider="fal")


def test_rotation_reseals_under_the_new_key_and_the_old_can_go() -> None:
    """After rotate() a ring without the old key opens every secret."""
    old = KeyRing({"k1": K1})
    sealed = [old.encrypt(f"{SECRET}-{i}", tenant="a", provider=f"p{i}") for i in range(5)]
    both = KeyRing({"k2": K2, "k1": K1})
    rotated = [both.rotate(s, tenant="a", provider=f"p{i}") for i, s in enumerate(sealed)]
    assert {r.kid for r in rotated} == {"k2"}
    assert both.rotate(rotated[0], tenant="a", provider="p0") is rotated[0]
    new_only = KeyRing({"k2": K2})
    for i, r in enumerate(rotated):
        assert new_only.decrypt(r, tenant="a", provider=f"p{i}") == f"{SECRET}-{i}"
    with pytest.raises(UnknownKeyId):
        new_only.decrypt(sealed[0], tenant="a", provider="p0")


def test_stored_text_round_trips_and_garbage_is_refused() -> None:
    """The base64 storage form decodes back; non-base64 is a decryption failure."""
    ring = KeyRing({"k1": K1})
    sealed = ring.encrypt(SECRET, tenant="a", provider="fal")
    assert Sealed.decode("k1", sealed.encoded()) == sealed
    with pytest.raises(DecryptionFailed):
        Sealed.decode("k1", "not base64!!")
    with pytest.raises(DecryptionFailed):
        ring.decrypt(Sealed("k1", b"short"), tenant="a", provider="fal")


def test_bad_keys_are_config_errors_that_name_the_key() -> None:
    """A key that is not base64 32 bytes is refused with its path, never its value."""
    short = base64.b64encode(b"x" * 16).decode()
    with pytest.raises(ConfigError) as info:
        KeyRing({"good": K1, "short": short, "junk": "%%%"})
    text = "\n".join(info.value.errors)
    assert "encryption_keys.short" in text
    assert "encryption_keys.junk" in text
    assert short not in text


def test_an_empty_ring_cannot_seal() -> None:
    """Without keys, storing a secret is refused rather than stored in clear."""
    ring = KeyRing({})
    assert not ring.enabled
    with pytest.raises(ConfigError):
        ring.encrypt(SECRET, tenant="a", provider="fal")
