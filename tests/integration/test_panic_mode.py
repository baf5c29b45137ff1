"""Panic mode: every breaker open, one early probe at a time, recovery at the first success.

A real Switchman in front of sandbox emulators, as in ``test_core_acceptance``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import make_config, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMES = ("cheap", "mid", "dear")


def _providers(reset_timeout_s: float) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "cost": {"per_image_usd": price},
            "faults": {"error_ratio": 1.0},
            "rate_limit": {"requests": 1000, "per_s": 1},
            "breaker": {"fail_max": 3, "reset_timeout_s": reset_timeout_s},
        }
        for name, price in zip(NAMES, (0.01, 0.02, 0.04), strict=True)
    ]


def _submits(service_emulators: Any) -> int:
    return sum(service_emulators(n).stats.by_path.get("/v1/images/generations", 0) for n in NAMES)


def _ok(r: httpx.Response) -> bool:
    return r.status_code == 200 and r.json()["status"] == "succeeded"


async def test_all_open_probes_early_one_at_a_time_and_recovers_before_the_timeout(
    tmp_path: Path,
) -> None:
    """With every breaker open (reset timeout 5 s), a request may carry one probe to a
    provider open for ≥ 0.25 s (a twentieth of the timeout); others get a fast 503. Once the
    providers are back, the next probe closes a breaker: recovery in well under 5 s."""
    config = make_config(tmp_path, _providers(5.0))
    async with serve(config) as running:
        for _ in range(6):  # trips every breaker (each request tries every provider)
            await running.generate()
        breakers = {
            p["name"]: p["breaker"]
            for p in (await running.client.get("/v1/providers")).json()["providers"]
        }
        assert set(breakers.values()) == {"open"}, breakers
        before = _submits(running.emulator)
        responses = []
        started = time.monotonic()
        while time.monotonic() - started < 1.5:
            responses.append(await running.generate())
        during = _submits(running.emulator) - before
        elapsed = time.monotonic() - started
        for name in NAMES:
            running.emulator(name).faults.update(error_ratio=0.0)
        await asyncio.sleep(0.3)  # every breaker has been open ≥ a twentieth of the timeout
        recovered_at = time.monotonic()
        first = await running.generate()
        after = [await running.generate() for _ in range(50)]
        recovery_s = time.monotonic() - recovered_at
    refused = [r for r in responses if r.status_code == 503]
    assert len(refused) >= len(responses) - during
    for r in refused:
        assert r.headers["content-type"].startswith("application/problem+json")
        assert int(r.headers["retry-after"]) >= 1
    # At most one upstream attempt per request, and probes spaced ≥ 0.25 s per provider.
    assert during <= len(responses)
    assert 1 <= during <= len(NAMES) * (elapsed / 0.25 + 1), f"{during} probes in {elapsed:.1f}s"
    assert _ok(first), first.text
    assert sum(_ok(r) for r in after) == 50
    assert recovery_s < 5.0
