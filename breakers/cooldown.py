"""An upstream ``Retry-After`` cooldown: a provider that said "slow down" is skipped until then.

A cooldown is the provider managing its own load, not a sign of ill health, so it
never trips the breaker.
"""

from __future__ import annotations

import math
from datetime import UTC
from email.utils import parsedate_to_datetime

from breakers.clock import Clock

__all__ = ["MAX_COOLDOWN_S", "Cooldown", "parse_retry_after"]

#: No upstream may park a provider for longer than this, whatever its header says.
MAX_COOLDOWN_S = 300.0


def parse_retry_after(value: str | float | None, now_unix: float) -> float | None:
    """``Retry-After`` (RFC 9110 §10.2.3) as seconds from ``now_unix``; ``None`` if unusable.

    Accepts delay-seconds (``"120"``, and leniently ``"1.5"`` or a number) or an
    HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``). A date in the past gives 0.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:  # RFC 9110 dates are GMT; obsolete forms may lack a zone
                when = when.replace(tzinfo=UTC)
            seconds = when.timestamp() - now_unix
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class Cooldown:
    """Until when a provider asked us to stay away, on an injected clock."""

    __slots__ = ("_clock", "_until", "max_s")

    def __init__(self, clock: Clock, *, max_s: float = MAX_COOLDOWN_S) -> None:
        self._clock = clock
        self._until = -math.inf
        self.max_s = max_s

    def set_from_retry_after(self, value: str | float | None, default_s: float) -> float:
        """Start (or extend) a cooldown from a ``Retry-After`` value; return its length in seconds.

        Falls back to ``default_s`` when the value is missing or unparseable, and caps
        at ``max_s``. A shorter cooldown never cuts a running longer one short.
        """
        seconds = parse_retry_after(value, self._clock.time())
        if seconds is None:
            seconds = default_s
        return self.set_for(seconds)

    def set_for(self, seconds: float) -> float:
        """Cool down for ``seconds`` (capped at ``max_s``); return the length applied."""
        seconds = min(max(0.0, seconds), self.max_s)
        self._until = max(self._until, self._clock.monotonic() + seconds)
        return seconds

    def clear(self) -> None:
        """End the cooldown now."""
        self._until = -math.inf

    @property
    def remaining_s(self) -> float:
        """Seconds left; 0 when not cooling down."""
        return max(0.0, self._until - self._clock.monotonic())

    @property
    def active(self) -> bool:
        """Whether the provider is still cooling down."""
        return self.remaining_s > 0.0

    @property
    def until_unix(self) -> float | None:
        """When the cooldown ends in Unix seconds (``cooldown_until``); ``None`` if inactive."""
        remaining = self.remaining_s
        return self._clock.time() + remaining if remaining > 0.0 else None

    def __repr__(self) -> str:
        return f"Cooldown(remaining_s={self.remaining_s:.3f})"
