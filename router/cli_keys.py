"""``switchman keys new`` and ``switchman rotate-keys`` (DESIGN §8).

``keys new --tenant T --scopes generate,read`` prints a new API key *once* (it is not
stored anywhere) and the ``sha256:`` hash that goes in ``tenants[].api_keys``; add the
hash beside the old one, move callers over, then remove the old one (keys overlap
during rotation).

``rotate-keys [--config FILE]`` re-seals every stored tenant credential under the
current (first) ``security.encryption_keys`` key, straight in the database the config
names; afterwards the old key can be removed from the config.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any, get_args

import msgspec

from router.auth import hash_key, new_api_key
from router.config import Config, Scope, load_config
from router.crypto import KeyRing
from router.errors import ConfigError

__all__ = ["register", "rotate_keys"]

_SCOPES = frozenset(get_args(Scope))


def cmd_keys_new(args: argparse.Namespace) -> int:
    """Print a new key and its hash."""
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    unknown = sorted(set(scopes) - _SCOPES)
    if unknown or not scopes:
        print(
            f"--scopes: expected some of {sorted(_SCOPES)}, got {unknown or 'none'}",
            file=sys.stderr,
        )
        return 2
    key = new_api_key()
    entry = {"id": args.tenant, "api_keys": [hash_key(key)], "scopes": scopes}
    if args.json:
        print(msgspec.json.encode({"api_key": key, "tenant": entry}).decode())
        return 0
    print(f"API key (shown once, store it now): {key}")
    print("Config entry (tenants:):")
    print(f"  - id: {args.tenant}")
    print(f'    api_keys: ["{hash_key(key)}"]')
    print(f"    scopes: [{', '.join(scopes)}]")
    return 0


async def rotate_keys(config: Config) -> tuple[int, int]:
    """Re-seal every stored secret under the current key; (re-sealed, already current)."""
    from router.store import open_store
    from router.store.credentials import TenantStore
    from router.tenants import Credentials

    ring = KeyRing(config.security.encryption_keys)
    if not ring.enabled:
        raise ConfigError(["security.encryption_keys: no key configured"])
    store = open_store(config.storage.database_url)
    await store.start()
    try:
        from breakers.clock import SystemClock

        creds = Credentials(TenantStore.for_job_store(store), ring, SystemClock())
        return await creds.rotate_all()
    finally:
        await store.close()


def cmd_rotate_keys(args: argparse.Namespace) -> int:
    """Re-seal stored credentials under the current key."""
    from router.crypto import DecryptionFailed

    path = Path(args.config or os.environ.get("SWITCHMAN_CONFIG") or "")
    if not args.config and not os.environ.get("SWITCHMAN_CONFIG"):
        print("rotate-keys: --config or SWITCHMAN_CONFIG is required", file=sys.stderr)
        return 2
    try:
        config = load_config(path)
        rotated, current = asyncio.run(rotate_keys(config))
    except ConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    except DecryptionFailed as exc:
        print(f"rotate-keys: a stored secret did not decrypt: {exc}", file=sys.stderr)
        return 1
    result: dict[str, Any] = {"rotated": rotated, "already_current": current}
    if args.json:
        print(msgspec.json.encode(result).decode())
    else:
        print(f"re-sealed {rotated} credential(s); {current} already under the current key")
    return 0


def register(sub: Any) -> None:
    """Add ``keys new`` and ``rotate-keys`` to the ``switchman`` subcommands."""
    keys = sub.add_parser("keys", help="manage caller API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="print a new API key and its hash for the config")
    new.add_argument("--tenant", required=True)
    new.add_argument("--scopes", default="generate,read", help="comma-separated scopes")
    new.add_argument("--json", action="store_true")
    new.set_defaults(func=cmd_keys_new)
    rotate = sub.add_parser("rotate-keys", help="re-encrypt stored secrets under the current key")
    rotate.add_argument("--config", help="YAML config (default: $SWITCHMAN_CONFIG)")
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(func=cmd_rotate_keys)
