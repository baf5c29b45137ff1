"""Fault injection for the sandbox emulators: what goes wrong with the next request.

:class:`FaultInjector` turns a :class:`~router.config.FaultsConfig` into one
:class:`Decision` per request. It is pure apart from its injected
:class:`~breakers.clock.Clock` and its seeded :class:`random.Random`, so a run
with the same seed and the same request order injects the same faults, and
outages and rate limits are tested by advancing a fake clock.

The emulator applies the decision (sleeps, hangs, resets the connection, writes
the provider's own error body); the injector never touches the network.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Any

import msgspec

from breakers.clock import Clock, SystemClock
from router.config import FaultsConfig

__all__ = ["Decision", "FaultAction", "FaultInjector"]


class FaultAction(enum.Enum):
    """What the emulator does instead of (or to) a normal answer."""

    NONE = "none"
    OUTAGE = "outage"  # 503 during a scheduled window
    RATE_LIMITED = "rate_limited"  # 429 with Retry-After
    HANG = "hang"  # never answer; the client gives up
    RESET = "reset"  # close the connection abruptly
    ERROR = "error"  # FaultsConfig.error_status with an error body
    MALFORMED = "malformed"  # 200 with a body that is not valid JSON


@dataclass(frozen=True, slots=True)
class Decision:
    """The faults for one request, plus the rate-limit state to advertise in headers."""

    action: FaultAction = FaultAction.NONE
    latency_s: float = 0.0
    status: int | None = None
    retry_after_s: float | None = None
    #: Requests allowed per window, or ``None`` when no rate limit is configured.
    limit: float | None = None
    remaining: float | None = None
    reset_s: float | None = None


_PASS = Decision()


class FaultInjector:
    """Decides each request's faults from a runtime-replaceable :class:`FaultsConfig`.

    The rate limit is a token bucket holding at most one second of requests
    (``rate_limit_per_s`` tokens, at least one) so a burst above the rate is
    refused at once, the way a provider's per-second limiter behaves.
    """

    __slots__ = ("_clock", "_config", "_initial", "_last", "_rng", "_seed", "_started", "_tokens")

    def __init__(
        self, config: FaultsConfig | None = None, *, clock: Clock | None = None, seed: int = 0
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._initial = config or FaultsConfig()
        self._config = self._initial
        self._seed = seed
        self._rng = random.Random(seed)
        self._started = self._clock.monotonic()
        self._tokens = 0.0
        self._last = self._started
        self._refill_full()

    @property
    def config(self) -> FaultsConfig:
        """The faults in force."""
        return self._config

    @config.setter
    def config(self, config: FaultsConfig) -> None:
        self._config = config
        self._refill_full()

    def update(self, **changes: Any) -> FaultsConfig:
        """Replace some fields of the config in force (validated); return the new config."""
        merged = msgspec.structs.asdict(self._config) | changes
        self.config = msgspec.convert(merged, FaultsConfig)
        return self._config

    def restart(self) -> None:
        """Back to the initial config, a full bucket, a fresh seed and t=0 for outages."""
        self._config = self._initial
        self._rng = random.Random(self._seed)
        self._started = self._clock.monotonic()
        self._refill_full()

    def elapsed_s(self) -> float:
        """Seconds since start (or the last restart); outage windows count from here."""
        return self._clock.monotonic() - self._started

    def _refill_full(self) -> None:
        rate = self._config.rate_limit_per_s
        self._tokens = max(rate, 1.0) if rate else 0.0
        self._last = self._clock.monotonic()

    def _in_outage(self, now: float) -> bool:
        t = now - self._started
        return any(start <= t < end for start, end in self._config.outages)

    def decide(self) -> Decision:
        """The faults for the next request; consumes a rate-limit token when one is due."""
        c = self._config
        now = self._clock.monotonic()
        if c.outages and self._in_outage(now):
            return Decision(FaultAction.OUTAGE, status=503, retry_after_s=c.retry_after_s)
        limit = remaining = reset_s = None
        if c.rate_limit_per_s is not None:
            rate = c.rate_limit_per_s
            capacity = max(rate, 1.0)
            self._tokens = min(capacity, self._tokens + (now - self._last) * rate)
            self._last = now
            limit = capacity
            if self._tokens < 1.0:
                return Decision(
                    FaultAction.RATE_LIMITED,
                    status=429,
                    retry_after_s=c.retry_after_s,
                    limit=limit,
                    remaining=0.0,
                    reset_s=(1.0 - self._tokens) / rate,
                )
            self._tokens -= 1.0
            remaining = float(int(self._tokens))
            reset_s = (capacity - self._tokens) / rate
        # Draw only for the faults that are on, always in this order, so a seed replays.
        action = FaultAction.NONE
        status: int | None = None
        rng = self._rng
        for ratio, fault in (
            (c.hang_ratio, FaultAction.HANG),
            (c.reset_ratio, FaultAction.RESET),
            (c.error_ratio, FaultAction.ERROR),
            (c.malformed_ratio, FaultAction.MALFORMED),
        ):
            if ratio > 0 and rng.random() < ratio and action is FaultAction.NONE:
                action = fault
        if action is FaultAction.ERROR:
            status = c.error_status
        if action is FaultAction.NONE and limit is None and c.latency_s == 0:
            return _PASS
        return Decision(
            action,
            latency_s=c.latency_s,
            status=status,
            retry_after_s=c.retry_after_s if action is FaultAction.ERROR else None,
            limit=limit,
            remaining=remaining,
            reset_s=reset_s,
        )
