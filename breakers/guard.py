"""Everything that must say yes before an attempt at one provider starts.

A :class:`ProviderGuard` combines the provider's breaker, token bucket, ``Retry-After``
cooldown and concurrency cap. Admission is atomic on the event loop: the checks and
the takes run with no ``await`` in between, so two tasks can never both take the last
token or slot.

With a :class:`~breakers.redis_state.SharedProvider` (``storage.redis_url`` set) the
breaker, bucket, cooldown and drain flag are shared by every replica: reads come from
the replica's local view, and admission is one atomic Redis script, so the last token
or probe slot is never taken twice across replicas either. The concurrency cap stays
per replica. When Redis is unreachable the same guard falls back to its local parts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from breakers.breaker import ProviderBreaker, TransitionCallback, is_provider_failure
from breakers.bucket import TokenBucket
from breakers.clock import Clock
from breakers.concurrency import ConcurrencyCap
from breakers.cooldown import Cooldown
from breakers.redis_state import Admission, SharedProvider, SharedStateUnavailable
from breakers.shared import SharedBreaker, SharedBucket, SharedCooldown
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
        "_drain_reason",
        "_drained",
        "breaker",
        "bucket",
        "concurrency",
        "cooldown",
        "default_cooldown_s",
        "name",
        "shared",
    )

    def __init__(
        self,
        config: ProviderConfig,
        clock: Clock,
        on_transition: TransitionCallback | None = None,
        *,
        default_cooldown_s: float = DEFAULT_COOLDOWN_S,
        shared: SharedProvider | None = None,
    ) -> None:
        self.name = config.name
        self._clock = clock
        self.default_cooldown_s = default_cooldown_s
        self.shared = shared
        self._drained = False
        self._drain_reason: str | None = None
        self.concurrency = ConcurrencyCap(config.rate_limit.max_concurrency)
        if shared is None:
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
            return
        self.breaker = SharedBreaker(
            config.name,
            shared=shared,
            fail_max=config.breaker.fail_max,
            reset_timeout_s=config.breaker.reset_timeout_s,
            half_open_max_probes=config.breaker.half_open_max_probes,
            clock=clock,
            on_transition=on_transition,
        )
        rl = config.rate_limit
        self.bucket = SharedBucket(
            rl.requests, rl.per_s, clock=clock, shared=shared, replicas=shared.replicas_hint
        )
        self.cooldown = SharedCooldown(clock, shared=shared)

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

    @property
    def drained(self) -> bool:
        """Whether an operator drained the provider (on any replica, when state is shared)."""
        return self.shared.view.drained if self.shared is not None else self._drained

    @property
    def drain_reason(self) -> str | None:
        """The operator's reason for the drain."""
        return self.shared.view.drain_reason if self.shared is not None else self._drain_reason

    def set_drained(self, drained: bool, reason: str | None = None) -> None:
        """Drain (or undrain) the provider; shared state carries it to every replica."""
        self._drained, self._drain_reason = drained, reason if drained else None
        if self.shared is not None:
            self.shared.drain(drained, self._drain_reason)

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[Permit]:
        """Admit one attempt (or raise :class:`GuardRejected`) and account for its outcome.

        With shared state online, admission costs one Redis round trip (the ``ADMIT``
        script: breaker, cooldown, probe slot and a token, atomically across replicas)
        and outcomes are recorded in the background. If Redis fails on the way, the
        attempt is admitted by the local guard instead.
        """
        shared = self.shared
        if shared is not None and shared.online:
            admission = await self._admit_shared(shared)
            if admission is not None:
                try:
                    async with self._shared_outcome(shared, admission) as permit:
                        yield permit
                finally:
                    self.concurrency.leave()
                return
        async with self._local_attempt() as permit:
            yield permit

    async def _admit_shared(self, shared: SharedProvider) -> Admission | None:
        """Admit through Redis; ``None`` means Redis failed and the local guard decides.
        On success the caller holds a concurrency slot."""
        reason = self.admission_reason()
        if reason is not None:
            raise GuardRejected(self.name, reason)
        if not self.concurrency.try_enter():  # taken before awaiting: no race for the slot
            raise GuardRejected(self.name, "at_capacity")
        try:
            admission = await shared.admit()
        except SharedStateUnavailable:
            self.concurrency.leave()
            return None
        except BaseException:
            self.concurrency.leave()
            raise
        if not admission.admitted:
            self.concurrency.leave()
            raise GuardRejected(self.name, admission.reason or "rate_limited")
        return admission

    @asynccontextmanager
    async def _shared_outcome(
        self, shared: SharedProvider, admission: Admission
    ) -> AsyncIterator[Permit]:
        probe_id = admission.probe_id
        try:
            yield Permit(self.name, probe_id is not None, self._clock.monotonic())
        except BaseException as exc:
            if isinstance(exc, UpstreamError) and exc.kind == "rate_limited":
                self.cooldown.set_from_retry_after(exc.retry_after_s, self.default_cooldown_s)
            if is_provider_failure(exc):
                shared.report_failure(probe_id)
            else:
                shared.report_neutral(probe_id)
            raise
        shared.report_success(probe_id)

    @asynccontextmanager
    async def _local_attempt(self) -> AsyncIterator[Permit]:
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
