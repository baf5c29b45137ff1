"""ProviderStats: decaying success ratio and per-kind latency estimates."""

from __future__ import annotations

import pytest

from breakers.clock import FakeClock
from router.health import ProviderStats


def test_no_data_is_healthy() -> None:
    """With no outcomes the ratio is 1.0 and latency is unknown."""
    stats = ProviderStats(FakeClock())
    assert stats.success_ratio == 1.0
    assert stats.latency_ewma("image") is None
    assert stats.latency_tail("image") is None
    assert stats.latency_ewmas() == {}


def test_ratio_with_prior() -> None:
    """3 successes and 4 failures at one instant give (3 + 1) / (7 + 1)."""
    stats = ProviderStats(FakeClock())
    for ok in [True] * 3 + [False] * 4:
        stats.record("image", ok)
    assert stats.success_ratio == pytest.approx(0.5)
    assert stats.weight == pytest.approx(7)


def test_failures_decay_by_half_life() -> None:
    """After one half-life old failures weigh half, so the ratio recovers toward 1."""
    clock = FakeClock()
    stats = ProviderStats(clock, half_life_s=30)
    for _ in range(4):
        stats.record("image", ok=False)
    assert stats.success_ratio == pytest.approx(1 / 5)
    clock.advance(30)
    assert stats.weight == pytest.approx(2)
    assert stats.success_ratio == pytest.approx(1 / 3)
    clock.advance(300)
    assert stats.success_ratio > 0.99


def test_recent_outcomes_outweigh_old_ones() -> None:
    """Fresh successes after old failures dominate the ratio."""
    clock = FakeClock()
    stats = ProviderStats(clock, half_life_s=10, prior=0)
    for _ in range(10):
        stats.record("image", ok=False)
    clock.advance(20)  # failures now weigh 10 / 4 = 2.5
    for _ in range(10):
        stats.record("image", ok=True)
    assert stats.success_ratio == pytest.approx(10 / 12.5)


def test_latency_ewma_fixed_alpha() -> None:
    """The EWMA starts at the first sample and moves 20 % toward each new one."""
    stats = ProviderStats(FakeClock())
    stats.record("image", True, 1.0)
    assert stats.latency_ewma("image") == 1.0
    stats.record("image", True, 2.0)
    assert stats.latency_ewma("image") == pytest.approx(1.2)
    assert stats.latency_ewma("video") is None


def test_latency_is_per_kind() -> None:
    """Image and video latencies are tracked separately."""
    stats = ProviderStats(FakeClock())
    stats.record("image", True, 2.0)
    stats.record("video", True, 60.0)
    assert stats.latency_ewmas() == {"image": 2.0, "video": 60.0}


def test_tail_tracks_spread() -> None:
    """A steady latency converges tail to mean; jitter widens the tail above the mean."""
    steady = ProviderStats(FakeClock())
    for _ in range(200):
        steady.record("image", True, 1.0)
    assert steady.latency_tail("image") == pytest.approx(1.0, abs=1e-6)
    jittery = ProviderStats(FakeClock())
    for i in range(200):
        jittery.record("image", True, 0.5 if i % 2 else 1.5)
    mean = jittery.latency_ewma("image")
    tail = jittery.latency_tail("image")
    assert mean is not None
    assert tail is not None
    assert tail > mean + 1.0
    assert jittery.latency_tails()["image"] == tail


def test_failure_without_latency_leaves_latency_alone() -> None:
    """A failure recorded without a latency does not move the latency estimate."""
    stats = ProviderStats(FakeClock())
    stats.record("image", True, 1.0)
    stats.record("image", False)
    assert stats.latency_ewma("image") == 1.0


def test_failure_streak_counts_failures_since_the_last_success() -> None:
    """Each failure adds 1 to the streak; a success clears it."""
    stats = ProviderStats(FakeClock())
    assert stats.failure_streak == 0.0
    stats.record("image", ok=False)
    stats.record("image", ok=False)
    assert stats.failure_streak == pytest.approx(2.0)
    stats.record("image", ok=True)
    assert stats.failure_streak == 0.0


def test_failure_streak_decays_by_its_own_half_life() -> None:
    """The streak decays with a half-life of ``streak_half_life_s`` (1 s by default)
    times the failures in it, and a new failure adds to what is left: one failure
    halves in 1 s, two in 2 s, three in 3 s (each failed trial backs off further)."""
    clock = FakeClock()
    stats = ProviderStats(clock, half_life_s=10, prior=1)
    stats.record("image", ok=False)
    clock.advance(1.0)
    assert stats.failure_streak == pytest.approx(0.5)
    stats.record("image", ok=False)
    assert stats.failure_streak == pytest.approx(1.5)
    clock.advance(2.0)
    assert stats.failure_streak == pytest.approx(0.75)
    stats.record("image", ok=False)
    clock.advance(3.0)
    assert stats.failure_streak == pytest.approx(0.875)
    stats.record("image", ok=True)
    stats.record("image", ok=False)
    clock.advance(1.0)
    assert stats.failure_streak == pytest.approx(0.5)  # a success reset the back-off
    slow = ProviderStats(FakeClock(), streak_half_life_s=4.0)
    slow.record("image", ok=False)
    slow._clock.advance(4.0)  # type: ignore[attr-defined]
    assert slow.failure_streak == pytest.approx(0.5)


def test_forgive_clears_the_streak_too() -> None:
    """A probe that closes the breaker forgets the failures and the streak."""
    stats = ProviderStats(FakeClock())
    for _ in range(3):
        stats.record("image", ok=False)
    stats.forgive()
    assert stats.failure_streak == 0.0
    assert stats.success_ratio == 1.0


def test_outstanding_attempts_report_the_oldest_age_per_kind() -> None:
    """``begin``/``end`` track attempts in flight; the oldest one's age is reported."""
    clock = FakeClock()
    stats = ProviderStats(clock)
    assert stats.oldest_outstanding_s("image") is None
    first = stats.begin("image")
    clock.advance(0.5)
    second = stats.begin("image")
    video = stats.begin("video")
    clock.advance(0.25)
    assert stats.oldest_outstanding_s("image") == pytest.approx(0.75)
    assert stats.oldest_outstanding_s("video") == pytest.approx(0.25)
    stats.end(first)
    assert stats.oldest_outstanding_s("image") == pytest.approx(0.25)
    stats.end(second)
    stats.end(video)
    stats.end(video)  # ending twice is harmless
    assert stats.oldest_outstanding_s("image") is None
    assert stats.oldest_outstanding_s("video") is None


def test_invalid_streak_half_life_is_rejected() -> None:
    with pytest.raises(ValueError, match="half-lives"):
        ProviderStats(FakeClock(), streak_half_life_s=0)


def test_blind_failures_do_not_lengthen_the_streak() -> None:
    """An attempt started before the streak's latest failure was recorded was in flight
    when the provider failed: it counts in the ratio but not in the streak. One started
    after it is news, and counts."""
    clock = FakeClock()
    stats = ProviderStats(clock, prior=0)
    t0 = clock.monotonic()
    stats.record("image", ok=False, started_s=t0 - 0.1)
    clock.advance(0.05)
    stats.record("image", ok=False, started_s=t0 - 0.05)  # sent before the first was known
    assert stats.failure_streak == pytest.approx(0.5**0.05)
    assert stats.success_ratio == 0.0
    assert stats.weight == pytest.approx(2.0, rel=0.01)
    stats.record("image", ok=False, started_s=t0 + 0.02)  # sent after it: a second failure
    assert stats.failure_streak == pytest.approx(1 + 0.5**0.05)
