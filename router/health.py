"""A provider's health and latency signals, as the router's snapshot reads them.

* **Success ratio**: successes and failures are counted with exponential time decay
  (half-life ``half_life_s``), plus a prior of ``prior`` successes, so a provider with
  no data reads 1.0 and old failures fade instead of condemning an idle provider
  forever: ``(s + prior) / (s + f + prior)``.
* **Latency**, per kind: an EWMA with a fixed ``alpha`` of 0.2 per sample (the
  signal's resolution follows traffic, like TCP's SRTT), and a tail estimate
  ``mean + 3 × dev`` where ``dev`` is an EWMA of ``|x − mean|`` (Jacobson/Karels).

Only provider-caused outcomes belong here; the caller decides what to record
(a caller's invalid request or a 429 is not a health signal).
"""

from __future__ import annotations

from breakers.clock import Clock

__all__ = ["LATENCY_ALPHA", "TAIL_DEVIATIONS", "ProviderStats"]

#: Weight of each new latency sample in the EWMA.
LATENCY_ALPHA = 0.2
#: Tail estimate = mean + this many mean absolute deviations.
TAIL_DEVIATIONS = 3.0


class _Latency:
    """EWMA of latency and of its absolute deviation, for one kind."""

    __slots__ = ("dev", "mean", "samples")

    def __init__(self, first: float) -> None:
        self.mean = first
        self.dev = first / 2  # RFC 6298's initial RTTVAR: no spread known yet, assume some
        self.samples = 1

    def add(self, x: float) -> None:
        # Deviation against the previous mean, then the mean (RFC 6298 order).
        self.dev += LATENCY_ALPHA * (abs(x - self.mean) - self.dev)
        self.mean += LATENCY_ALPHA * (x - self.mean)
        self.samples += 1


class ProviderStats:
    """Decaying success ratio and per-kind latency estimates for one provider."""

    __slots__ = ("_bad", "_clock", "_last", "_latency", "_ok", "half_life_s", "prior")

    def __init__(self, clock: Clock, half_life_s: float = 30.0, *, prior: float = 1.0) -> None:
        if half_life_s <= 0 or prior < 0:
            raise ValueError("half_life_s must be > 0 and prior >= 0")
        self._clock = clock
        self.half_life_s = half_life_s
        self.prior = prior
        self._ok = 0.0
        self._bad = 0.0
        self._last = clock.monotonic()
        self._latency: dict[str, _Latency] = {}

    def _decay(self) -> None:
        now = self._clock.monotonic()
        elapsed = now - self._last
        if elapsed > 0:
            factor = 0.5 ** (elapsed / self.half_life_s)
            self._ok *= factor
            self._bad *= factor
        self._last = now

    def forgive(self) -> None:
        """Forget past failures: the provider proved itself healthy again.

        Called when a half-open probe closes the breaker; otherwise the outage's
        failures would keep its health low (and its traffic away) long after recovery.
        """
        self._bad = 0.0

    def record(self, kind: str, ok: bool, latency_s: float | None = None) -> None:
        """Count one provider outcome; ``latency_s`` (if given) feeds ``kind``'s estimates."""
        self._decay()
        if ok:
            self._ok += 1.0
        else:
            self._bad += 1.0
        if latency_s is not None and latency_s >= 0:
            est = self._latency.get(kind)
            if est is None:
                self._latency[kind] = _Latency(latency_s)
            else:
                est.add(latency_s)

    @property
    def success_ratio(self) -> float:
        """Decayed successes over decayed outcomes, with the prior; 1.0 with no data."""
        self._decay()
        total = self._ok + self._bad + self.prior
        return 1.0 if total <= 0 else (self._ok + self.prior) / total

    @property
    def weight(self) -> float:
        """Decayed number of outcomes behind the ratio (how much to trust it)."""
        self._decay()
        return self._ok + self._bad

    def latency_ewma(self, kind: str) -> float | None:
        """Smoothed latency of ``kind`` in seconds; ``None`` before the first sample."""
        est = self._latency.get(kind)
        return None if est is None else est.mean

    def latency_tail(self, kind: str) -> float | None:
        """A high-percentile latency estimate of ``kind`` in seconds; ``None`` before data."""
        est = self._latency.get(kind)
        return None if est is None else est.mean + TAIL_DEVIATIONS * est.dev

    def latency_ewmas(self) -> dict[str, float]:
        """``latency_ewma`` for every kind seen (for ``ProviderSnapshot.latency_ewma_s``)."""
        return {kind: est.mean for kind, est in self._latency.items()}

    def latency_tails(self) -> dict[str, float]:
        """``latency_tail`` for every kind seen (for ``ProviderSnapshot.latency_tail_s``)."""
        return {kind: est.mean + TAIL_DEVIATIONS * est.dev for kind, est in self._latency.items()}

    def __repr__(self) -> str:
        return (
            f"ProviderStats(success_ratio={self.success_ratio:.3f}, kinds={sorted(self._latency)})"
        )
