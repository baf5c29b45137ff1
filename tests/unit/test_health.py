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
