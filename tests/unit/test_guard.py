"""ProviderGuard: atomic admission across breaker, bucket, cooldown and concurrency cap."""

from __future__ import annotations

import asyncio

import pytest

from breakers.clock import FakeClock
from breakers.guard import GuardRejected, ProviderGuard
from router.adapters.base import RateLimitHint
from router.config import BreakerConfig, ProviderConfig, RateLimitConfig
from router.errors import UpstreamError


def provider(
    *, requests: float = 10, per_s: float = 1, max_concurrency: int | None = None, fail_max: int = 2
) -> ProviderConfig:
    return ProviderConfig(
        name="p1",
        adapter="sim",
        base_url="http://127.0.0.1:1",
        kinds=["image"],
        rate_limit=RateLimitConfig(requests=requests, per_s=per_s, max_concurrency=max_concurrency),
        breaker=BreakerConfig(fail_max=fail_max, reset_timeout_s=10, half_open_max_probes=1),
    )


async def test_admits_and_releases_slot() -> None:
    """An admitted attempt takes a token and a slot, and gives the slot back on exit."""
    clock = FakeClock()
    guard = ProviderGuard(provider(max_concurrency=1), clock)
    assert guard.admission_reason() is None
    async with guard.attempt() as permit:
        assert permit.provider == "p1"
        assert not permit.probe
        assert permit.started_at == clock.monotonic()
        assert guard.concurrency.inflight == 1
        assert guard.admission_reason() == "at_capacity"
    assert guard.concurrency.inflight == 0
    assert guard.bucket.available == 9


async def test_concurrent_admission_is_atomic() -> None:
    """With 3 slots, 10 concurrent attempts admit exactly 3; the rest get at_capacity."""
    guard = ProviderGuard(provider(max_concurrency=3), FakeClock())
    release = asyncio.Event()
    admitted = 0

    async def one() -> str | None:
        nonlocal admitted
        try:
            async with guard.attempt():
                admitted += 1
                await release.wait()
        except GuardRejected as exc:
            return exc.reason
        return None

    tasks = [asyncio.create_task(one()) for _ in range(10)]
    await asyncio.sleep(0)
    assert admitted == 3
    release.set()
    reasons = await asyncio.gather(*tasks)
    assert reasons.count("at_capacity") == 7
    assert guard.concurrency.inflight == 0


async def test_rate_limited_when_bucket_empty() -> None:
    """Once the bucket is empty attempts are refused with rate_limited, without waiting."""
    clock = FakeClock()
    guard = ProviderGuard(provider(requests=2, per_s=1), clock)
    for _ in range(2):
        async with guard.attempt():
            pass
    with pytest.raises(GuardRejected) as info:
        async with guard.attempt():
            pass
    assert info.value.reason == "rate_limited"
    clock.advance(0.5)
    assert guard.admission_reason() is None


async def test_upstream_429_sets_cooldown_without_tripping() -> None:
    """A rate_limited UpstreamError starts a Retry-After cooldown and never opens the breaker."""
    clock = FakeClock()
    guard = ProviderGuard(provider(fail_max=1), clock)
    with pytest.raises(UpstreamError):
        async with guard.attempt():
            raise UpstreamError("rate_limited", "429", retry_after_s=4)
    assert guard.breaker.state == "closed"
    assert guard.admission_reason() == "cooling_down"
    with pytest.raises(GuardRejected, match="cooling_down"):
        async with guard.attempt():
            pass
    clock.advance(4)
    assert guard.admission_reason() is None


async def test_429_without_retry_after_uses_default() -> None:
    """A 429 with no Retry-After cools down for the default second."""
    clock = FakeClock()
    guard = ProviderGuard(provider(), clock)
    with pytest.raises(UpstreamError):
        async with guard.attempt():
            raise UpstreamError("rate_limited", "429")
    assert guard.cooldown.remaining_s == 1.0


async def test_breaker_open_then_probe_busy() -> None:
    """Failures open the breaker; after the timeout one probe runs, others get probe_busy."""
    clock = FakeClock()
    guard = ProviderGuard(provider(fail_max=2), clock)
    for _ in range(2):
        with pytest.raises(UpstreamError):
            async with guard.attempt():
                raise UpstreamError("upstream_unavailable", "503")
    assert guard.admission_reason() == "breaker_open"
    clock.advance(10)
    assert guard.admission_reason() is None
    async with guard.attempt() as permit:
        assert permit.probe
        assert guard.admission_reason() == "probe_busy"
    assert guard.breaker.state == "closed"


async def test_rejection_consumes_nothing() -> None:
    """A refused attempt takes no token and no slot."""
    guard = ProviderGuard(provider(max_concurrency=1), FakeClock())
    guard.breaker.force_open()
    with pytest.raises(GuardRejected, match="breaker_open"):
        async with guard.attempt():
            pass
    assert guard.bucket.available == 10
    assert guard.concurrency.inflight == 0


def test_observe_rate_limit_feeds_bucket() -> None:
    """An adapter's RateLimitHint lowers the bucket's headroom."""
    guard = ProviderGuard(provider(), FakeClock())
    guard.observe_rate_limit(RateLimitHint(remaining=0, limit=50, reset_s=3))
    assert guard.admission_reason() == "rate_limited"


async def test_transition_callback_wired() -> None:
    """The guard passes on_transition to its breaker."""
    seen: list[tuple[str, str, str]] = []
    guard = ProviderGuard(provider(fail_max=1), FakeClock(), lambda *t: seen.append(t))
    with pytest.raises(TimeoutError):
        async with guard.attempt():
            raise TimeoutError
    assert seen == [("p1", "closed", "open")]
