"""GCRA arithmetic, and the Lua scripts run by real Redis with a controlled ``now``."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from breakers import FakeClock, RedisState, SharedProvider, gcra_admit, gcra_available
from router.config import ProviderConfig
from tests.redis_support import REDIS_URL, purge_prefix, require_redis, unique_prefix


def provider_config(**overrides: Any) -> ProviderConfig:
    raw: dict[str, Any] = {
        "name": "p1",
        "adapter": "openai",
        "base_url": "http://127.0.0.1:9",
        "kinds": ["image"],
        "rate_limit": {"requests": 5, "per_s": 1},
        "breaker": {"fail_max": 3, "reset_timeout_s": 10, "half_open_max_probes": 1},
        **overrides,
    }
    return msgspec.convert(raw, ProviderConfig)


def test_gcra_allows_a_burst_then_the_sustained_rate() -> None:
    """A full bucket admits ``burst`` at once, then one request per emission interval."""
    tat, now, allowed = 0.0, 100.0, 0
    for _ in range(8):
        ok, tat = gcra_admit(tat, now, emission=0.2, burst=5)
        allowed += ok
    assert allowed == 5
    assert gcra_admit(tat, now + 0.1, 0.2, 5)[0] is False
    assert gcra_admit(tat, now + 0.2, 0.2, 5)[0] is True


def test_gcra_available_counts_headroom() -> None:
    """Headroom is the burst minus how far TAT runs ahead, in tokens, clamped to [0, burst]."""
    assert gcra_available(0.0, 0.2, 5) == 5
    assert gcra_available(0.4, 0.2, 5) == pytest.approx(3)
    assert gcra_available(5.0, 0.2, 5) == 0
    assert gcra_available(-3.0, 0.2, 5) == 5


@pytest.fixture
async def controlled() -> AsyncIterator[tuple[RedisState, FakeClock]]:
    require_redis()
    prefix = unique_prefix()
    clock = FakeClock()
    state = RedisState(
        REDIS_URL, clock=clock, prefix=prefix, now_us=lambda: clock.time() * 1_000_000
    )
    try:
        yield state, clock
    finally:
        await state.close()
        purge_prefix(prefix)


async def started(state: RedisState, **overrides: Any) -> SharedProvider:
    handle = state.provider(provider_config(**overrides))
    await state.start()
    assert state.online
    return handle


async def test_lua_gcra_matches_the_python_reference(
    controlled: tuple[RedisState, FakeClock],
) -> None:
    """The ADMIT script's token decisions equal gcra_admit's for a random arrival pattern."""
    state, clock = controlled
    handle = await started(state)
    rng = random.Random(7)
    tat = 0.0
    for _ in range(200):
        clock.advance(rng.choice([0.0, 0.0, 0.05, 0.1, 0.2, 0.5, 1.3]))
        # In whole microseconds, as the script sees it: exact, with no float fuzz.
        now_us = float(round(clock.time() * 1_000_000))
        expected, tat = gcra_admit(tat, now_us, emission=200_000, burst=5)
        verdict = await handle.admit()
        assert verdict.admitted is expected
        if not expected:
            assert verdict.reason == "rate_limited"


async def test_lua_breaker_opens_probes_and_closes(
    controlled: tuple[RedisState, FakeClock],
) -> None:
    """fail_max failures open it; after reset_timeout one probe is admitted; success closes."""
    state, clock = controlled
    handle = await started(state, rate_limit={"requests": 1000, "per_s": 1})
    for _ in range(3):
        assert (await handle.admit()).admitted
        handle.report_failure(None)
        await state.drain_background()
    assert handle.breaker_state() == "open"
    assert (await handle.admit()).reason == "breaker_open"
    clock.advance(10.0)
    assert handle.breaker_state() == "half_open"
    probe = await handle.admit()
    assert probe.admitted
    assert probe.probe_id is not None
    assert (await handle.admit()).reason == "probe_busy"
    handle.report_success(probe.probe_id)
    await state.drain_background()
    assert handle.breaker_state() == "closed"
    assert (await handle.admit()).admitted


async def test_lua_failed_probe_reopens_with_a_fresh_timeout(
    controlled: tuple[RedisState, FakeClock],
) -> None:
    """A failed half-open trial reopens the breaker for another full reset timeout."""
    state, clock = controlled
    handle = await started(state, breaker={"fail_max": 1, "reset_timeout_s": 10})
    handle.report_failure(None)
    await state.drain_background()
    clock.advance(10.0)
    probe = await handle.admit()
    assert probe.probe_id is not None
    handle.report_failure(probe.probe_id)
    await state.drain_background()
    clock.advance(9.9)
    assert (await handle.admit()).reason == "breaker_open"
    clock.advance(0.2)
    assert (await handle.admit()).admitted


async def test_lua_failures_outside_the_window_do_not_accumulate(
    controlled: tuple[RedisState, FakeClock],
) -> None:
    """Failures more than the window apart never add up to fail_max."""
    state, clock = controlled
    handle = await started(state)
    for _ in range(5):
        handle.report_failure(None)
        await state.drain_background()
        clock.advance(61.0)
    assert handle.breaker_state() == "closed"
    assert handle.view.failures == 1


async def test_lua_cooldown_extends_and_never_shortens(
    controlled: tuple[RedisState, FakeClock],
) -> None:
    """A longer Retry-After extends a cooldown; a shorter one leaves it; it then expires."""
    state, clock = controlled
    handle = await started(state)
    handle.cooldown(5.0)
    await state.drain_background()
    handle.cooldown(1.0)
    await state.drain_background()
    assert (await handle.admit()).reason == "cooling_down"
    assert handle.cooldown_remaining_s() == pytest.approx(5.0)
    clock.advance(5.0)
    assert (await handle.admit()).admitted


async def test_lua_forced_open_ignores_the_reset_timeout(
    controlled: tuple[RedisState, FakeClock],
) -> None:
    """An operator's open holds past reset_timeout until it is forced closed."""
    state, clock = controlled
    handle = await started(state)
    handle.force(True)
    await state.drain_background()
    clock.advance(3600)
    assert (await handle.admit()).reason == "breaker_open"
    handle.force(False)
    await state.drain_background()
    assert (await handle.admit()).admitted
