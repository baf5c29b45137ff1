"""Unit tests for the pure provider strategy: exclusions, policies, deadlines, near-ties."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from strategies import (
    Capabilities,
    Cost,
    ProviderSnapshot,
    ProviderStrategy,
    Ranking,
    RouteRequest,
    Snapshot,
    Weights,
    exclusion_reason,
    expected_cost_usd,
    latency_estimate_s,
)

ALL_KINDS = frozenset({"image", "video"})


def provider(name: str, **overrides: Any) -> ProviderSnapshot:
    """A capable, healthy, idle provider unless told otherwise."""
    fields: dict[str, Any] = {"capabilities": Capabilities(kinds=ALL_KINDS)}
    fields.update(overrides)
    return ProviderSnapshot(name=name, **fields)


def rank(
    *providers: ProviderSnapshot,
    strategy: ProviderStrategy | None = None,
    seed: int = 0,
    **request: Any,
) -> Ranking:
    request.setdefault("kind", "image")
    strategy = strategy or ProviderStrategy(near_tie=0.0)
    return strategy.rank(RouteRequest(**request), Snapshot(providers), random.Random(seed))


def reasons(ranking: Ranking) -> dict[str, str]:
    return {e.name: e.reason for e in ranking.excluded}


# --- exclusions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "request_fields", "reason"),
    [
        ({}, {"allow": ("ok",)}, "not_allowed"),
        ({}, {"exclude": frozenset({"x"})}, "not_allowed"),
        ({"drained": True}, {}, "drained"),
        ({"breaker": "open"}, {}, "breaker_open"),
        ({"breaker": "half_open", "probe_available": False}, {}, "probe_busy"),
        ({"capabilities": Capabilities(kinds=frozenset({"video"}))}, {}, "incapable:kind"),
        (
            {"capabilities": Capabilities(kinds=ALL_KINDS, max_width=512)},
            {"width": 1024},
            "incapable:width",
        ),
        (
            {"capabilities": Capabilities(kinds=ALL_KINDS, max_height=512)},
            {"height": 1024},
            "incapable:height",
        ),
        (
            {"capabilities": Capabilities(kinds=ALL_KINDS, max_duration_s=4)},
            {"kind": "video", "duration_s": 8},
            "incapable:duration",
        ),
        (
            {"capabilities": Capabilities(kinds=ALL_KINDS, aspect_ratios=frozenset({"1:1"}))},
            {"aspect_ratio": "16:9"},
            "incapable:aspect_ratio",
        ),
        ({"capabilities": Capabilities(kinds=ALL_KINDS, max_n=2)}, {"n": 3}, "incapable:n"),
        ({"cooldown_remaining_s": 0.5}, {}, "cooling_down"),
        ({"tokens_available": 0.99}, {}, "rate_limited"),
        ({"inflight": 4, "max_concurrency": 4}, {}, "at_capacity"),
        ({"cost": Cost(per_image_usd=0.2)}, {"n": 2, "max_cost_usd": 0.3}, "over_budget"),
        ({"healthy": False}, {}, "unhealthy"),
    ],
)
def test_each_exclusion_reason_is_recorded_and_the_provider_is_not_ranked(
    overrides: dict[str, Any], request_fields: dict[str, Any], reason: str
) -> None:
    """A provider failing one rule is excluded with that rule's reason; others still rank."""
    ranking = rank(provider("x", **overrides), provider("ok"), **request_fields)
    assert ranking.names == ("ok",)
    assert reasons(ranking) == {"x": reason}


def test_limits_that_are_met_exactly_do_not_exclude() -> None:
    """Width, duration, n and budget equal to the limit are within it."""
    caps = Capabilities(kinds=ALL_KINDS, max_width=1024, max_duration_s=8, max_n=2)
    p = provider("a", capabilities=caps, cost=Cost(per_video_s_usd=0.1))
    ranking = rank(p, kind="video", width=1024, duration_s=8, n=2, max_cost_usd=1.6)
    assert ranking.names == ("a",)


def test_unset_duration_is_not_held_against_a_duration_limit() -> None:
    """A video request without a duration leaves it to the provider's own default."""
    p = provider("a", capabilities=Capabilities(kinds=ALL_KINDS, max_duration_s=4))
    assert rank(p, kind="video").names == ("a",)


def test_aspect_ratio_is_unconstrained_when_the_provider_lists_none() -> None:
    """``aspect_ratios=None`` means any ratio is accepted."""
    assert rank(provider("a"), aspect_ratio="21:9").names == ("a",)


def test_first_reason_wins_when_several_apply() -> None:
    """Reasons are checked most permanent first, so a drained open breaker reads ``drained``."""
    p = provider("a", drained=True, breaker="open", tokens_available=0)
    assert exclusion_reason(RouteRequest(kind="image"), p) == "drained"


def test_all_unhealthy_providers_are_still_ranked() -> None:
    """When probes call every routable provider unhealthy, they are tried anyway."""
    ranking = rank(provider("a", healthy=False), provider("b", healthy=False))
    assert set(ranking.names) == {"a", "b"}
    assert ranking.excluded == ()


def test_unhealthy_fallback_ignores_providers_excluded_for_other_reasons() -> None:
    """A healthy but open provider does not stop unhealthy ones from being tried."""
    ranking = rank(provider("open", breaker="open"), provider("sick", healthy=False))
    assert ranking.names == ("sick",)
    assert reasons(ranking) == {"open": "breaker_open"}


def test_half_open_provider_is_scored_as_if_its_probe_succeeds() -> None:
    """A half-open breaker with a free slot is a candidate marked as the probe, with
    health 1 whatever its past: halving it kept a cheap provider behind healthy ones,
    never probed, so it stayed half-open after recovering (chaos bench)."""
    ranking = rank(
        provider(
            "a",
            breaker="half_open",
            success_ratio=0.2,
            failure_streak=5.0,
            cost=Cost(per_image_usd=0.02),
        ),
        provider("b", cost=Cost(per_image_usd=0.03)),
    )
    probe = next(c for c in ranking.candidates if c.name == "a")
    assert probe.probe
    assert probe.components["health"] == 1.0
    assert ranking.names == ("a", "b")


def test_empty_snapshot_gives_an_empty_ranking() -> None:
    """No providers means no candidates and nothing excluded."""
    ranking = rank()
    assert ranking.candidates == ()
    assert ranking.excluded == ()


# --- cost and latency ---------------------------------------------------------------------


def test_expected_cost_of_images_is_per_image_times_n() -> None:
    """Images are priced per image."""
    p = provider("a", cost=Cost(per_image_usd=0.04, per_video_s_usd=1.0))
    assert expected_cost_usd(RouteRequest(kind="image", n=3), p) == pytest.approx(0.12)


def test_expected_cost_of_video_defaults_to_five_seconds() -> None:
    """Videos are priced per second, 5 s when the duration is unset."""
    p = provider("a", cost=Cost(per_image_usd=1.0, per_video_s_usd=0.1))
    assert expected_cost_usd(RouteRequest(kind="video"), p) == pytest.approx(0.5)
    assert expected_cost_usd(RouteRequest(kind="video", duration_s=8), p) == pytest.approx(0.8)


def test_latency_estimate_prefers_the_tail_over_the_ewma() -> None:
    """The deadline check uses the tail when known and the EWMA otherwise."""
    p = provider("a", latency_ewma_s={"image": 1.0, "video": 20.0}, latency_tail_s={"image": 3.0})
    assert latency_estimate_s(p, "image") == 3.0
    assert latency_estimate_s(p, "video") == 20.0
    assert latency_estimate_s(p, "audio") is None


@pytest.mark.parametrize("policy", ["balanced", "cheapest", "fastest", "priority", "weighted"])
def test_provider_over_the_deadline_is_ranked_last_not_excluded(policy: str) -> None:
    """Whatever the policy, a provider too slow for the remaining time goes last."""
    slow_but_best = provider(
        "slow",
        priority=1,
        weight=100.0,
        cost=Cost(per_image_usd=0.001),
        latency_ewma_s={"image": 2.0},
        latency_tail_s={"image": 12.0},
    )
    other = provider("ok", priority=50, cost=Cost(per_image_usd=0.1), latency_ewma_s={"image": 5})
    ranking = rank(slow_but_best, other, policy=policy, remaining_s=10.0)
    assert ranking.names == ("ok", "slow")
    assert ranking.excluded == ()


def test_no_deadline_keeps_the_policy_order() -> None:
    """Without a remaining time the tail latency does not demote anyone."""
    slow = provider("slow", priority=1, latency_tail_s={"image": 1000.0})
    ranking = rank(slow, provider("ok"), policy="priority")
    assert ranking.names == ("slow", "ok")


# --- balanced -----------------------------------------------------------------------------


def test_balanced_prefers_the_healthier_provider() -> None:
    """Lower success ratio lowers the score."""
    ranking = rank(provider("flaky", success_ratio=0.5), provider("solid"))
    assert ranking.names == ("solid", "flaky")


def test_balanced_prefers_the_faster_provider() -> None:
    """The fastest known latency scores 1, slower ones less: a gap g counts as
    g² / (g + 0.1 s), so well over 0.1 s it is nearly the plain ratio."""
    ranking = rank(
        provider("slow", latency_ewma_s={"image": 4.0}),
        provider("fast", latency_ewma_s={"image": 1.0}),
    )
    assert ranking.names == ("fast", "slow")
    by_name = {c.name: c for c in ranking.candidates}
    assert by_name["slow"].components["latency"] == pytest.approx(1.1 / (1.1 + 9 / 3.1))
    assert 1.1 / 4.1 < by_name["slow"].components["latency"] < 1.1 / 4.0
    assert by_name["fast"].expected_latency_s == 1.0


def test_balanced_explores_a_provider_with_no_latency_data() -> None:
    """An unmeasured provider scores as fast as the best, so a slow known one cannot hide it."""
    ranking = rank(provider("new"), provider("known-slow", latency_ewma_s={"image": 1.5}))
    new = next(c for c in ranking.candidates if c.name == "new")
    assert new.components["latency"] == 1.0
    assert new.expected_latency_s is None
    assert ranking.names[0] == "new"


def test_balanced_prefers_the_cheaper_provider() -> None:
    """The cheapest scores 1 on cost, a provider twice the price 0.5."""
    ranking = rank(
        provider("dear", cost=Cost(per_image_usd=0.08)),
        provider("cheap", cost=Cost(per_image_usd=0.04)),
    )
    assert ranking.names == ("cheap", "dear")
    assert ranking.candidates[1].components["cost"] == pytest.approx(0.5)
    assert ranking.candidates[1].expected_cost_usd == pytest.approx(0.08)


def test_balanced_prefers_the_less_loaded_provider() -> None:
    """In-flight work against the concurrency cap lowers the load component."""
    ranking = rank(
        provider("busy", inflight=3, max_concurrency=4), provider("idle", max_concurrency=4)
    )
    assert ranking.names == ("idle", "busy")
    assert ranking.candidates[1].components["load"] == pytest.approx(0.25)


def test_balanced_load_without_a_cap_decays_with_inflight() -> None:
    """With no concurrency cap the load component is 1 / (1 + in-flight / 8)."""
    ranking = rank(provider("a", inflight=8))
    assert ranking.candidates[0].components["load"] == pytest.approx(0.5)


def test_low_token_headroom_lowers_health() -> None:
    """A nearly empty token bucket shrinks health: the provider is about to throttle."""
    ranking = rank(
        provider("low", tokens_available=1, tokens_capacity=10),
        provider("full", tokens_available=10, tokens_capacity=10),
    )
    assert ranking.names == ("full", "low")
    assert ranking.candidates[1].components["health"] == pytest.approx(0.6)
    assert ranking.candidates[0].components["health"] == 1.0


def test_operator_weight_multiplies_the_score() -> None:
    """Weight is a final factor: weight 2 doubles an otherwise equal score."""
    ranking = rank(provider("a"), provider("b", weight=2.0))
    assert ranking.names == ("b", "a")
    assert ranking.candidates[0].score == pytest.approx(2 * ranking.candidates[1].score)


def test_priority_breaks_exact_ties_under_balanced() -> None:
    """Equal scores fall back to the operator's priority."""
    ranking = rank(provider("later", priority=200), provider("sooner", priority=10))
    assert ranking.names == ("sooner", "later")


def test_weights_choose_which_component_matters() -> None:
    """All weight on cost ranks by price even against a much faster provider."""
    strategy = ProviderStrategy(weights=Weights(health=0, latency=0, cost=1, load=0), near_tie=0)
    ranking = rank(
        provider("fast", cost=Cost(per_image_usd=0.1), latency_ewma_s={"image": 1.0}),
        provider("cheap", cost=Cost(per_image_usd=0.05), latency_ewma_s={"image": 9.0}),
        strategy=strategy,
    )
    assert ranking.names == ("cheap", "fast")
    assert ranking.candidates[0].score == pytest.approx(1.0)


def test_every_candidate_carries_all_components() -> None:
    """Each candidate explains itself whatever the policy."""
    for policy in ("balanced", "cheapest", "fastest", "priority", "weighted"):
        ranking = rank(provider("a"), provider("b"), policy=policy)
        assert ranking.policy == policy
        for c in ranking.candidates:
            assert set(c.components) == {"health", "latency", "cost", "load", "weight"}


def test_default_policy_applies_when_the_request_names_none() -> None:
    """The constructor's policy is used and reported when the request has none."""
    strategy = ProviderStrategy(default_policy="cheapest")
    assert rank(provider("a"), strategy=strategy).policy == "cheapest"


# --- cheapest, fastest, priority ----------------------------------------------------------


def test_cheapest_orders_by_expected_cost() -> None:
    """``cheapest`` sorts by price, whatever the health or latency."""
    ranking = rank(
        provider("mid", cost=Cost(per_image_usd=0.05)),
        provider("dear", cost=Cost(per_image_usd=0.09), latency_ewma_s={"image": 0.1}),
        provider("cheap", cost=Cost(per_image_usd=0.01), success_ratio=0.7),
        policy="cheapest",
    )
    assert ranking.names == ("cheap", "mid", "dear")


def test_cheapest_breaks_price_ties_by_health() -> None:
    """Among equal prices the healthier provider comes first."""
    ranking = rank(
        provider("flaky", success_ratio=0.6), provider("solid", success_ratio=0.99),
        policy="cheapest",
    )  # fmt: skip
    assert ranking.names == ("solid", "flaky")


def test_fastest_orders_by_latency_exploring_unknown_first() -> None:
    """``fastest`` sorts by EWMA latency; a provider with no data is tried first, once."""
    ranking = rank(
        provider("unknown"),
        provider("slow", latency_ewma_s={"image": 9.0}),
        provider("fast", latency_ewma_s={"image": 1.0}),
        policy="fastest",
    )
    assert ranking.names == ("unknown", "fast", "slow")


def test_priority_orders_by_operator_priority_then_config_order() -> None:
    """Lower priority numbers go first; equal priorities keep configuration order."""
    ranking = rank(
        provider("c", priority=50),
        provider("a", priority=10),
        provider("b", priority=50),
        policy="priority",
    )
    assert ranking.names == ("a", "c", "b")
    assert [c.score for c in ranking.candidates] == sorted(
        (c.score for c in ranking.candidates), reverse=True
    )


def test_allow_list_order_leads_the_priority_policy() -> None:
    """The caller's allow-list order outranks operator priority."""
    ranking = rank(
        provider("a", priority=1),
        provider("b", priority=2),
        provider("c", priority=3),
        policy="priority",
        allow=("c", "a"),
    )
    assert ranking.names == ("c", "a")
    assert reasons(ranking) == {"b": "not_allowed"}


def test_allow_list_only_filters_other_policies() -> None:
    """Under ``cheapest`` the allow list restricts the set but not the order."""
    ranking = rank(
        provider("a", cost=Cost(per_image_usd=0.01)),
        provider("b", cost=Cost(per_image_usd=0.02)),
        policy="cheapest",
        allow=("b", "a"),
    )
    assert ranking.names == ("a", "b")


# --- weighted -----------------------------------------------------------------------------


def test_weighted_is_deterministic_for_a_seed() -> None:
    """The same seed draws the same weighted order."""
    providers = [provider(f"p{i}", weight=float(i + 1)) for i in range(6)]
    first = rank(*providers, policy="weighted", seed=7)
    again = rank(*providers, policy="weighted", seed=7)
    assert first.names == again.names


def test_weighted_picks_first_in_proportion_to_weight() -> None:
    """Weight 3 against weight 1 leads about three times in four."""
    providers = (provider("heavy", weight=3.0), provider("light", weight=1.0))
    strategy = ProviderStrategy()
    rng = random.Random(42)
    request = RouteRequest(kind="image", policy="weighted")
    wins = Counter(strategy.rank(request, Snapshot(providers), rng).names[0] for _ in range(4000))
    assert wins["heavy"] / 4000 == pytest.approx(0.75, abs=0.03)


def test_weighted_puts_zero_health_last() -> None:
    """A provider with no successes has zero effective weight and goes last."""
    for seed in range(20):
        ranking = rank(
            provider("dead", success_ratio=0.0, weight=10.0),
            provider("a"),
            provider("b"),
            policy="weighted",
            seed=seed,
        )
        assert ranking.names[-1] == "dead"


# --- near-ties ----------------------------------------------------------------------------


def test_near_tie_puts_the_less_loaded_candidate_first() -> None:
    """Two candidates within ``near_tie`` go less-loaded first even if it scored lower."""
    strategy = ProviderStrategy(weights=Weights(health=1, latency=0, cost=0, load=0), near_tie=0.05)
    ranking = rank(
        provider("best_busy", inflight=3, max_concurrency=4),
        provider("close_idle", success_ratio=0.97, max_concurrency=4),
        strategy=strategy,
    )
    assert ranking.names == ("close_idle", "best_busy")


def test_outside_near_tie_the_better_score_stays_first() -> None:
    """A gap larger than ``near_tie`` is not a tie, whatever the load."""
    strategy = ProviderStrategy(weights=Weights(health=1, latency=0, cost=0, load=0), near_tie=0.01)
    ranking = rank(
        provider("best_busy", inflight=3, max_concurrency=4),
        provider("idle", success_ratio=0.9, max_concurrency=4),
        strategy=strategy,
    )
    assert ranking.names == ("best_busy", "idle")


def test_near_ties_spread_first_choice_across_seeds() -> None:
    """Replicas with different rngs do not all pick the same one of several equal providers."""
    providers = [provider(f"p{i}") for i in range(4)]
    firsts = {rank(*providers, seed=seed).names[0] for seed in range(50)}
    assert len(firsts) >= 3


def test_near_tie_under_cheapest_can_pick_a_slightly_dearer_provider() -> None:
    """Cheapest treats prices within ``near_tie`` as tied and prefers the idle one."""
    strategy = ProviderStrategy(near_tie=0.05)
    ranking = rank(
        provider("cheapest_busy", cost=Cost(per_image_usd=0.100), inflight=5),
        provider("close_idle", cost=Cost(per_image_usd=0.102)),
        strategy=strategy,
        policy="cheapest",
    )
    assert ranking.names == ("close_idle", "cheapest_busy")


# --- fast health, trials, price ties (chaos bench) -------------------------------------------

A_B_C = (
    # The chaos bench's providers: A cheapest and slowest, C dearest and fastest.
    ("a", 0.02, 0.085),
    ("b", 0.03, 0.055),
    ("c", 0.06, 0.035),
)


def chaos_providers(**a_overrides: Any) -> list[ProviderSnapshot]:
    out = []
    for name, price, latency in A_B_C:
        overrides = a_overrides if name == "a" else {}
        out.append(
            provider(
                name,
                cost=Cost(per_image_usd=price),
                latency_ewma_s={"image": latency},
                latency_tail_s={"image": latency * 1.2},
                **overrides,
            )
        )
    return out


def test_a_small_latency_gap_costs_little() -> None:
    """A 20 ms gap over the best (35 ms) counts as 0.02² / 0.12 s: 0.135 / (0.135 + 1/300)."""
    ranking = rank(*chaos_providers())
    by_name = {c.name: c for c in ranking.candidates}
    assert by_name["c"].components["latency"] == 1.0
    assert by_name["b"].components["latency"] == pytest.approx(0.135 / (0.135 + 0.0004 / 0.12))
    assert by_name["a"].components["latency"] == pytest.approx(0.135 / (0.135 + 0.0025 / 0.15))


@pytest.mark.parametrize("seed", range(20))
def test_balanced_keeps_the_cheap_provider_first_while_it_is_healthy(seed: int) -> None:
    """50 % cheaper beats 30 ms faster, even with A carrying the traffic (2 in flight) and
    default near-tie breaking: A leads by 0.943 to 0.911, and B's price is no tie."""
    ranking = rank(*chaos_providers(inflight=2), strategy=ProviderStrategy(), seed=seed)
    assert ranking.names == ("a", "b", "c")
    assert ranking.candidates[0].score == pytest.approx(
        0.35 + 0.25 * 0.135 / (0.135 + 0.0025 / 0.15) + 0.25 + 0.15 * 0.8
    )


@pytest.mark.parametrize("seed", range(20))
def test_near_tie_breaking_never_crosses_a_real_price_gap(seed: int) -> None:
    """Scores within ``near_tie`` but prices 50 % apart are not tied: the leader stays."""
    strategy = ProviderStrategy(weights=Weights(health=1, latency=0, cost=0, load=0), near_tie=0.05)
    ranking = rank(
        provider("cheap_busy", cost=Cost(per_image_usd=0.02), inflight=3, max_concurrency=4),
        provider("dear_idle", cost=Cost(per_image_usd=0.03), success_ratio=0.97),
        strategy=strategy,
        seed=seed,
    )
    assert ranking.names == ("cheap_busy", "dear_idle")


def test_failure_streak_divides_health() -> None:
    """Health is the success ratio over 1 + the decayed failure streak."""
    ranking = rank(provider("a", success_ratio=0.9, failure_streak=2.0))
    assert ranking.candidates[0].components["health"] == pytest.approx(0.3)


def test_a_negligible_streak_counts_as_none() -> None:
    """A streak decayed under 0.01 no longer lowers health or puts a provider on trial."""
    ranking = rank(
        provider("a", failure_streak=0.009, inflight=1),
        provider("b", priority=200, inflight=1),
    )
    assert ranking.candidates[0].components["health"] == 1.0
    assert ranking.names == ("a", "b")


def test_one_failure_steers_balanced_away_from_the_cheap_provider() -> None:
    """One fresh failure (streak 1) halves A's health: B leads (0.911 vs 0.798)."""
    ranking = rank(*chaos_providers(failure_streak=1.0), strategy=ProviderStrategy())
    assert ranking.names == ("b", "c", "a")
    assert ranking.candidates[-1].components["health"] == pytest.approx(0.5)


def test_a_decayed_streak_lets_the_cheap_provider_lead_again() -> None:
    """Once the streak has decayed to 0.2, A (0.973) outscores B (0.911): its trial call."""
    ranking = rank(*chaos_providers(failure_streak=0.2), strategy=ProviderStrategy())
    assert ranking.names[0] == "a"


def test_a_provider_on_trial_takes_one_call_at_a_time() -> None:
    """With a failure since its last success and an attempt in flight, A ranks after
    every provider not on trial, whatever its score."""
    ranking = rank(*chaos_providers(failure_streak=0.05, inflight=1))
    assert ranking.names == ("b", "c", "a")
    idle = rank(*chaos_providers(failure_streak=0.05))
    assert idle.names[0] == "a"


def test_an_overdue_attempt_puts_the_provider_on_trial() -> None:
    """An attempt in flight longer than the tail estimate (0.102 s) is overdue; its age
    is also the latency scored (a lower bound on that attempt's latency)."""
    ranking = rank(*chaos_providers(inflight=1, outstanding_s={"image": 0.15}))
    assert ranking.names == ("b", "c", "a")
    a = ranking.candidates[-1]
    assert a.components["latency"] == pytest.approx(0.135 / (0.135 + 0.115**2 / 0.215))
    in_time = rank(*chaos_providers(inflight=1, outstanding_s={"image": 0.09}))
    assert in_time.names[0] == "a"


def test_trials_do_not_apply_to_half_open_probes() -> None:
    """A half-open probe slot is the breaker's trial already: ranked on its score."""
    ranking = rank(*chaos_providers(breaker="half_open", failure_streak=5.0, inflight=0))
    assert ranking.names[0] == "a"


# --- construction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"near_tie": -0.1},
        {"near_tie": 1.5},
        {"weights": Weights(health=-1)},
        {"default_policy": "random"},
    ],
)
def test_invalid_configuration_is_rejected(kwargs: dict[str, Any]) -> None:
    """Bad weights, near-tie fractions or policy names fail at construction."""
    with pytest.raises(ValueError, match=r"."):
        ProviderStrategy(**kwargs)
