"""The generic cell rate algorithm (GCRA), the shared token bucket's arithmetic.

GCRA keeps one number per bucket, the *theoretical arrival time* (TAT): when the
bucket would be empty again if requests kept arriving at exactly the sustained rate.
With an emission interval ``T = per_s / requests`` and a burst of ``B`` tokens, a
request at ``now`` is allowed while ``max(TAT, now) + T - now <= B × T``, and moves TAT
to ``max(TAT, now) + T``. One number, one comparison: it fits one atomic Lua script
(:data:`breakers.redis_scripts.ADMIT`), so a token costs one Redis round trip.

This module is the same arithmetic in Python: the specification the Lua script is
tested against, and the headroom estimate the local view shows between reads.
"""

from __future__ import annotations

__all__ = ["gcra_admit", "gcra_available"]

_EPSILON_S = 1e-7


def gcra_admit(tat: float, now: float, emission: float, burst: float) -> tuple[bool, float]:
    """Whether a request at ``now`` is allowed, and the TAT afterwards (unchanged if not)."""
    base = max(tat, now)
    new_tat = base + emission
    # Redis works in whole microseconds; a sub-microsecond float error must not refuse.
    if new_tat - now > emission * burst + _EPSILON_S:
        return False, tat
    return True, new_tat


def gcra_available(tat_in: float, emission: float, burst: float) -> float:
    """Tokens available when TAT lies ``tat_in`` ahead of now (0 … ``burst``)."""
    return max(0.0, min(burst, burst - max(0.0, tat_in) / emission))
