"""Property tests: invariants of the provider strategy over random snapshots and requests."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from strategies import (
    Capabilities,
    Cost,
    Policy,
    ProviderSnapshot,
    ProviderStrategy,
    Ranking,
    RouteRequest,
    Snapshot,
    exclusion_reason,
    expected_cost_usd,
    latency_estimate_s,
)

# pyproject's ``norecursedirs`` replaces pytest's defaults, so a ``.hypothesis``
# directory in the checkout makes collection warn, which fails every run. Keep
# Hypothesis's database and caches out of the tree.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "switchman-hypothesis")

KINDS = ("image", "video")
RATIOS = ("1:1", "16:9", "9:16")
POLICIES = ("balanced", "cheapest", "fastest", "priority", "weighted")
EXAMPLES = settings(max_examples=50, deadline=None)

small_float = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
maybe_latency = st.dictionaries(st.sampled_from(KINDS), st.floats(0.01, 60.0), max_size=2)


@st.composite
def provider_snapshot(draw: st.DrawFn, name: str) -> ProviderSnapshot:
    """Any provider state, from fully routable to excluded for several reasons at once."""
    caps = Capabilities(
        kinds=frozenset(draw(st.sets(st.sampled_from(KINDS), min_size=1))),
        max_width=draw(st.none() | st.integers(256, 2048)),
        max_height=draw(st.none() | st.integers(256, 2048)),
        max_duration_s=draw(st.none() | st.floats(1.0, 20.0)),
        aspect_ratios=draw(st.none() | st.frozensets(st.sampled_from(RATIOS), min_size=1)),
        max_n=draw(st.none() | st.integers(1, 4)),
    )
    max_concurrency = draw(st.none() | st.integers(1, 8))
    return ProviderSnapshot(
        name=name,
        capabilities=caps,
        cost=Cost(per_image_usd=draw(small_float), per_video_s_usd=draw(small_float)),
        breaker=draw(st.sampled_from(("closed", "closed", "open", "half_open"))),
        probe_available=draw(st.booleans()),
        drained=draw(st.booleans()) and draw(st.booleans()),
        success_ratio=draw(st.floats(0.0, 1.0)),
        healthy=draw(st.booleans()) or draw(st.booleans()),
        latency_ewma_s=draw(maybe_latency),
        latency_tail_s=draw(maybe_latency),
        inflight=draw(st.integers(0, 10)),
        max_concurrency=max_concurrency,
        tokens_available=draw(st.floats(0.0, 10.0)),
        tokens_capacity=10.0,
        cooldown_remaining_s=draw(st.sampled_from((0.0, 0.0, 0.0, 2.5))),
        priority=draw(st.integers(0, 5)),
        weight=draw(st.floats(0.1, 5.0)),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    count = draw(st.integers(0, 8))
    return Snapshot(tuple(draw(provider_snapshot(f"p{i}")) for i in range(count)))


@st.composite
def routable_snapshots(draw: st.DrawFn) -> Snapshot:
    """Providers that can all take an image request, differing only in how good they are."""
    count = draw(st.integers(1, 8))
    providers = []
    for i in range(count):
        max_concurrency = draw(st.none() | st.integers(4, 8))
        providers.append(
            ProviderSnapshot(
                name=f"p{i}",
                capabilities=Capabilities(kinds=frozenset(KINDS)),
                cost=Cost(per_image_usd=draw(small_float)),
                breaker=draw(st.sampled_from(("closed", "half_open"))),
                success_ratio=draw(st.floats(0.0, 1.0)),
                latency_ewma_s=draw(maybe_latency),
                latency_tail_s=draw(maybe_latency),
                inflight=draw(st.integers(0, 3)),
                max_concurrency=max_concurrency,
                tokens_available=draw(st.floats(1.0, 10.0)),
                tokens_capacity=10.0,
                priority=draw(st.integers(0, 5)),
                weight=draw(st.floats(0.1, 5.0)),
            )
        )
    return Snapshot(tuple(providers))


@st.composite
def requests(draw: st.DrawFn) -> RouteRequest:
    names = [f"p{i}" for i in range(12)]
    return RouteRequest(
        kind=draw(st.sampled_from(KINDS)),
        width=draw(st.none() | st.integers(256, 2048)),
        height=draw(st.none() | st.integers(256, 2048)),
        duration_s=draw(st.none() | st.floats(1.0, 20.0)),
        aspect_ratio=draw(st.none() | st.sampled_from(RATIOS)),
        n=draw(st.integers(1, 4)),
        policy=draw(st.none() | st.sampled_from(POLICIES)),
        allow=draw(st.none() | st.lists(st.sampled_from(names), unique=True).map(tuple)),
        exclude=draw(st.frozensets(st.sampled_from(names), max_size=3)),
        max_cost_usd=draw(st.none() | st.floats(0.0, 50.0)),
        remaining_s=draw(st.none() | st.floats(0.1, 60.0)),
    )


def ranked(ranking: Ranking, snapshot: Snapshot) -> list[ProviderSnapshot]:
    by_name = {p.name: p for p in snapshot.providers}
    return [by_name[name] for name in ranking.names]


@EXAMPLES
@given(snapshot=snapshots(), request=requests(), seed=st.integers(0, 2**32))
def test_every_provider_is_either_ranked_once_or_excluded_once(
    snapshot: Snapshot, request: RouteRequest, seed: int
) -> None:
    """Ranked and excluded partition the snapshot: nothing lost, nothing duplicated."""
    ranking = ProviderStrategy().rank(request, snapshot, random.Random(seed))
    names = list(ranking.names) + [e.name for e in ranking.excluded]
    assert sorted(names) == sorted(p.name for p in snapshot.providers)


@EXAMPLES
@given(snapshot=snapshots(), request=requests(), seed=st.integers(0, 2**32))
def test_open_drained_or_incapable_providers_are_never_ranked(
    snapshot: Snapshot, request: RouteRequest, seed: int
) -> None:
    """Hard exclusions hold under every policy; only ``unhealthy`` may be waived."""
    ranking = ProviderStrategy().rank(request, snapshot, random.Random(seed))
    for p in ranked(ranking, snapshot):
        assert p.breaker != "open"
        assert not p.drained
        assert request.kind in p.capabilities.kinds
        if request.width is not None and p.capabilities.max_width is not None:
            assert request.width <= p.capabilities.max_width
        if request.height is not None and p.capabilities.max_height is not None:
            assert request.height <= p.capabilities.max_height
        assert exclusion_reason(request, p) in (None, "unhealthy")
    if any(p.healthy for p in ranked(ranking, snapshot)):
        assert all(p.healthy for p in ranked(ranking, snapshot))


@EXAMPLES
@given(snapshot=snapshots(), request=requests(), seed=st.integers(0, 2**32))
def test_same_seed_gives_the_same_ranking(
    snapshot: Snapshot, request: RouteRequest, seed: int
) -> None:
    """The strategy is a pure function of request, snapshot and rng seed."""
    strategy = ProviderStrategy()
    first = strategy.rank(request, snapshot, random.Random(seed))
    again = ProviderStrategy().rank(request, snapshot, random.Random(seed))
    assert first == again


@EXAMPLES
@given(snapshot=routable_snapshots(), request=requests(), seed=st.integers(0, 2**32))
def test_cheapest_orders_by_expected_cost(
    snapshot: Snapshot, request: RouteRequest, seed: int
) -> None:
    """With no deadline and no near-tie slack, ``cheapest`` never puts a dearer provider first."""
    request = RouteRequest(kind="image", n=request.n, policy="cheapest")
    ranking = ProviderStrategy(near_tie=0.0).rank(request, snapshot, random.Random(seed))
    costs = [c.expected_cost_usd for c in ranking.candidates]
    assert costs == sorted(costs)
    for c, p in zip(ranking.candidates, ranked(ranking, snapshot), strict=True):
        assert c.expected_cost_usd == expected_cost_usd(request, p)


@EXAMPLES
@given(snapshot=routable_snapshots(), request=requests(), seed=st.integers(0, 2**32))
def test_cheapest_with_near_ties_only_reorders_the_leader(
    snapshot: Snapshot, request: RouteRequest, seed: int
) -> None:
    """Near-tie breaking may lift a provider within ``near_tie`` of the cheapest to first only."""
    request = RouteRequest(kind="image", n=request.n, policy="cheapest")
    ranking = ProviderStrategy(near_tie=0.1).rank(request, snapshot, random.Random(seed))
    costs = [c.expected_cost_usd for c in ranking.candidates]
    if costs:
        assert costs[1:] == sorted(costs[1:])
        assert min(costs) >= costs[0] * 0.9 - 1e-12


@EXAMPLES
@given(
    snapshot=routable_snapshots(),
    policy=st.sampled_from(POLICIES),
    remaining_s=st.floats(0.1, 60.0),
    seed=st.integers(0, 2**32),
)
def test_providers_over_the_deadline_rank_after_all_others(
    snapshot: Snapshot, policy: Policy, remaining_s: float, seed: int
) -> None:
    """Once a provider too slow for the deadline appears, every later one is too slow as well."""
    request = RouteRequest(kind="image", policy=policy, remaining_s=remaining_s)
    ranking = ProviderStrategy().rank(request, snapshot, random.Random(seed))
    remaining = request.remaining_s
    flags = []
    for p in ranked(ranking, snapshot):
        estimate = latency_estimate_s(p, request.kind)
        flags.append(remaining is not None and estimate is not None and estimate > remaining)
    assert flags == sorted(flags)


@EXAMPLES
@given(snapshot=snapshots(), request=requests(), seed=st.integers(0, 2**32))
def test_scores_and_components_are_filled_and_bounded(
    snapshot: Snapshot, request: RouteRequest, seed: int
) -> None:
    """Every candidate explains itself with components in [0, 1] and a finite score."""
    ranking = ProviderStrategy().rank(request, snapshot, random.Random(seed))
    assert ranking.policy == (request.policy or "balanced")
    for c in ranking.candidates:
        for name in ("health", "latency", "cost", "load"):
            assert 0.0 <= c.components[name] <= 1.0
        assert c.score >= 0.0
        assert c.score < float("inf")


@EXAMPLES
@given(
    snapshot=routable_snapshots(),
    policy=st.sampled_from(POLICIES),
    seed=st.integers(0, 2**32),
)
def test_every_routable_provider_is_ranked_exactly_once(
    snapshot: Snapshot, policy: Policy, seed: int
) -> None:
    """When nothing is excluded, each provider appears once whatever the policy and seed."""
    request = RouteRequest(kind="image", policy=policy)
    ranking = ProviderStrategy().rank(request, snapshot, random.Random(seed))
    assert sorted(ranking.names) == sorted(p.name for p in snapshot.providers)
    assert len(set(ranking.names)) == len(ranking.names)
    assert ranking.excluded == ()
    again = ProviderStrategy().rank(request, snapshot, random.Random(seed))
    assert again == ranking
