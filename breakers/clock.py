"""Time as a dependency.

Breakers, buckets, cooldowns, EWMAs and deadlines read a :class:`Clock` instead of
the module ``time`` so that tests advance a :class:`FakeClock` and stay exact and fast.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Where time comes from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; for intervals and deadlines."""
        ...

    def time(self) -> float:
        """Unix seconds; for timestamps shown to people and HTTP dates."""
        ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock that moves only when a test says so."""

    __slots__ = ("_mono", "_wall")

    def __init__(self, start: float = 1_000.0, wall: float = 1_800_000_000.0) -> None:
        self._mono = start
        self._wall = wall

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("a clock never goes back")
        self._mono += seconds
        self._wall += seconds

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._mono:.3f})"
