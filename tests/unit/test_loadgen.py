"""The benchmark load generator's schedule and histogram arithmetic."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.bench.loadgen import Histogram, LoadResult, _bucket_bounds, _bucket_of, schedule


def test_schedule_spaces_requests_evenly_at_the_rate() -> None:
    """Request i is due at i / rate, and rate × duration requests are scheduled."""
    offsets = schedule(200.0, 5.0)
    assert len(offsets) == 1000
    assert offsets[0] == 0.0
    assert offsets[1] == pytest.approx(0.005)
    assert offsets[-1] == pytest.approx(4.995)


def test_schedule_does_not_lose_a_request_to_float_rounding() -> None:
    """A rate and duration whose product is whole give exactly that many requests."""
    assert len(schedule(0.1 * 3, 10.0)) == 3


@pytest.mark.parametrize(("rate", "duration"), [(0.0, 1.0), (10.0, 0.0), (-1.0, 1.0)])
def test_schedule_rejects_non_positive_inputs(rate: float, duration: float) -> None:
    """A non-positive rate or duration is a caller's mistake."""
    with pytest.raises(ValueError, match="positive"):
        schedule(rate, duration)


@given(st.integers(min_value=0, max_value=10**9))
def test_every_value_falls_within_its_bucket_bounds(value: int) -> None:
    """Bucketing is consistent with the bounds used to report percentiles."""
    low, high = _bucket_bounds(_bucket_of(value))
    assert low <= value <= high
    # Relative width stays within 1/64: the histogram's precision promise.
    assert high - low <= max(0, low) / 64


def test_buckets_are_exact_below_128_microseconds() -> None:
    """Small values keep a bucket of their own."""
    assert all(_bucket_bounds(_bucket_of(v)) == (v, v) for v in range(128))


def test_percentiles_match_exact_ranks_within_precision() -> None:
    """p50/p99/p99.9/max of a known sample agree with the sorted sample within 1/64."""
    rng = random.Random(7)
    values = [rng.lognormvariate(-7, 1.0) for _ in range(10_000)]
    hist = Histogram()
    for v in values:
        hist.record(v)
    ordered = sorted(round(v * 1e6) for v in values)
    for q in (50.0, 90.0, 99.0, 99.9, 100.0):
        exact = ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]
        got = hist.percentile_us(q)
        assert exact <= got <= exact + exact / 64 + 1
    assert hist.percentile_us(100.0) == max(ordered)
    assert hist.min_us == min(ordered)


def test_empty_histogram_reports_zero() -> None:
    """No samples means no latency, not an exception."""
    assert Histogram().percentile_ms(99.0) == 0.0


def test_percentile_outside_0_to_100_is_rejected() -> None:
    """Percentiles are in percent, so 0.99 and 99 are never confused silently."""
    with pytest.raises(ValueError, match="within"):
        Histogram().percentile_us(101.0)


def test_merge_equals_recording_everything_in_one_histogram() -> None:
    """Merging per-run histograms gives the same counts as one long run."""
    a, b, both = Histogram(), Histogram(), Histogram()
    for i, v in enumerate([0.0001, 0.002, 0.05, 0.3, 0.00099, 1.5]):
        (a if i % 2 else b).record(v)
        both.record(v)
    a.merge(b)
    assert a == both


def test_cdf_ends_at_one_and_never_decreases() -> None:
    """The plotted CDF is monotone and reaches 100 %."""
    hist = Histogram()
    for v in (0.001, 0.001, 0.002, 0.010):
        hist.record(v)
    points = list(hist.cdf())
    fractions = [f for _, f in points]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert points[-1][0] == pytest.approx(10.0)


def test_load_result_round_trips_through_json() -> None:
    """A subprocess's JSON output parses back into an equal result."""
    result = LoadResult(rate=100.0, duration_s=2.0, sent=200, ok=198)
    result.add_error("timeout")
    result.add_error("http_503")
    result.histogram.record(0.0012)
    result.service_histogram.record(0.0009)
    again = LoadResult.from_json(result.to_json())
    assert again == result
    assert again.error_ratio == pytest.approx(0.01)
