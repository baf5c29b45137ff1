"""Fault decisions (with a fake clock) and the emulator's PNG files."""

from __future__ import annotations

import zlib

import msgspec
import pytest

from breakers.clock import FakeClock
from router.config import FaultsConfig
from router.sandbox import FaultAction, FaultInjector, png_bytes, png_size
from router.sandbox.openai import format_duration


def test_no_faults_passes() -> None:
    """The default config injects nothing."""
    assert FaultInjector().decide().action is FaultAction.NONE


def test_rate_limit_bucket_refills_with_the_clock() -> None:
    """At 2 req/s, a burst of 2 passes, the 3rd is limited, and half a second refills one."""
    clock = FakeClock()
    faults = FaultInjector(FaultsConfig(rate_limit_per_s=2, retry_after_s=3), clock=clock)
    first, second, third = faults.decide(), faults.decide(), faults.decide()
    assert (first.action, first.limit, first.remaining) == (FaultAction.NONE, 2.0, 1.0)
    assert second.action is FaultAction.NONE
    assert third.action is FaultAction.RATE_LIMITED
    assert (third.status, third.retry_after_s) == (429, 3)
    clock.advance(0.5)
    assert faults.decide().action is FaultAction.NONE
    assert faults.decide().action is FaultAction.RATE_LIMITED


def test_outage_window_is_half_open() -> None:
    """An outage ``[10, 20)`` serves 503 from t=10 up to, not including, t=20."""
    clock = FakeClock()
    faults = FaultInjector(FaultsConfig(outages=[(10, 20)]), clock=clock)
    assert faults.decide().action is FaultAction.NONE
    clock.advance(10)
    decision = faults.decide()
    assert (decision.action, decision.status) == (FaultAction.OUTAGE, 503)
    clock.advance(10)
    assert faults.decide().action is FaultAction.NONE


def test_restart_resets_outage_origin_and_config() -> None:
    """``restart`` restores the initial config and counts outages from now."""
    clock = FakeClock()
    faults = FaultInjector(FaultsConfig(outages=[(0, 5)]), clock=clock)
    faults.update(outages=[])
    clock.advance(10)
    assert faults.decide().action is FaultAction.NONE
    faults.restart()
    assert faults.decide().action is FaultAction.OUTAGE


@pytest.mark.parametrize(
    ("field", "action"),
    [
        ("hang_ratio", FaultAction.HANG),
        ("reset_ratio", FaultAction.RESET),
        ("error_ratio", FaultAction.ERROR),
        ("malformed_ratio", FaultAction.MALFORMED),
    ],
)
def test_ratio_one_always_injects(field: str, action: FaultAction) -> None:
    """A ratio of 1 injects its fault on every request."""
    faults = FaultInjector()
    faults.update(**{field: 1.0})
    assert {faults.decide().action for _ in range(5)} == {action}


def test_same_seed_same_faults() -> None:
    """Two injectors with one seed make the same decisions in the same order."""
    config = FaultsConfig(error_ratio=0.3, reset_ratio=0.2)
    a, b = FaultInjector(config, seed=42), FaultInjector(config, seed=42)
    seq = [a.decide().action for _ in range(50)]
    assert seq == [b.decide().action for _ in range(50)]
    assert len(set(seq)) == 3


def test_update_validates() -> None:
    """Runtime updates go through the config's validation."""
    with pytest.raises(msgspec.ValidationError):
        FaultInjector().update(error_ratio=2.0)


@pytest.mark.parametrize(("size"), [(1, 1), (256, 256), (1792, 1024), (1024, 1536), (13, 7)])
def test_png_is_valid_and_small(size: tuple[int, int]) -> None:
    """PNGs carry the signature, the right IHDR size, a valid stream, and stay tiny."""
    data = png_bytes(*size)
    assert png_size(data) == size
    assert len(data) < 2048
    idat_len = int.from_bytes(data[48:52], "big")
    assert data[52:56] == b"IDAT"
    raw = zlib.decompress(data[56 : 56 + idat_len])
    assert len(raw) == size[1] * (1 + (size[0] + 7) // 8)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.02, "20ms"), (1.0, "1s"), (360.0, "6m0s"), (61.2, "1m2s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    """Reset durations are written the way OpenAI writes them."""
    assert format_duration(seconds) == text
