"""The service-wide retry budget: failover may add load only in proportion to real traffic.

Without a budget, an outage multiplies every request by ``max_attempts`` exactly when
providers are weakest. Extra attempts are allowed while, over a sliding window,

    retries < ratio × first_attempts + min_per_s × window_s

so retries stay a fixed fraction of traffic, with a floor that lets a quiet service
still fail over.
"""

from __future__ import annotations

import math
from collections import deque

from breakers.clock import Clock
from router.config import RetryBudgetConfig

__all__ = ["RetryBudget"]


class RetryBudget:
    """Counts first attempts and retries in time buckets over a sliding window.

    The window is ``window_s`` rounded up to whole ``bucket_s`` buckets (the current
    bucket included), so with the defaults it covers the last 9–10 seconds.
    """

    __slots__ = ("_buckets", "_clock", "_n_buckets", "bucket_s", "min_per_s", "ratio", "window_s")

    def __init__(
        self,
        ratio: float,
        min_per_s: float,
        clock: Clock,
        window_s: float = 10.0,
        *,
        bucket_s: float = 1.0,
    ) -> None:
        if ratio < 0 or min_per_s < 0 or window_s <= 0 or bucket_s <= 0:
            raise ValueError("ratio and min_per_s must be >= 0; window_s and bucket_s > 0")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self.bucket_s = bucket_s
        self._clock = clock
        self._n_buckets = max(1, math.ceil(window_s / bucket_s))
        #: ``[bucket index, first attempts, retries]``, oldest first.
        self._buckets: deque[list[int]] = deque()

    @classmethod
    def from_config(cls, config: RetryBudgetConfig, clock: Clock) -> RetryBudget:
        """The budget ``routing.retry_budget`` describes."""
        return cls(config.ratio, config.min_per_s, clock)

    def _current(self) -> list[int]:
        index = math.floor(self._clock.monotonic() / self.bucket_s)
        buckets = self._buckets
        while buckets and buckets[0][0] <= index - self._n_buckets:
            buckets.popleft()
        if not buckets or buckets[-1][0] != index:
            buckets.append([index, 0, 0])
        return buckets[-1]

    @property
    def requests_in_window(self) -> int:
        """First attempts counted in the window."""
        self._current()
        return sum(b[1] for b in self._buckets)

    @property
    def retries_in_window(self) -> int:
        """Extra attempts spent in the window."""
        self._current()
        return sum(b[2] for b in self._buckets)

    @property
    def allowance(self) -> float:
        """How many retries the window allows in total right now."""
        return self.ratio * self.requests_in_window + self.min_per_s * self.window_s

    def record_request(self) -> None:
        """Count one first attempt (call once per job, before its first attempt)."""
        self._current()[1] += 1

    def try_spend(self) -> bool:
        """Spend one retry if the budget allows it; ``False`` means do not fail over."""
        bucket = self._current()
        if self.retries_in_window >= self.allowance:
            return False
        bucket[2] += 1
        return True

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio!r}, min_per_s={self.min_per_s!r}, "
            f"requests={self.requests_in_window}, retries={self.retries_in_window})"
        )
