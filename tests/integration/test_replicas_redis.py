"""Issue 8's acceptance (the Redis parts): real Switchman replicas sharing one Redis.

Each replica is a full Switchman (uvicorn on loopback, its own connections to Redis
and its own store) in this test's process; all of them route to one OpenAI emulator
that enforces no limit of its own, so what it receives is exactly what the shared
bucket and breaker let through.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from breakers import SharedStateUnavailable
from router.auth import hash_key
from router.config import Config, FaultsConfig, parse_config
from router.sandbox import Emulator, EmulatorStats, build_emulator
from tests.integration.harness import KEY, Running, serve
from tests.redis_support import REDIS_URL, PrivateRedis, purge_prefix, require_redis, unique_prefix

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMAGES = "/v1/images/generations"
BODY = {"kind": "image", "prompt": "a lighthouse at dusk"}
#: The rate-limit run's length; SWITCHMAN_REPLICA_RUN_S=30 gives the acceptance's 30 s run.
RUN_S = float(os.environ.get("SWITCHMAN_REPLICA_RUN_S", "12"))


class TimedStats(EmulatorStats):
    """Emulator counters that also keep when each generation request arrived."""

    __slots__ = ("arrivals",)

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []

    def record(self, request: web.Request, body: bytes) -> None:
        super().record(request, body)
        if request.path == IMAGES:
            self.arrivals.append(time.monotonic())


def replica_config(
    tmp_path: Path,
    index: int,
    base_url: str,
    redis_url: str,
    prefix: str,
    *,
    rate: float,
    fail_max: int = 5,
    replicas: int = 3,
) -> Config:
    raw: dict[str, Any] = {
        "server": {"port": 0},
        "routing": {"max_attempts": 1, "probe_wait_s": 0},
        "storage": {
            "database_url": f"sqlite+aiosqlite:///{tmp_path}/replica{index}.db",
            "redis_url": redis_url,
            "redis_prefix": prefix,
            "replicas_hint": replicas,
        },
        "tenants": [{"id": "team-a", "api_keys": [hash_key(KEY)], "scopes": ["generate", "read"]}],
        "providers": [
            {
                "name": "p1",
                "adapter": "openai",
                "base_url": base_url,
                "api_key": "sk-sandbox",
                "kinds": ["image"],
                "models": {"image": "dall-e-3"},
                "rate_limit": {"requests": rate, "per_s": 1},
                "breaker": {"fail_max": fail_max, "reset_timeout_s": 60},
            }
        ],
    }
    return parse_config(msgspec.json.decode(msgspec.json.encode(raw)))


@contextlib.asynccontextmanager
async def emulator(
    faults: FaultsConfig | None = None,
) -> AsyncIterator[tuple[Emulator, TimedStats]]:
    emu = build_emulator("openai", faults or FaultsConfig())
    stats = TimedStats()
    emu.stats = stats
    await emu.start()
    try:
        yield emu, stats
    finally:
        await emu.stop()


@contextlib.asynccontextmanager
async def fleet(configs: Sequence[Config]) -> AsyncIterator[list[Running]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serve(c)) for c in configs]


async def paced(replicas: Sequence[Running], per_s: float, duration_s: float) -> list[int]:
    """Round-robin ``per_s`` requests a second for ``duration_s``; their statuses."""
    statuses: list[int] = []

    async def one(r: Running) -> None:
        statuses.append((await r.generate(BODY)).status_code)

    tasks = []
    start = time.monotonic()
    n = 0
    while (due := start + n / per_s) < start + duration_s:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tasks.append(asyncio.create_task(one(replicas[n % len(replicas)])))
        n += 1
    await asyncio.gather(*tasks)
    return statuses


async def test_three_replicas_share_one_rate_limit(tmp_path: Path) -> None:
    """Offered 2.5 × R across three replicas, the emulator gets at most R × 1.05 per second."""
    require_redis()
    prefix, rate = unique_prefix(), 10.0
    try:
        async with emulator() as (emu, stats):
            configs = [
                replica_config(tmp_path, i, emu.base_url, REDIS_URL, prefix, rate=rate)
                for i in range(3)
            ]
            async with fleet(configs) as replicas:
                statuses = await paced(replicas, per_s=2.5 * rate, duration_s=RUN_S)
    finally:
        purge_prefix(prefix)
    arrivals = stats.arrivals
    t0 = arrivals[0]
    total = len(arrivals)
    # The first second may hold the bucket's burst (R) on top of the sustained rate.
    steady = [t for t in arrivals if t >= t0 + 1.0]
    steady_span = RUN_S - 1.0
    per_second = [0] * int(RUN_S + 2)
    for t in arrivals:
        per_second[int(t - t0)] += 1
    print(
        f"\n{RUN_S:.0f} s run, R={rate:.0f}/s: {total} upstream requests "
        f"({total / RUN_S:.2f}/s overall, {len(steady) / steady_span:.2f}/s after the first "
        f"second), busiest later second {max(per_second[1:])}; statuses "
        f"{ {s: statuses.count(s) for s in set(statuses)} }"
    )
    assert set(statuses) <= {200, 503}
    assert total <= rate * RUN_S * 1.05 + rate  # sustained rate plus one burst
    assert len(steady) / steady_span <= rate * 1.05
    assert len(steady) / steady_span >= rate * 0.8  # the limit was really reached
    assert max(per_second[1 : int(RUN_S)]) <= rate * 1.05 + 1


async def test_breaker_opened_on_one_replica_stops_all_within_a_second(tmp_path: Path) -> None:
    """A's failures open the breaker; B and C see it open within 1 s and send nothing more."""
    require_redis()
    prefix = unique_prefix()
    try:
        async with emulator(FaultsConfig(error_ratio=1.0)) as (emu, stats):
            configs = [
                replica_config(tmp_path, i, emu.base_url, REDIS_URL, prefix, rate=1000, fail_max=3)
                for i in range(3)
            ]
            async with fleet(configs) as (a, b, c):
                for _ in range(3):
                    failed = await a.generate(BODY)
                    assert failed.json()["status"] == "failed"
                tripped = time.monotonic()
                seen: dict[str, float] = {}
                async with asyncio.timeout(2.0):
                    while len(seen) < 2:
                        for name, r in (("b", b), ("c", c)):
                            rt = r.service.registry.get("p1") if r.service.registry else None
                            if rt is not None and rt.guard.breaker.state == "open":
                                seen.setdefault(name, time.monotonic() - tripped)
                        await asyncio.sleep(0.002)  # sampling interval of the measurement
                print(
                    "\nbreaker seen open: "
                    + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in seen.items())
                )
                assert max(seen.values()) <= 1.0
                before = stats.total
                for r in (a, b, c):
                    response = await r.generate(BODY)
                    assert response.status_code == 503, response.text
                assert stats.total == before
    finally:
        purge_prefix(prefix)


_DEGRADED = re.compile(r'^switchman_degraded\{component="redis"\} (\S+)$', re.MULTILINE)


async def degraded(r: Running) -> float | None:
    text = (await r.client.get("/metrics")).text
    m = _DEGRADED.search(text)
    return float(m.group(1)) if m else None


async def test_redis_outage_mid_run_keeps_serving_and_resynchronizes(tmp_path: Path) -> None:
    """Kill Redis under load: no 5xx, degraded=1 and fail-closed locks; restart it: shared
    state is back (degraded=0, a drain propagates) within 10 s."""
    server = PrivateRedis()
    prefix = unique_prefix()
    with server.running():
        async with emulator() as (emu, _stats):
            configs = [
                replica_config(tmp_path, i, emu.base_url, server.url, prefix, rate=1000, replicas=2)
                for i in range(2)
            ]
            async with fleet(configs) as (a, b):
                # Healthy before the outage. On a loaded machine one startup call can miss
                # the client's short timeout (seen in CI: degraded=1 at once); the resync
                # loop must bring it back, the same as after the outage below.
                async with asyncio.timeout(10.0):
                    while await degraded(a) != 0 or await degraded(b) != 0:
                        await asyncio.sleep(0.05)
                load = asyncio.create_task(paced([a, b], per_s=20, duration_s=6.0))
                await asyncio.sleep(1.0)  # traffic flowing before the outage
                server.stop()
                await asyncio.sleep(2.0)  # traffic flowing during the outage
                assert await degraded(a) == 1
                assert await degraded(b) == 1
                shared = a.service.shared_state
                assert shared is not None
                with pytest.raises(SharedStateUnavailable) as refused:
                    async with shared.idempotency_lock("team-a", "k", ttl_s=5):
                        pass
                assert refused.value.status == 503
                server.start()
                restarted = time.monotonic()
                async with asyncio.timeout(10.0):
                    while await degraded(a) != 0 or await degraded(b) != 0:
                        await asyncio.sleep(0.05)
                back = time.monotonic() - restarted
                statuses = await load
                a_rt = a.service.registry.get("p1") if a.service.registry else None
                assert a_rt is not None
                a_rt.drained = True
                b_rt = b.service.registry.get("p1") if b.service.registry else None
                assert b_rt is not None
                async with asyncio.timeout(2.0):
                    while not b_rt.drained:
                        await asyncio.sleep(0.01)
                a_rt.drained = False
    print(
        f"\nRedis outage: shared state back {back:.2f} s after restart; statuses "
        f"{ {s: statuses.count(s) for s in set(statuses)} }"
    )
    assert statuses
    assert set(statuses) == {200}
    assert back <= 10.0
