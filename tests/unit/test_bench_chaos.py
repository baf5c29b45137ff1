"""The benchmark's pure parts: chaos schedules, oracle truth, metrics, verdicts, nginx config."""

from __future__ import annotations

from pathlib import Path

from tests.bench.chaos import (
    PROVIDERS,
    SCENARIOS,
    Outcome,
    Phase,
    PolicyResult,
    Scenario,
    ScenarioResult,
    summarise,
)
from tests.bench.peers import nginx_config
from tests.bench.report_extra import _verdicts

_DOWN = {"error_ratio": 1.0}


def _outage() -> Scenario:
    return Scenario("t", "A down", 10, (Phase(2, 6, (0,), _DOWN),), watch=(0, 2, 6))


def test_faults_apply_only_inside_their_window() -> None:
    """A phase's faults hold on [start, end) and only on its providers."""
    sc = _outage()
    assert sc.faults_at(0, 1.99) == {}
    assert sc.faults_at(0, 2.0) == _DOWN
    assert sc.faults_at(1, 3.0) == {}
    assert sc.faults_at(0, 6.0) == {}


def test_oracle_truth_has_a_guard_band_around_switches() -> None:
    """The oracle avoids a provider just before and just after its fault switches."""
    sc = _outage()
    assert sc.healthy(0, 1.0)
    assert not sc.healthy(0, 1.95)
    assert not sc.healthy(0, 6.05)
    assert sc.healthy(0, 6.2)


def test_price_change_takes_effect_at_its_instant() -> None:
    """A price change holds from its instant on, for its provider only."""
    sc = Scenario("p", "price", 10, price_changes=((5, 0, 0.1),))
    assert sc.price(0, 4.9) == 0.02
    assert sc.price(0, 5.0) == 0.1
    assert sc.price(1, 9.0) == 0.03


def test_scaling_multiplies_every_time() -> None:
    """``scaled`` shortens phases, price changes and the watched window alike."""
    sc = _outage().scaled(0.5)
    assert sc.duration_s == 5
    assert (sc.phases[0].start_s, sc.phases[0].end_s) == (1, 3)
    assert sc.watch == (0, 1, 3)


def test_every_listed_scenario_has_events_inside_its_duration() -> None:
    """Each chaos-matrix scenario changes something while it runs."""
    for sc in SCENARIOS:
        assert sc.events() or sc.price_changes, sc.name
        assert all(0 <= t < sc.duration_s for t in sc.events())


def _arrivals(switch_at: float) -> list[list[tuple[float, float, int]]]:
    """Ten attempts a second: to A before ``switch_at`` and after 6 s, to B between."""
    a: list[tuple[float, float, int]] = []
    b: list[tuple[float, float, int]] = []
    for k in range(100):
        t = k / 10
        (b if switch_at <= t < 6 else a).append((t, t + 0.05, 200))
    return [a, b, []]


def test_detect_and_recover_read_from_traffic_share() -> None:
    """Detect is when A's share collapses after the fault, recover when it returns."""
    sc = _outage()
    outcomes = [Outcome(k / 10, 0.05, True, 0) for k in range(100)]
    r = summarise("balanced", sc, outcomes, _arrivals(3.0))
    assert r.detect_s == 1.0
    assert r.recover_s == 0.0
    assert r.success_ratio == 1.0
    assert r.attempts_per_success == 1.0
    assert r.wasted_attempts == 0


def test_wasted_attempts_count_every_non_200() -> None:
    """Errors, resets (-1) and malformed bodies (-2) all count as wasted attempts."""
    sc = _outage()
    logs = [[(1.0, 1.1, 503), (1.2, 1.3, -1), (1.4, 1.5, -2), (1.6, 1.7, 200)], [], []]
    r = summarise("round-robin", sc, [Outcome(1.0, 0.1, True, 0)], logs)
    assert r.upstream_attempts == 4
    assert r.wasted_attempts == 3


def test_cost_per_success_uses_the_true_price_when_sent() -> None:
    """A success before a price change pays the old price, one after it the new."""
    sc = Scenario("p", "price", 10, price_changes=((5, 0, 0.1),))
    outs = [Outcome(1.0, 0.1, True, 0), Outcome(6.0, 0.1, True, 0)]
    r = summarise("priority", sc, outs, [[], [], []])
    assert abs(r.cost_per_success - 0.06) < 1e-12


def test_verdict_names_a_success_shortfall_against_a_baseline() -> None:
    """``balanced`` below round-robin on success is reported as a miss."""
    sc = _outage()
    good = summarise("round-robin", sc, [Outcome(1.0, 0.1, True, 1)], [[], [], []])
    bad = summarise("balanced", sc, [Outcome(1.0, 0.1, False)], [[], [], []])
    met, missed = _verdicts(ScenarioResult(sc, {"balanced": bad, "round-robin": good}))
    assert not met
    assert any("lower success than round-robin" in m for m in missed)


def test_nginx_config_proxies_to_every_upstream_with_keepalive(tmp_path: Path) -> None:
    """The config runs in the foreground, logs to stderr and keeps upstream connections."""
    text = nginx_config(tmp_path, 8081, ["127.0.0.1:1", "127.0.0.1:2"])
    assert "daemon off;" in text
    assert "server 127.0.0.1:1;" in text
    assert "server 127.0.0.1:2;" in text
    assert "keepalive 256;" in text
    assert "listen 127.0.0.1:8081;" in text
    assert f"pid {tmp_path}/nginx.pid;" in text


def _result(policy: str, sc: Scenario, cost: float, p99_ms: float, n_ok: int = 10) -> PolicyResult:
    r = PolicyResult(policy, sent=10, ok=n_ok, p99_ms=p99_ms, cost_per_success=cost)
    r.upstream_attempts = 14
    return r


def test_verdict_explains_a_cost_miss_that_is_impossible_by_construction() -> None:
    """Beating a policy that paid the lowest price on every success stays a miss, with the
    fact stated; so does one at or below the oracle's cost."""
    sc = _outage()
    results = {
        "balanced": _result("balanced", sc, 0.025, 90.0),
        "litellm": _result("litellm", sc, PROVIDERS[0].cost_usd, 7000.0),
        "priority": _result("priority", sc, 0.0240, 140.0),
        "oracle": _result("oracle", sc, 0.0241, 90.0),
    }
    met, missed = _verdicts(ScenarioResult(sc, results))
    lite = next(m for m in missed if "litellm" in m)
    assert lite.startswith("ties litellm on success but not better on cost (impossible by")
    assert "lowest price, $0.02; its p99 is 7000 ms" in lite
    prio = next(m for m in missed if "priority" in m)
    assert "beating it means undercutting the oracle" in prio
    assert "1.40 attempts per success" in prio
    assert "cost within 10 % of the oracle (+4%)" in met


def test_verdict_explains_a_success_miss_against_a_policy_above_the_oracle() -> None:
    """A baseline that beat the oracle's success kept retrying: the miss says so."""
    sc = _outage()
    results = {
        "balanced": _result("balanced", sc, 0.02, 90.0, n_ok=7),
        "litellm": _result("litellm", sc, 0.02, 4000.0, n_ok=10),
        "oracle": _result("oracle", sc, 0.02, 90.0, n_ok=7),
    }
    _, missed = _verdicts(ScenarioResult(sc, results))
    assert any(
        "lower success than litellm (70.00% vs 100.00%); litellm beat the oracle (70.00%) by "
        "retrying requests until a provider came back"
        in m
        and "p99 is 4000 ms" in m
        for m in missed
    )


def test_verdict_explains_a_p99_miss_against_a_policy_as_fast_as_the_oracle() -> None:
    """A baseline at or under the oracle's p99 (direct calls, no router hop) is noted."""
    sc = _outage()
    results = {
        "balanced": _result("balanced", sc, 0.02, 98.0),
        "round-robin": _result("round-robin", sc, 0.05, 92.0),
        "oracle": _result("oracle", sc, 0.02, 94.0),
    }
    _, missed = _verdicts(ScenarioResult(sc, results))
    assert missed == [
        "ties round-robin on success but not better on p99 (round-robin's p99 of 92 ms is "
        "no higher than the oracle's 94 ms, direct calls with no router hop)"
    ]
