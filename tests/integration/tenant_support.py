"""Shared pieces of the tenant, credential, budget and SSRF integration tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec

from router.auth import hash_key
from router.config import Config, parse_config
from router.crypto import new_encryption_key
from tests.integration.harness import ADMIN_KEY, KEY, Running, make_config

__all__ = ["KEY_A", "KEY_B", "FakeResolver", "as_tenant", "tenant_config"]

KEY_A = KEY  # the harness client's key: tenant "team-a"
KEY_B = "sk_sw_test_tenant_b_key"


class FakeResolver:
    """Resolves every name to fixed addresses; later answers model DNS rebinding."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def resolve(self, host: str, port: int) -> list[str]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return answer


def tenant_config(
    tmp_path: Path,
    providers: Sequence[dict[str, Any]],
    *,
    team_a: dict[str, Any] | None = None,
    team_b: dict[str, Any] | None = None,
    security: dict[str, Any] | None = None,
    **harness: Any,
) -> Config:
    """The harness config with tenants ``team-a`` (KEY_A), ``team-b`` (KEY_B) and ``ops``."""
    raw = msgspec.to_builtins(make_config(tmp_path, providers, **harness))
    raw["tenants"] = [
        {"id": "team-a", "api_keys": [hash_key(KEY_A)], **(team_a or {})},
        {"id": "team-b", "api_keys": [hash_key(KEY_B)], **(team_b or {})},
        {"id": "ops", "api_keys": [hash_key(ADMIN_KEY)], "scopes": ["generate", "read", "admin"]},
    ]
    raw["security"] = {"encryption_keys": {"k1": new_encryption_key()}, **(security or {})}
    return parse_config(raw)


def as_tenant(key: str) -> dict[str, str]:
    """Headers that call as the tenant owning ``key``."""
    return {"Authorization": f"Bearer {key}"}


async def responses_of(running: Running) -> list[httpx.Response]:
    """Start recording every response the test client receives (read in full)."""
    seen: list[httpx.Response] = []

    async def hook(response: httpx.Response) -> None:
        await response.aread()
        seen.append(response)

    running.client.event_hooks["response"].append(hook)
    return seen
