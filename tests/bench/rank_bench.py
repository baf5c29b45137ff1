"""How long one routing decision takes: ``ProviderStrategy.rank()`` at 10, 100, 1000 providers.

The snapshot is made to look like production, not like a best case: a mix of
image and video providers with different prices, latency estimates, load and
token levels; a few open, half-open or drained breakers; a request with a
deadline, so exclusion, scoring and the near-tie draw all run. Every call is
timed on its own with ``perf_counter_ns``, with the garbage collector left on as
it is in the service.

The calls are split into rounds, the sizes interleaved round by round, and the
median reported is the median of the rounds' medians: on a shared VM a burst
from a noisy neighbour can double every timing for tens of seconds (seen here:
92 µs against 46 µs for the same code minutes apart), and one such round must
not decide the figure. The p99 and the minimum are over every call.
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
    #: Each round's median, µs, in the order run (see the module docstring).
    round_medians_us: tuple[float, ...] = ()


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


class _Bench:
    """One size's strategy, snapshot and request, and the samples timed so far."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.strategy = ProviderStrategy()
        self.snapshot = realistic_snapshot(n, seed)
        self.request = RouteRequest(kind="image", width=1024, height=1024, n=1, remaining_s=30.0)
        self.rng = random.Random(seed)
        self.samples: list[int] = []
        self.round_medians_ns: list[float] = []
        self.candidates = 0

    def warm(self, calls: int) -> None:
        for _ in range(calls):  # warm caches and the allocator
            self.strategy.rank(self.request, self.snapshot, self.rng)

    def run(self, calls: int) -> None:
        strategy, request, snapshot, rng = self.strategy, self.request, self.snapshot, self.rng
        clock = time.perf_counter_ns
        samples: list[int] = []
        ranking = None
        for _ in range(calls):
            start = clock()
            ranking = strategy.rank(request, snapshot, rng)
            samples.append(clock() - start)
        self.candidates = len(ranking.candidates) if ranking else 0
        self.round_medians_ns.append(statistics.median(samples))
        self.samples += samples

    def timing(self) -> RankTiming:
        samples = sorted(self.samples)
        p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))]
        return RankTiming(
            providers=self.n,
            calls=len(samples),
            candidates=self.candidates,
            median_us=statistics.median(self.round_medians_ns) / 1000.0,
            p99_us=p99 / 1000.0,
            min_us=samples[0] / 1000.0,
            round_medians_us=tuple(m / 1000.0 for m in self.round_medians_ns),
        )


def bench_rank(n: int, calls: int, seed: int = 1, rounds: int = 1) -> RankTiming:
    """Time ``calls`` calls of ``rank()`` on a :func:`realistic_snapshot` of ``n`` providers."""
    return run_all({n: calls}, seed=seed, rounds=rounds)[0]


def run_all(
    calls: dict[int, int] | None = None, *, seed: int = 1, rounds: int = 5
) -> list[RankTiming]:
    """Every size in ``calls`` (default :data:`DEFAULT_CALLS`), interleaved over ``rounds``."""
    benches = [(_Bench(n, seed), c) for n, c in (calls or DEFAULT_CALLS).items()]
    for bench, c in benches:
        bench.warm(min(c, 200))
    for _ in range(rounds):
        for bench, c in benches:
            bench.run(max(1, c // rounds))
    return [bench.timing() for bench, _ in benches]


if __name__ == "__main__":
    for timing in run_all():
        print(timing)
