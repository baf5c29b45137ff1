"""A provider's circuit breaker: pybreaker, made safe for asyncio and an injected clock.

pybreaker does the bookkeeping (consecutive failures, open/half-open/closed, listeners).
This module fixes what it gets wrong for us (STYLE "Library pitfalls"):

* coroutines: the body runs inside ``with cb.calling():`` so its *awaited* outcome is
  what counts, never ``cb.call(coro_fn)`` (which would count an unawaited coroutine as
  a success);
* time: a storage whose ``opened_at`` follows the injected :class:`Clock`, so the reset
  timeout elapses when a test advances a :class:`FakeClock`;
* outcomes: cancellation, the caller's own faults and upstream 429s are *neutral*:
  neither a success (pybreaker's ``exclude`` would count them as one, closing a
  half-open breaker) nor a failure;
* half-open: at most ``half_open_max_probes`` concurrent trial calls (pybreaker lets
  every caller through).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import pybreaker
import structlog

from breakers.clock import Clock
from router.errors import CALLER_KINDS, SwitchmanError, UpstreamError

__all__ = ["BreakerOpenError", "BreakerStateName", "ProviderBreaker", "is_provider_failure"]

BreakerStateName = Literal["closed", "open", "half_open"]
TransitionCallback = Callable[[str, str, str], None]

_log = structlog.get_logger(__name__)

_NAMES: Final[dict[str, BreakerStateName]] = {
    pybreaker.STATE_CLOSED: "closed",
    pybreaker.STATE_OPEN: "open",
    pybreaker.STATE_HALF_OPEN: "half_open",
}
#: Upstream error kinds that say nothing about the provider's health.
_NEUTRAL_KINDS: Final[frozenset[str]] = CALLER_KINDS | {"rate_limited", "canceled"}


class BreakerOpenError(SwitchmanError):
    """Raised when a breaker refuses a call; ``reason`` is ``breaker_open`` or ``probe_busy``."""

    def __init__(self, provider: str, reason: str = "breaker_open") -> None:
        super().__init__(f"{provider}: circuit breaker refused the call ({reason})")
        self.provider = provider
        self.reason = reason


def is_provider_failure(exc: BaseException) -> bool:
    """Whether ``exc`` ending an attempt should be charged to the provider's breaker.

    Cancellation (and any other non-``Exception``), the caller's faults, upstream rate
    limiting (a cooldown handles it) and a ``canceled`` attempt are not the provider's
    failures; everything else (5xx, timeouts, connection errors, bad bodies) is.
    """
    if not isinstance(exc, Exception):
        return False
    return not (isinstance(exc, UpstreamError) and exc.kind in _NEUTRAL_KINDS)


class _ClockStorage(pybreaker.CircuitBreakerStorage):
    """In-memory breaker state whose ``opened_at`` moves with an injected clock.

    pybreaker compares ``datetime.now(UTC)`` with ``opened_at + reset_timeout``; we
    report ``opened_at`` as "now minus the elapsed time on our clock", so elapsed time
    is exactly the clock's. ``frozen`` turns counter writes into no-ops while a neutral
    outcome passes through pybreaker's success path.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__("clock-memory")
        self._clock = clock
        self._state = pybreaker.STATE_CLOSED
        self._fail_counter = 0
        self._success_counter = 0
        self._opened_mono: float | None = None
        self.frozen = False

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        self._state = state

    def increment_counter(self) -> None:
        if not self.frozen:
            self._fail_counter += 1

    def reset_counter(self) -> None:
        if not self.frozen:
            self._fail_counter = 0

    def increment_success_counter(self) -> None:
        if not self.frozen:
            self._success_counter += 1

    def reset_success_counter(self) -> None:
        if not self.frozen:
            self._success_counter = 0

    @property
    def counter(self) -> int:
        return self._fail_counter

    @property
    def success_counter(self) -> int:
        return self._success_counter

    def open_elapsed_s(self) -> float:
        """Seconds on the clock since the breaker last opened (0 if it never did)."""
        if self._opened_mono is None:
            return 0.0
        return self._clock.monotonic() - self._opened_mono

    @property
    def opened_at(self) -> datetime | None:
        if self._opened_mono is None:
            return None
        return datetime.now(UTC) - timedelta(seconds=self.open_elapsed_s())

    @opened_at.setter
    def opened_at(self, datetime: datetime) -> None:
        # The wall-clock value pybreaker passes is ignored: the injected clock is the truth.
        self._opened_mono = self._clock.monotonic()


class _TransitionListener(pybreaker.CircuitBreakerListener):
    """Turns pybreaker state changes into ``on_transition(provider, from, to)`` and a log event."""

    def __init__(self, provider: str, callback: TransitionCallback | None) -> None:
        self._provider = provider
        self._callback = callback

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = _NAMES[old_state.name] if old_state is not None else "closed"
        new = _NAMES[new_state.name]
        if old == new:  # pybreaker re-announces e.g. closed→closed when a late probe succeeds
            return
        event = {"open": "breaker.opened", "half_open": "breaker.half_opened"}.get(new)
        _log.info(event or "breaker.closed", provider=self._provider, from_state=old)
        if self._callback is not None:
            # Runs inside pybreaker's bookkeeping: a failing callback must not corrupt it.
            try:
                self._callback(self._provider, old, new)
            except Exception:
                _log.exception("breaker.transition_callback_failed", provider=self._provider)


class ProviderBreaker:
    """One provider's circuit breaker.

    Opens after ``fail_max`` consecutive provider failures, stays open for
    ``reset_timeout_s`` on ``clock``, then lets ``half_open_max_probes`` concurrent
    trial calls through: a successful probe closes it, a failed one reopens it with a
    fresh timeout. Use it as::

        async with breaker.calling():
            await adapter.submit(...)
    """

    __slots__ = (
        "_cb",
        "_forced_open",
        "_max_probes",
        "_probes",
        "_reset_timeout_s",
        "_storage",
        "name",
    )

    def __init__(
        self,
        name: str,
        *,
        fail_max: int,
        reset_timeout_s: float,
        half_open_max_probes: int = 1,
        clock: Clock,
        on_transition: TransitionCallback | None = None,
    ) -> None:
        if fail_max < 1 or half_open_max_probes < 1 or reset_timeout_s <= 0:
            raise ValueError("fail_max and half_open_max_probes must be >= 1, reset_timeout_s > 0")
        self.name = name
        self._reset_timeout_s = reset_timeout_s
        self._max_probes = half_open_max_probes
        self._probes = 0
        self._forced_open = False
        self._storage = _ClockStorage(clock)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            success_threshold=1,
            listeners=[_TransitionListener(name, on_transition)],
            state_storage=self._storage,
            name=name,
            # Re-raise the provider's own error on the tripping call, not CircuitBreakerError.
            throw_new_error_on_trip=False,
        )

    @property
    def state(self) -> BreakerStateName:
        """``closed``, ``open`` or ``half_open``; an open breaker whose timeout has elapsed
        on the clock reads as ``half_open`` (pybreaker itself moves on the next call)."""
        if self._forced_open:
            return "open"
        raw = self._storage.state
        if raw == pybreaker.STATE_OPEN:
            return (
                "half_open" if self._storage.open_elapsed_s() >= self._reset_timeout_s else "open"
            )
        return _NAMES.get(raw, "closed")

    @property
    def probe_available(self) -> bool:
        """Whether a call would be admitted now: always when closed, never when open,
        and in half-open while fewer than ``half_open_max_probes`` probes are in flight."""
        state = self.state
        if state == "half_open":
            return self._probes < self._max_probes
        return state == "closed"

    @property
    def probes_inflight(self) -> int:
        """Trial calls currently running in half-open."""
        return self._probes

    @property
    def failure_count(self) -> int:
        """Consecutive provider failures counted so far."""
        return self._cb.fail_counter

    @property
    def open_remaining_s(self) -> float:
        """Seconds until an open breaker turns half-open (0 unless open; inf if forced open)."""
        if self._forced_open:
            return float("inf")
        if self._storage.state != pybreaker.STATE_OPEN:
            return 0.0
        return max(0.0, self._reset_timeout_s - self._storage.open_elapsed_s())

    @property
    def forced_open(self) -> bool:
        """Whether an operator holds the breaker open."""
        return self._forced_open

    def rejection_reason(self) -> str | None:
        """``None`` if a call would be admitted now; else ``breaker_open`` or ``probe_busy``."""
        state = self.state
        if state == "open":
            return "breaker_open"
        if state == "half_open" and self._probes >= self._max_probes:
            return "probe_busy"
        return None

    def probe_early(self, min_open_s: float) -> bool:
        """Turn an open breaker half-open now, before its reset timeout; whether it did.

        For panic mode (every capable provider's breaker open, see the job engine): a
        request may carry one trial call so recovery is seen at the first success, not
        a whole reset timeout later. Refused unless the breaker is open (not held open by
        an operator) and has been for at least ``min_open_s``, which spaces the trials
        out: a failed trial reopens the breaker with a fresh timeout, as any probe does.
        """
        if self._forced_open or self._storage.state != pybreaker.STATE_OPEN:
            return False
        if self._storage.open_elapsed_s() < min_open_s or self._probes:
            return False
        self._cb.half_open()
        return True

    @property
    def reset_timeout_s(self) -> float:
        """How long the breaker stays open before its half-open probe."""
        return self._reset_timeout_s

    def force_open(self) -> None:
        """Open the breaker and hold it open (no half-open) until :meth:`force_closed`."""
        self._forced_open = True
        self._cb.open()

    def force_closed(self) -> None:
        """Close the breaker, clear its failure count and release an operator hold."""
        self._forced_open = False
        self._cb.close()

    @asynccontextmanager
    async def calling(self) -> AsyncIterator[None]:
        """Run the body as one call through the breaker.

        Raises :class:`BreakerOpenError` when not admitted. The body's exception is
        always re-raised unchanged; :func:`is_provider_failure` decides whether it counts.
        Admission is synchronous: nothing is awaited before the body starts.
        """
        reason = self.rejection_reason()
        if reason is not None:
            raise BreakerOpenError(self.name, reason)
        probe = self.state == "half_open"
        if probe:
            self._probes += 1
        try:
            # pybreaker holds its lock only while building the call, never across our await.
            cm = self._cb.calling()
            try:
                cm.__enter__()
            except pybreaker.CircuitBreakerError as exc:
                raise BreakerOpenError(self.name) from exc
            try:
                yield
            except BaseException as exc:
                if is_provider_failure(exc):
                    cm.__exit__(type(exc), exc, exc.__traceback__)
                    raise
                # Neutral: let pybreaker finish the call on its success path with counters frozen.
                self._storage.frozen = True
                try:
                    cm.__exit__(None, None, None)
                finally:
                    self._storage.frozen = False
                raise
            else:
                cm.__exit__(None, None, None)
        finally:
            if probe:
                self._probes -= 1

    def __repr__(self) -> str:
        return (
            f"ProviderBreaker({self.name!r}, state={self.state!r}, "
            f"failures={self.failure_count}, probes={self._probes}/{self._max_probes})"
        )
