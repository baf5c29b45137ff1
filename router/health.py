"""A provider's health and latency signals, as the router's snapshot reads them.

* **Success ratio**: successes and failures are counted with exponential time decay
  (half-life ``half_life_s``), plus a prior of ``prior`` successes, so a provider with
  no data reads 1.0 and old failures fade instead of condemning an idle provider
  forever: ``(s + prior) / (s + f + prior)``.
* **Failure streak**: provider failures since its last success, decaying with a short
  half-life: ``streak_half_life_s`` times the number of failures in the streak, so each
  failed trial backs off further (as Envoy's outlier ejection time grows with each
  ejection). It is the fast signal: one failure steers traffic away at once (the
  strategy divides health by ``1 + streak``), where the success ratio, built from
  minutes of history, barely moves; a success clears it, and as it decays the provider
  earns one trial call again.
* **Outstanding attempts**, per kind: when each in-flight attempt started, so a
  provider that stopped answering is seen before its first timeout (an attempt in
  flight for longer than the latency estimate is a lower bound on the latency).
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

    __slots__ = (
        "_bad",
        "_clock",
        "_last",
        "_latency",
        "_next_token",
        "_ok",
        "_outstanding",
        "_streak",
        "_streak_at",
        "_streak_n",
        "half_life_s",
        "prior",
        "streak_half_life_s",
    )

    def __init__(
        self,
        clock: Clock,
        half_life_s: float = 30.0,
        *,
        prior: float = 1.0,
        streak_half_life_s: float = 1.0,
    ) -> None:
        if half_life_s <= 0 or prior < 0 or streak_half_life_s <= 0:
            raise ValueError("half-lives must be > 0 and prior >= 0")
        self._clock = clock
        self.half_life_s = half_life_s
        self.prior = prior
        self.streak_half_life_s = streak_half_life_s
        self._ok = 0.0
        self._bad = 0.0
        self._last = clock.monotonic()
        self._streak = 0.0
        self._streak_at = self._last
        self._streak_n = 0
        self._latency: dict[str, _Latency] = {}
        #: Per kind: token → start of each attempt in flight, oldest first.
        self._outstanding: dict[str, dict[int, float]] = {}
        self._next_token = 0

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
        Clears the failure streak as well.
        """
        self._bad = 0.0
        self._streak = 0.0
        self._streak_n = 0

    @property
    def failure_streak(self) -> float:
        """Failures since the last success, decayed with a half-life of
        ``streak_half_life_s`` × their number (a longer streak fades more slowly)."""
        if self._streak == 0.0:
            return 0.0
        elapsed = max(self._clock.monotonic() - self._streak_at, 0.0)
        decay: float = 0.5 ** (elapsed / (self.streak_half_life_s * max(self._streak_n, 1)))
        return self._streak * decay

    def begin(self, kind: str) -> int:
        """Note that an attempt of ``kind`` started now; pass the token to :meth:`end`."""
        token = self._next_token
        self._next_token += 1
        self._outstanding.setdefault(kind, {})[token] = self._clock.monotonic()
        return token

    def end(self, token: int) -> None:
        """Note that the attempt :meth:`begin` returned ``token`` for is over."""
        for started in self._outstanding.values():
            if started.pop(token, None) is not None:
                return

    def oldest_outstanding_s(self, kind: str) -> float | None:
        """Age of the oldest attempt of ``kind`` still in flight; ``None`` when none is."""
        started = self._outstanding.get(kind)
        if not started:
            return None
        # Insertion order is start order: the first entry is the oldest.
        return max(self._clock.monotonic() - next(iter(started.values())), 0.0)

    def record(
        self,
        kind: str,
        ok: bool,
        latency_s: float | None = None,
        *,
        started_s: float | None = None,
    ) -> None:
        """Count one provider outcome; ``latency_s`` (if given) feeds ``kind``'s estimates.

        ``started_s`` (the attempt's start on the clock) keeps *blind* failures out of
        the streak: an attempt sent before the streak's latest failure was known adds no
        news (it was in flight when the provider failed), so a burst of calls caught by
        one outage counts once. It still counts in the success ratio.
        """
        self._decay()
        if ok:
            self._ok += 1.0
            self._streak = 0.0
            self._streak_n = 0
        else:
            self._bad += 1.0
            blind = started_s is not None and self._streak > 0 and started_s < self._streak_at
            if not blind:
                self._streak = self.failure_streak + 1.0
                self._streak_at = self._clock.monotonic()
                self._streak_n += 1
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
