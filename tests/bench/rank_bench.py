"""How long one routing decision takes: ``ProviderStrategy.rank()`` at 10, 100, 1000 providers.

The snapshot is made to look like production, not like a best case: a mix of
image and video providers with different prices, latency estimates, load and
token levels; a few open, half-open or drained breakers; a request with a
deadline, so exclusion, scoring and the near-tie draw all run. Every call is
timed on its own with ``perf_counter_ns`` and the median and p99 reported,
with the garbage collector left on as it is in the service.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

from strategies import (
    BreakerState,
    Capabilities,
    Cost,
    ProviderSnapshot,
    ProviderStrategy,
    RouteRequest,
    Snapshot,
)

__all__ = ["RankTiming", "bench_rank", "realistic_snapshot"]

#: Calls timed per size; fewer for the large sizes so the whole run stays short.
DEFAULT_CALLS: dict[int, int] = {10: 20_000, 100: 4_000, 1000: 400}


@dataclass(frozen=True, slots=True)
class RankTiming:
    """Timing of ``rank()`` over ``calls`` calls with ``providers`` providers, µs."""

    providers: int
    calls: int
    candidates: int
    median_us: float
    p99_us: float
    min_us: float


def realistic_snapshot(n: int, seed: int = 1) -> Snapshot:
    """``n`` providers in a plausible mix of states (see the module docstring)."""
    rng = random.Random(seed)
    providers = []
    for i in range(n):
        video = i % 4 == 3
        kinds = frozenset({"image", "video"} if video else {"image"})
        state = rng.random()
        breaker: BreakerState = (
            "open" if state < 0.05 else "half_open" if state < 0.08 else "closed"
        )
        ewma = {"image": rng.uniform(0.5, 8.0)}
        if video:
            ewma["video"] = rng.uniform(20.0, 120.0)
        providers.append(
            ProviderSnapshot(
                name=f"provider-{i:04d}",
                capabilities=Capabilities(
                    kinds=kinds,
                    max_width=2048,
                    max_height=2048,
                    max_duration_s=10.0 if video else None,
                    max_n=4,
                ),
                cost=Cost(per_image_usd=rng.uniform(0.002, 0.08), per_video_s_usd=0.05),
                breaker=breaker,
                probe_available=rng.random() < 0.5,
                drained=rng.random() < 0.02,
                success_ratio=rng.uniform(0.85, 1.0),
                healthy=rng.random() > 0.03,
                latency_ewma_s=ewma,
                latency_tail_s={k: v * 2.5 for k, v in ewma.items()},
                inflight=rng.randrange(0, 32),
                max_concurrency=32,
                tokens_available=rng.uniform(0.0, 50.0),
                tokens_capacity=50.0,
                cooldown_remaining_s=2.0 if rng.random() < 0.03 else 0.0,
                priority=rng.randrange(1, 200),
                weight=rng.uniform(0.5, 2.0),
            )
        )
    return Snapshot(providers=tuple(providers))


def bench_rank(n: int, calls: int, seed: int = 1) -> RankTiming:
    """Time ``calls`` calls of ``rank()`` on a :func:`realistic_snapshot` of ``n`` providers."""
    strategy = ProviderStrategy()
    snapshot = realistic_snapshot(n, seed)
    request = RouteRequest(kind="image", width=1024, height=1024, n=1, remaining_s=30.0)
    rng = random.Random(seed)
    for _ in range(min(calls, 200)):  # warm caches and the allocator
        strategy.rank(request, snapshot, rng)
    samples: list[int] = []
    clock = time.perf_counter_ns
    ranking = None
    for _ in range(calls):
        start = clock()
        ranking = strategy.rank(request, snapshot, rng)
        samples.append(clock() - start)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))]
    return RankTiming(
        providers=n,
        calls=calls,
        candidates=len(ranking.candidates) if ranking else 0,
        median_us=statistics.median(samples) / 1000.0,
        p99_us=p99 / 1000.0,
        min_us=samples[0] / 1000.0,
    )


def run_all(calls: dict[int, int] | None = None) -> list[RankTiming]:
    """:func:`bench_rank` at every size in ``calls`` (default :data:`DEFAULT_CALLS`)."""
    return [bench_rank(n, c) for n, c in (calls or DEFAULT_CALLS).items()]


if __name__ == "__main__":
    for timing in run_all():
        print(timing)
