"""A cap on a provider's in-flight attempts (``rate_limit.max_concurrency``).

Non-blocking by design, like the token bucket: a full provider is skipped, not waited on.
"""

from __future__ import annotations

__all__ = ["ConcurrencyCap"]


class ConcurrencyCap:
    """Counts in-flight attempts against an optional maximum (``None``: unlimited)."""

    __slots__ = ("_inflight", "max")

    def __init__(self, max: int | None = None) -> None:  # `max` mirrors the config field
        if max is not None and max < 1:
            raise ValueError("max must be >= 1 or None")
        self.max = max
        self._inflight = 0

    @property
    def inflight(self) -> int:
        """Attempts currently holding a slot."""
        return self._inflight

    @property
    def full(self) -> bool:
        """Whether no slot is free."""
        return self.max is not None and self._inflight >= self.max

    def try_enter(self) -> bool:
        """Take a slot if one is free; never waits."""
        if self.full:
            return False
        self._inflight += 1
        return True

    def leave(self) -> None:
        """Give a slot back. Raises ``RuntimeError`` if none is held (a bookkeeping bug)."""
        if self._inflight <= 0:
            raise RuntimeError("ConcurrencyCap.leave() without a matching try_enter()")
        self._inflight -= 1

    def __repr__(self) -> str:
        return f"ConcurrencyCap(max={self.max!r}, inflight={self._inflight})"
