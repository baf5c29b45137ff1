"""A provider's request-rate token bucket: aiolimiter's leaky bucket on an injected clock.

Configuration ``rate_limit: {requests: R, per_s: P}`` means **R requests per P
seconds**: ``AsyncLimiter(max_rate=R, time_period=P)``, a burst of up to ``R`` that
refills at ``R / P`` tokens per second. So ``{requests: 10, per_s: 1}`` is 10 req/s
with a burst of 10, and ``{requests: 60, per_s: 60}`` is 1 req/s with a burst of 60.

Switchman never waits for a token: a provider without one is skipped in favour of the
next candidate, so the only operation is the non-blocking :meth:`TokenBucket.try_acquire`.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter

from breakers.clock import Clock
from router.config import RateLimitConfig

__all__ = ["TokenBucket"]


class _ClockedLimiter(AsyncLimiter):
    """An ``AsyncLimiter`` that drains by an injected clock instead of ``loop.time()``.

    Only its level bookkeeping (``_leak``, ``has_capacity``) is used, which needs no
    running event loop and is exact under a fake clock. Its blocking ``acquire`` is not
    used: its timers would be scheduled on the loop's clock.
    """

    __slots__ = ("_clock",)

    def __init__(self, max_rate: float, time_period: float, clock: Clock) -> None:
        super().__init__(max_rate, time_period)
        self._clock = clock
        self._last_check = clock.monotonic()

    def _leak(self) -> None:
        now = self._clock.monotonic()
        if self._level:
            self._level = max(self._level - (now - self._last_check) * self._rate_per_sec, 0.0)
        self._last_check = now

    def take(self, amount: float) -> None:
        """Consume ``amount`` of capacity without waiting (the caller checked it exists)."""
        self._leak()
        self._level += amount

    def level(self) -> float:
        """The bucket's current fill level, after draining to now."""
        self._leak()
        return self._level


class TokenBucket:
    """Request headroom for one provider: ``requests`` per ``per_s`` seconds.

    Upstream ``x-ratelimit-remaining`` hints (:meth:`observe_upstream`) can only lower
    the headroom we report, never raise it above our own level.
    """

    __slots__ = (
        "_clock",
        "_limiter",
        "_upstream_remaining",
        "_upstream_until",
        "per_s",
        "requests",
    )

    def __init__(self, requests: float, per_s: float, *, clock: Clock) -> None:
        if requests <= 0 or per_s <= 0:
            raise ValueError("requests and per_s must be > 0")
        self.requests = requests
        self.per_s = per_s
        self._clock = clock
        self._limiter = _ClockedLimiter(requests, per_s, clock)
        self._upstream_remaining: float | None = None
        self._upstream_until = 0.0

    @classmethod
    def from_config(cls, config: RateLimitConfig, clock: Clock) -> TokenBucket:
        """The bucket a provider's ``rate_limit`` section describes."""
        return cls(config.requests, config.per_s, clock=clock)

    @property
    def capacity(self) -> float:
        """The most tokens the bucket holds (the burst size)."""
        return float(self.requests)

    @property
    def refill_per_s(self) -> float:
        """Tokens added back per second."""
        return self.requests / self.per_s

    def _upstream_clamp(self) -> float | None:
        if self._upstream_remaining is None:
            return None
        if self._clock.monotonic() >= self._upstream_until:
            self._upstream_remaining = None  # the provider's window has reset
            return None
        return self._upstream_remaining

    @property
    def available(self) -> float:
        """Tokens available now: our own level, lowered by any live upstream hint."""
        own = self.capacity - self._limiter.level()
        clamp = self._upstream_clamp()
        return own if clamp is None else min(own, clamp)

    @property
    def wait_s(self) -> float:
        """Seconds until one token is available (0 if one is now)."""
        own = self.capacity - self._limiter.level()
        wait = max(0.0, (1.0 - own) / self.refill_per_s)
        clamp = self._upstream_clamp()
        if clamp is not None and clamp < 1.0:
            wait = max(wait, self._upstream_until - self._clock.monotonic())
        return wait

    def try_acquire(self) -> bool:
        """Take one token if one is available now; never waits."""
        if self.available < 1.0:
            return False
        self._limiter.take(1.0)
        if self._upstream_remaining is not None:
            self._upstream_remaining = max(0.0, self._upstream_remaining - 1.0)
        return True

    def observe_upstream(
        self, remaining: float | None, limit: float | None, reset_s: float | None
    ) -> None:
        """Lower our headroom to what the provider says is left, until its window resets.

        ``remaining`` holds (and is spent down by :meth:`try_acquire`) for ``reset_s``
        seconds, or one of our own periods when the provider gives no reset time.
        ``limit`` is informational: our capacity comes from configuration, so a higher
        advertised limit never raises it and a lower one shows up through ``remaining``.
        """
        del limit
        if remaining is None:
            return
        horizon = self.per_s if reset_s is None else max(0.0, reset_s)
        self._upstream_remaining = max(0.0, float(remaining))
        self._upstream_until = self._clock.monotonic() + horizon

    def __repr__(self) -> str:
        return (
            f"TokenBucket(requests={self.requests!r}, per_s={self.per_s!r}, "
            f"available={self.available:.3f})"
        )
