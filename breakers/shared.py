"""Breaker, bucket and cooldown that read shared state while Redis is reachable.

Each is a subclass of its local counterpart, so the engine, the registry and the
admin API see one interface whether state is shared or not. While the shared state is
online they answer from the replica's :class:`~breakers.redis_state.ProviderView`
(no Redis call on a read); offline they *are* the local object: the pybreaker-based
breaker, a bucket holding ``limit / replicas_hint`` (this replica's share of the
provider's limit) and an in-process cooldown.

The local fallbacks are not fed while shared state is online: when Redis goes away a
replica starts from a clean local breaker and a full local share, which is at most
``limit / replicas`` extra requests across the fleet, and tripping again takes
``fail_max`` local failures.
"""

from __future__ import annotations

from breakers.breaker import BreakerStateName, ProviderBreaker, TransitionCallback
from breakers.bucket import TokenBucket
from breakers.clock import Clock
from breakers.cooldown import MAX_COOLDOWN_S, Cooldown
from breakers.redis_state import SharedProvider

__all__ = ["SharedBreaker", "SharedBucket", "SharedCooldown"]


class SharedBreaker(ProviderBreaker):
    """A provider breaker shared by every replica, with the local breaker as fallback.

    Admission in shared mode happens in :meth:`ProviderGuard.attempt` (one ``ADMIT``
    script also takes the probe slot); :meth:`calling` stays the local breaker's.
    """

    __slots__ = ("_on_shared_transition", "_shared_clock", "shared")

    def __init__(
        self,
        name: str,
        *,
        shared: SharedProvider,
        fail_max: int,
        reset_timeout_s: float,
        half_open_max_probes: int = 1,
        clock: Clock,
        on_transition: TransitionCallback | None = None,
    ) -> None:
        super().__init__(
            name,
            fail_max=fail_max,
            reset_timeout_s=reset_timeout_s,
            half_open_max_probes=half_open_max_probes,
            clock=clock,
            on_transition=on_transition,
        )
        self.shared = shared
        self._shared_clock = clock
        self._on_shared_transition = on_transition
        shared.on_change = self._shared_changed

    def _shared_changed(self, old: str, new: str) -> None:
        # Transitions made on any replica reach this replica's metrics and waiters.
        if self._on_shared_transition is not None and self.shared.online:
            self._on_shared_transition(self.name, old, new)

    @property
    def state(self) -> BreakerStateName:
        if not self.shared.online:
            return super().state
        state = self.shared.breaker_state()
        return "open" if state == "open" else "half_open" if state == "half_open" else "closed"

    @property
    def probe_available(self) -> bool:
        if not self.shared.online:
            return super().probe_available
        state = self.state
        if state == "half_open":
            return self.shared.view.probes < self._max_probes
        return state == "closed"

    @property
    def failure_count(self) -> int:
        return self.shared.view.failures if self.shared.online else super().failure_count

    @property
    def open_remaining_s(self) -> float:
        if not self.shared.online:
            return super().open_remaining_s
        view = self.shared.view
        if view.stored == "forced_open":
            return float("inf")
        if view.stored != "open":
            return 0.0
        return max(0.0, view.open_until - self._shared_clock.monotonic())

    @property
    def forced_open(self) -> bool:
        if not self.shared.online:
            return super().forced_open
        return self.shared.view.stored == "forced_open"

    def rejection_reason(self) -> str | None:
        if not self.shared.online:
            return super().rejection_reason()
        state = self.state
        if state == "open":
            return "breaker_open"
        if state == "half_open" and self.shared.view.probes >= self._max_probes:
            return "probe_busy"
        return None

    def probe_early(self, min_open_s: float) -> bool:
        """Panic-mode early probes are local only: with shared state the breaker's
        timeout is the fleet's, and one replica must not cut it short for all."""
        if self.shared.online:
            return False
        return super().probe_early(min_open_s)

    def force_open(self) -> None:
        """Hold the breaker open on every replica (and locally, for an outage)."""
        super().force_open()
        self.shared.force(True)

    def force_closed(self) -> None:
        """Close the breaker on every replica (and locally)."""
        super().force_closed()
        self.shared.force(False)


class SharedBucket(TokenBucket):
    """The provider's one shared GCRA bucket; offline, this replica's local share of it.

    The shared bucket is taken by ``ADMIT`` in :meth:`ProviderGuard.attempt`;
    :attr:`available` here is the view's estimate, for ranking. Upstream hints clamp
    it per replica, as they do locally.
    """

    __slots__ = ("shared", "shared_requests")

    def __init__(
        self, requests: float, per_s: float, *, clock: Clock, shared: SharedProvider, replicas: int
    ) -> None:
        super().__init__(requests / max(1, replicas), per_s, clock=clock)
        self.shared = shared
        self.shared_requests = requests

    @property
    def capacity(self) -> float:
        return float(self.shared_requests) if self.shared.online else super().capacity

    @property
    def refill_per_s(self) -> float:
        if self.shared.online:
            return self.shared_requests / self.per_s
        return super().refill_per_s

    @property
    def available(self) -> float:
        if not self.shared.online:
            return super().available
        own = self.shared.tokens_available()
        clamp = self._upstream_clamp()
        return own if clamp is None else min(own, clamp)

    @property
    def wait_s(self) -> float:
        if not self.shared.online:
            return super().wait_s
        return max(0.0, (1.0 - self.available) / self.refill_per_s)

    def __repr__(self) -> str:
        mode = "shared" if self.shared.online else "local share"
        return f"SharedBucket(requests={self.shared_requests!r}, per_s={self.per_s!r}, {mode})"


class SharedCooldown(Cooldown):
    """A ``Retry-After`` cooldown every replica honours (and this one at once)."""

    __slots__ = ("shared",)

    def __init__(
        self, clock: Clock, *, shared: SharedProvider, max_s: float = MAX_COOLDOWN_S
    ) -> None:
        super().__init__(clock, max_s=max_s)
        self.shared = shared

    def set_for(self, seconds: float) -> float:
        applied = super().set_for(seconds)
        if self.shared.online and applied > 0:
            self.shared.cooldown(applied)
        return applied

    def clear(self) -> None:
        super().clear()
        if self.shared.online:
            self.shared.cooldown(None)

    @property
    def remaining_s(self) -> float:
        # The local part is always set too, so a cooldown learned during an outage holds.
        return max(super().remaining_s, self.shared.cooldown_remaining_s())
