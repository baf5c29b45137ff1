"""Remembering webhook ids, so a replayed delivery is recognised and ignored."""

from __future__ import annotations

from collections import OrderedDict

from breakers.clock import Clock

__all__ = ["ReplayGuard"]


class ReplayGuard:
    """A bounded, time-limited set of seen ids.

    Ids are kept for ``ttl_s`` (longer than any provider's signature tolerance,
    so a replay inside the tolerance window is always caught) and at most
    ``max_entries`` of them, oldest evicted first.
    """

    __slots__ = ("_clock", "_max", "_seen", "_ttl")

    def __init__(self, clock: Clock, *, ttl_s: float = 900.0, max_entries: int = 100_000) -> None:
        self._clock = clock
        self._ttl = ttl_s
        self._max = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, key: str) -> bool:
        """Record ``key``; ``True`` the first time it is seen within the window."""
        now = self._clock.monotonic()
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self._ttl and len(self._seen) < self._max:
                break
            del self._seen[oldest]
        if key in self._seen:
            return False
        self._seen[key] = now
        return True
