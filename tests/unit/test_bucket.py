"""TokenBucket, Cooldown and ConcurrencyCap on a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from breakers.bucket import TokenBucket
from breakers.clock import FakeClock
from breakers.concurrency import ConcurrencyCap
from breakers.cooldown import MAX_COOLDOWN_S, Cooldown, parse_retry_after
from router.config import RateLimitConfig


def test_requests_per_period_semantics() -> None:
    """{requests: 10, per_s: 2} is a burst of 10 refilling at 5 tokens per second."""
    bucket = TokenBucket.from_config(RateLimitConfig(requests=10, per_s=2), FakeClock())
    assert bucket.capacity == 10
    assert bucket.refill_per_s == 5
    assert bucket.available == 10


def test_burst_then_empty() -> None:
    """Exactly `requests` tokens can be taken at once, then try_acquire fails without waiting."""
    bucket = TokenBucket(4, 1, clock=FakeClock())
    assert [bucket.try_acquire() for _ in range(5)] == [True, True, True, True, False]
    assert bucket.available == 0


def test_exact_refill_math() -> None:
    """Tokens come back at requests/per_s per second, capped at capacity."""
    clock = FakeClock()
    bucket = TokenBucket(8, 2, clock=clock)  # 4 tokens/s
    for _ in range(8):
        assert bucket.try_acquire()
    clock.advance(0.125)
    assert bucket.available == 0.5
    assert not bucket.try_acquire()
    assert bucket.wait_s == 0.125
    clock.advance(0.125)
    assert bucket.available == 1.0
    assert bucket.try_acquire()
    assert bucket.available == 0.0
    clock.advance(100)
    assert bucket.available == 8


def test_upstream_remaining_lowers_headroom_until_reset() -> None:
    """An upstream remaining=2 hint caps available at 2, is spent down, and lapses at reset."""
    clock = FakeClock()
    bucket = TokenBucket(10, 1, clock=clock)
    bucket.observe_upstream(remaining=2, limit=100, reset_s=5)
    assert bucket.available == 2
    assert bucket.try_acquire()
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    assert bucket.wait_s == 5
    clock.advance(5)
    assert bucket.available == 10


def test_upstream_hint_never_raises_headroom() -> None:
    """A generous upstream remaining does not lift our own level."""
    bucket = TokenBucket(3, 1, clock=FakeClock())
    for _ in range(3):
        bucket.try_acquire()
    bucket.observe_upstream(remaining=1000, limit=1000, reset_s=60)
    assert bucket.available == 0
    assert not bucket.try_acquire()


def test_upstream_hint_without_reset_lasts_one_period() -> None:
    """With no reset time the clamp holds for one of our own periods."""
    clock = FakeClock()
    bucket = TokenBucket(10, 2, clock=clock)
    bucket.observe_upstream(remaining=0, limit=None, reset_s=None)
    clock.advance(1.9)
    assert bucket.available == 0
    clock.advance(0.1)
    assert bucket.available == 10


def test_retry_after_seconds() -> None:
    """A delay-seconds Retry-After starts a cooldown of that length on the clock."""
    clock = FakeClock()
    cooldown = Cooldown(clock)
    assert cooldown.remaining_s == 0
    assert cooldown.set_from_retry_after("7", default_s=1) == 7
    until = cooldown.until_unix
    assert until == clock.time() + 7
    clock.advance(6.5)
    assert cooldown.remaining_s == 0.5
    assert cooldown.active
    clock.advance(0.5)
    assert cooldown.until_unix is None
    assert cooldown.remaining_s == 0


def test_retry_after_http_date() -> None:
    """An HTTP-date Retry-After counts from the clock's wall time."""
    clock = FakeClock(wall=1_800_000_000.0)
    when = datetime.fromtimestamp(1_800_000_042, UTC)
    cooldown = Cooldown(clock)
    assert cooldown.set_from_retry_after(format_datetime(when, usegmt=True), 1) == 42
    assert cooldown.remaining_s == 42


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("soon", None),
        ("", None),
        (3, 3.0),
        (2.5, 2.5),
        (" 12 ", 12.0),
        ("-4", 0.0),
        ("nan", None),
        ("Thu, 01 Jan 2026 00:00:00 GMT", 0.0),  # in the past relative to now_unix
    ],
)
def test_parse_retry_after(value: str | float | None, expected: float | None) -> None:
    """Retry-After parsing accepts seconds and dates, clamps the past to 0, rejects junk."""
    assert parse_retry_after(value, 1_800_000_000.0) == expected


def test_retry_after_default_and_cap() -> None:
    """Junk falls back to the default; huge values are capped; a shorter one never shortens."""
    clock = FakeClock()
    cooldown = Cooldown(clock)
    assert cooldown.set_from_retry_after("garbage", default_s=2) == 2
    assert cooldown.set_from_retry_after(86_400, default_s=2) == MAX_COOLDOWN_S
    cooldown.set_from_retry_after(1, default_s=2)
    assert cooldown.remaining_s == MAX_COOLDOWN_S
    cooldown.clear()
    assert not cooldown.active


def test_concurrency_cap() -> None:
    """try_enter admits up to max; leave frees a slot; None means unlimited."""
    cap = ConcurrencyCap(2)
    assert cap.try_enter()
    assert cap.try_enter()
    assert not cap.try_enter()
    assert cap.full
    cap.leave()
    assert cap.inflight == 1
    assert cap.try_enter()
    unlimited = ConcurrencyCap(None)
    assert all(unlimited.try_enter() for _ in range(1000))
    assert not unlimited.full


def test_concurrency_leave_without_enter_is_a_bug() -> None:
    """leave() without a slot raises instead of going negative."""
    with pytest.raises(RuntimeError):
        ConcurrencyCap(1).leave()
