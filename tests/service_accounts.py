"""Google service-account key files for tests, with RSA keys made once per session.

Generating a 2048-bit key takes tens of milliseconds, so :func:`rsa_key` keeps
each one it makes for the rest of the run; tests that need two different keys
(an assertion signed by the wrong one) ask for two indices.
"""

from __future__ import annotations

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["CLIENT_EMAIL", "KEY_ID", "key_file", "pem", "rsa_key"]

CLIENT_EMAIL = "switchman@proj-1.iam.gserviceaccount.com"
KEY_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6"


_keys: dict[int, rsa.RSAPrivateKey] = {}


def rsa_key(index: int = 0) -> rsa.RSAPrivateKey:
    """The session's ``index``-th RSA key (2048 bits)."""
    # Not functools.cache: it would key rsa_key() and rsa_key(0) apart, making two keys.
    if index not in _keys:
        _keys[index] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _keys[index]


def pem(key: rsa.RSAPrivateKey) -> str:
    """``key`` as the unencrypted PKCS#8 PEM a Google key file holds."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def key_file(
    token_uri: str, key: rsa.RSAPrivateKey | None = None, *, client_email: str = CLIENT_EMAIL
) -> str:
    """A key file's JSON as ``gcloud iam service-accounts keys create`` writes it."""
    return msgspec.json.encode(
        {
            "type": "service_account",
            "project_id": "proj-1",
            "private_key_id": KEY_ID,
            "private_key": pem(key or rsa_key()),
            "client_email": client_email,
            "client_id": "104212345678901234567",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        }
    ).decode()
