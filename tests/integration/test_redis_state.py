"""Shared breakers, buckets, cooldowns, drains and locks across replicas, on real Redis.

Each "replica" is a :class:`RedisState` with its own connections and a
:class:`ProviderGuard` built on it, as a Switchman process builds them.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from breakers import (
    GuardRejected,
    IdempotencyLockBusy,
    ProviderGuard,
    RedisState,
    SharedStateUnavailable,
    SystemClock,
)
from router.config import ProviderConfig
from router.errors import UpstreamError
from tests.redis_support import REDIS_URL, PrivateRedis, purge_prefix, require_redis, unique_prefix

pytestmark = pytest.mark.integration


def provider_config(**overrides: Any) -> ProviderConfig:
    raw: dict[str, Any] = {
        "name": "p1",
        "adapter": "openai",
        "base_url": "http://127.0.0.1:9",
        "kinds": ["image"],
        "rate_limit": {"requests": 1000, "per_s": 1},
        "breaker": {"fail_max": 3, "reset_timeout_s": 30},
        **overrides,
    }
    return msgspec.convert(raw, ProviderConfig)


async def eventually(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Wait until ``condition()`` holds: another replica's message is on its way."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


class Replica:
    """One process's worth of shared state and a guard for provider ``p1``."""

    def __init__(self, url: str, prefix: str, config: ProviderConfig, replicas: int = 1) -> None:
        self.transitions: list[tuple[float, str, str]] = []
        self.changed = asyncio.Event()
        self.degraded_events: list[tuple[float, bool]] = []
        self.degraded_changed = asyncio.Event()
        self.state = RedisState(
            url,
            clock=SystemClock(),
            prefix=prefix,
            replicas_hint=replicas,
            on_degraded=self._on_degraded,
            retry_interval_s=0.25,
        )
        self.guard = ProviderGuard(
            config, SystemClock(), self._on_transition, shared=self.state.provider(config)
        )

    def online(self) -> bool:
        """Whether the replica is on shared state (a call, so mypy does not narrow it)."""
        return self.state.online

    def _on_transition(self, _provider: str, old: str, new: str) -> None:
        self.transitions.append((time.perf_counter(), old, new))
        self.changed.set()

    def _on_degraded(self, degraded: bool) -> None:
        self.degraded_events.append((time.perf_counter(), degraded))
        self.degraded_changed.set()

    async def wait_degraded(self, value: bool, timeout_s: float) -> float:
        """Wait until the last degraded report is ``value``; the time it was reported."""
        async with asyncio.timeout(timeout_s):
            while not self.degraded_events or self.degraded_events[-1][1] is not value:
                self.degraded_changed.clear()
                await self.degraded_changed.wait()
        return self.degraded_events[-1][0]

    async def wait_state(self, state: str, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while self.guard.breaker.state != state:
                self.changed.clear()
                await self.changed.wait()


async def fail_once(guard: ProviderGuard) -> None:
    with pytest.raises(UpstreamError):
        async with guard.attempt():
            raise UpstreamError("upstream_unavailable", "503 from upstream", provider="p1")


@pytest.fixture
async def replicas() -> AsyncIterator[Callable[..., Replica]]:
    require_redis()
    prefix = unique_prefix()
    made: list[Replica] = []

    def make(config: ProviderConfig | None = None, url: str = REDIS_URL, **kw: Any) -> Replica:
        replica = Replica(url, prefix, config or provider_config(), **kw)
        made.append(replica)
        return replica

    try:
        yield make
    finally:
        for replica in made:
            await replica.state.close()
        purge_prefix(prefix)


async def test_breaker_opened_on_one_replica_is_open_on_another_within_a_second(
    replicas: Callable[..., Replica],
) -> None:
    """Failures on A open the breaker; B's view says open within the 1 s bound."""
    a, b = replicas(), replicas()
    await a.state.start()
    await b.state.start()
    for _ in range(3):
        await fail_once(a.guard)
        tripped = time.perf_counter()
    await b.wait_state("open", timeout_s=2.0)
    seen = b.transitions[-1][0] - tripped
    print(f"\nbreaker propagation A→B: {seen * 1000:.2f} ms")
    assert seen <= 1.0
    with pytest.raises(GuardRejected) as refused:
        async with b.guard.attempt():
            pass
    assert refused.value.reason == "breaker_open"


async def test_admission_rechecks_redis_even_before_the_view_catches_up(
    replicas: Callable[..., Replica],
) -> None:
    """An opened breaker refuses B at once: ADMIT reads Redis, not B's (possibly stale) view."""
    a, b = replicas(), replicas()
    await a.state.start()
    await b.state.start()
    a.guard.breaker.force_open()
    await a.state.drain_background()
    shared = b.guard.shared
    assert shared is not None
    shared.view.stored = "closed"  # B's view lags: the script alone must refuse
    assert b.guard.admission_reason() is None
    with pytest.raises(GuardRejected) as refused:
        async with b.guard.attempt():
            pass
    assert refused.value.reason == "breaker_open"


async def test_half_open_admits_one_probe_across_replicas(replicas: Callable[..., Replica]) -> None:
    """After the reset timeout exactly one replica gets the trial call; its success closes all."""
    config = provider_config(breaker={"fail_max": 1, "reset_timeout_s": 0.2})
    a, b, c = replicas(config), replicas(config), replicas(config)
    for r in (a, b, c):
        await r.state.start()
    await fail_once(a.guard)
    await a.state.drain_background()
    await asyncio.sleep(0.25)  # the breaker's own (real) reset timeout
    admitted: list[Replica] = []
    verdicts: asyncio.Queue[str] = asyncio.Queue()
    gate = asyncio.Event()

    async def try_probe(r: Replica) -> None:
        try:
            async with r.guard.attempt() as permit:
                assert permit.probe
                admitted.append(r)
                verdicts.put_nowait("probe")
                await gate.wait()
        except GuardRejected as exc:
            verdicts.put_nowait(exc.reason)

    tasks = [asyncio.create_task(try_probe(r)) for r in (a, b, c)]
    got = sorted([await verdicts.get() for _ in range(3)])
    assert got == ["probe", "probe_busy", "probe_busy"]
    assert len(admitted) == 1
    gate.set()
    await asyncio.gather(*tasks)
    await admitted[0].state.drain_background()
    for r in (a, b, c):
        await r.wait_state("closed", timeout_s=2.0)


async def test_one_bucket_is_shared_by_every_replica(replicas: Callable[..., Replica]) -> None:
    """Three replicas hammering a bucket of 20 get 20 tokens between them, not 60."""
    config = provider_config(rate_limit={"requests": 20, "per_s": 60})
    group = [replicas(config) for _ in range(3)]
    for r in group:
        await r.state.start()
    granted = 0
    reasons: set[str] = set()

    async def hammer(r: Replica) -> None:
        nonlocal granted
        for _ in range(30):
            try:
                async with r.guard.attempt():
                    granted += 1
            except GuardRejected as exc:
                reasons.add(exc.reason)

    await asyncio.gather(*(hammer(r) for r in group))
    assert granted == 20
    assert reasons == {"rate_limited"}


async def test_cooldown_and_drain_reach_every_replica(replicas: Callable[..., Replica]) -> None:
    """A 429's Retry-After on A cools B down; a drain on A drains B; undrain undrains B."""
    a, b = replicas(), replicas()
    await a.state.start()
    await b.state.start()
    with pytest.raises(UpstreamError):
        async with a.guard.attempt():
            raise UpstreamError("rate_limited", "429", provider="p1", retry_after_s=30)
    await a.state.drain_background()
    # B hears of it through pub/sub: delivery is asynchronous, so wait (bounded) for it.
    await eventually(lambda: b.guard.admission_reason() == "cooling_down")
    assert b.guard.cooldown.remaining_s == pytest.approx(30, abs=1)
    a.guard.set_drained(True, "maintenance")
    await a.state.drain_background()
    await eventually(lambda: b.guard.drained)
    assert b.guard.drain_reason == "maintenance"
    a.guard.set_drained(False)
    await a.state.drain_background()
    await eventually(lambda: not b.guard.drained)


async def test_idempotency_lock_is_exclusive_and_released(replicas: Callable[..., Replica]) -> None:
    """A second holder gets 409-busy; after release the key is free again."""
    a, b = replicas(), replicas()
    await a.state.start()
    await b.state.start()
    async with a.state.idempotency_lock("team-a", "key-1", ttl_s=30):
        with pytest.raises(IdempotencyLockBusy):
            async with b.state.idempotency_lock("team-a", "key-1", ttl_s=30):
                pass
        async with b.state.idempotency_lock("team-b", "key-1", ttl_s=30):
            pass  # another tenant's key of the same name is another lock
    async with b.state.idempotency_lock("team-a", "key-1", ttl_s=30):
        pass


async def test_admit_is_one_fast_round_trip(replicas: Callable[..., Replica]) -> None:
    """ADMIT over loopback: report p50/p99; p99 stays far below an attempt's cost."""
    a = replicas()
    await a.state.start()
    handle = a.guard.shared
    assert handle is not None
    samples = []
    for _ in range(2000):
        started = time.perf_counter_ns()
        await handle.admit()
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    p50, p99 = statistics.median(samples), samples[int(len(samples) * 0.99)]
    print(f"\nADMIT round trip: p50 {p50:.0f} µs, p99 {p99:.0f} µs")
    assert p99 < 20_000


async def test_redis_outage_falls_back_locally_and_resynchronizes() -> None:
    """Kill Redis: attempts go on with the local share and degraded is reported; restart
    Redis: the replica is back on shared state within 10 s."""
    server = PrivateRedis()
    config = provider_config(rate_limit={"requests": 30, "per_s": 60})
    with server.running():
        r = Replica(server.url, unique_prefix(), config, replicas=3)
        try:
            await r.state.start()
            assert r.online()
            assert r.degraded_events[-1][1] is False
            server.stop()
            # The first call to notice the outage still gets an answer (the local guard's).
            async with r.guard.attempt():
                pass
            await r.wait_degraded(True, timeout_s=5)
            assert not r.online()
            with pytest.raises(SharedStateUnavailable):
                async with r.state.idempotency_lock("team-a", "k", ttl_s=5):
                    pass
            granted, reasons = 1, set()
            for _ in range(30):
                try:
                    async with r.guard.attempt():
                        granted += 1
                except GuardRejected as exc:
                    reasons.add(exc.reason)
            assert reasons == {"rate_limited"}
            assert granted == 10  # the local share: 30 / 3 replicas
            assert r.guard.bucket.capacity == 10
            server.start()
            restarted = time.perf_counter()
            back = await r.wait_degraded(False, timeout_s=10)
            print(f"\nshared state back {back - restarted:.2f} s after Redis returned")
            assert r.online()
            assert r.guard.bucket.capacity == 30
            async with r.state.idempotency_lock("team-a", "k", ttl_s=5):
                pass
        finally:
            await r.state.close()


async def test_a_replica_started_without_redis_serves_degraded_then_joins() -> None:
    """Boot with Redis down: degraded at once, no exception; Redis up later: online."""
    server = PrivateRedis()
    r = Replica(server.url, unique_prefix(), provider_config())
    try:
        await r.state.start()
        assert not r.online()
        assert r.degraded_events == [(r.degraded_events[0][0], True)]
        async with r.guard.attempt():
            pass
        with server.running():
            await r.wait_degraded(False, timeout_s=10)
            assert r.online()
            async with r.guard.attempt():
                pass
    finally:
        await r.state.close()
