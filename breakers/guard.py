"""Everything that must say yes before an attempt at one provider starts.

A :class:`ProviderGuard` combines the provider's breaker, token bucket, ``Retry-After``
cooldown and concurrency cap. Admission is atomic on the event loop: the checks and
the takes run with no ``await`` in between, so two tasks can never both take the last
token or slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from breakers.breaker import ProviderBreaker, TransitionCallback
from breakers.bucket import TokenBucket
from breakers.clock import Clock
from breakers.concurrency import ConcurrencyCap
from breakers.cooldown import Cooldown
from router.adapters.base import RateLimitHint
from router.config import ProviderConfig
from router.errors import SwitchmanError, UpstreamError

__all__ = ["GuardRejected", "Permit", "ProviderGuard"]

#: Cooldown applied when a provider answers 429 without a usable ``Retry-After``.
DEFAULT_COOLDOWN_S = 1.0


class GuardRejected(SwitchmanError):
    """Raised when a provider cannot take an attempt now.

    ``reason`` is one of ``breaker_open``, ``probe_busy``, ``cooling_down``,
    ``rate_limited``, ``at_capacity``.
    """

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"{provider}: attempt refused ({reason})")
        self.provider = provider
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Permit:
    """An admitted attempt."""

    provider: str
    #: Whether this attempt is a half-open breaker's trial call.
    probe: bool
    #: ``Clock.monotonic()`` at admission, for latency.
    started_at: float


class ProviderGuard:
    """Breaker + token bucket + cooldown + concurrency cap for one provider.

    Usage from the attempt loop::

        try:
            async with guard.attempt() as permit:
                result = await adapter.submit(request, ctx)
        except GuardRejected as exc:
            ...  # skip to the next candidate; exc.reason says why

    The body's exception is re-raised unchanged; the breaker counts it only if it is
    the provider's fault, and a ``rate_limited`` :class:`UpstreamError` starts a cooldown.
    """

    __slots__ = (
        "_clock",
        "breaker",
        "bucket",
        "concurrency",
        "cooldown",
        "default_cooldown_s",
        "name",
    )

    def __init__(
        self,
        config: ProviderConfig,
        clock: Clock,
        on_transition: TransitionCallback | None = None,
        *,
        default_cooldown_s: float = DEFAULT_COOLDOWN_S,
    ) -> None:
        self.name = config.name
        self._clock = clock
        self.default_cooldown_s = default_cooldown_s
        self.breaker = ProviderBreaker(
            config.name,
            fail_max=config.breaker.fail_max,
            reset_timeout_s=config.breaker.reset_timeout_s,
            half_open_max_probes=config.breaker.half_open_max_probes,
            clock=clock,
            on_transition=on_transition,
        )
        self.bucket = TokenBucket.from_config(config.rate_limit, clock)
        self.cooldown = Cooldown(clock)
        self.concurrency = ConcurrencyCap(config.rate_limit.max_concurrency)

    def admission_reason(self) -> str | None:
        """``None`` if an attempt may start now; otherwise the first reason it may not."""
        reason = self.breaker.rejection_reason()
        if reason is not None:
            return reason
        if self.cooldown.active:
            return "cooling_down"
        if self.bucket.available < 1.0:
            return "rate_limited"
        if self.concurrency.full:
            return "at_capacity"
        return None

    def observe_rate_limit(self, hint: RateLimitHint) -> None:
        """Feed an upstream response's rate-limit headers to the bucket."""
        self.bucket.observe_upstream(hint.remaining, hint.limit, hint.reset_s)

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[Permit]:
        """Admit one attempt (or raise :class:`GuardRejected`) and account for its outcome."""
        # From here to the breaker's admission nothing awaits, so the check and the
        # takes are one step on the event loop.
        reason = self.admission_reason()
        if reason is not None:
            raise GuardRejected(self.name, reason)
        probe = self.breaker.state == "half_open"
        if not self.bucket.try_acquire():  # pragma: no cover - checked just above
            raise GuardRejected(self.name, "rate_limited")
        if not self.concurrency.try_enter():  # pragma: no cover - checked just above
            raise GuardRejected(self.name, "at_capacity")
        try:
            async with self.breaker.calling():  # admits synchronously: checked above
                try:
                    yield Permit(self.name, probe, self._clock.monotonic())
                except UpstreamError as exc:
                    if exc.kind == "rate_limited":
                        self.cooldown.set_from_retry_after(
                            exc.retry_after_s, self.default_cooldown_s
                        )
                    raise
        finally:
            self.concurrency.leave()

    def __repr__(self) -> str:
        return (
            f"ProviderGuard({self.name!r}, breaker={self.breaker.state!r}, "
            f"tokens={self.bucket.available:.2f}, inflight={self.concurrency.inflight}, "
            f"cooldown_s={self.cooldown.remaining_s:.2f})"
        )
