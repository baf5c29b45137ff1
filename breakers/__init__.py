"""Per-provider guards: circuit breakers, token buckets, cooldowns, concurrency caps,
and the service-wide retry budget. Everything time-dependent reads an injected clock.

With ``storage.redis_url`` set, :class:`RedisState` shares breakers, buckets,
cooldowns, drains and idempotency locks across replicas (see :mod:`breakers.redis_state`).
"""

from breakers.breaker import (
    BreakerOpenError,
    BreakerStateName,
    ProviderBreaker,
    is_provider_failure,
)
from breakers.bucket import TokenBucket
from breakers.clock import Clock, FakeClock, SystemClock
from breakers.concurrency import ConcurrencyCap
from breakers.cooldown import MAX_COOLDOWN_S, Cooldown, parse_retry_after
from breakers.gcra import gcra_admit, gcra_available
from breakers.guard import GuardRejected, Permit, ProviderGuard
from breakers.redis_state import (
    Admission,
    IdempotencyLockBusy,
    ProviderView,
    RedisState,
    SharedProvider,
    SharedStateUnavailable,
)
from breakers.retry_budget import RetryBudget
from breakers.shared import SharedBreaker, SharedBucket, SharedCooldown

__all__ = [
    "MAX_COOLDOWN_S",
    "Admission",
    "BreakerOpenError",
    "BreakerStateName",
    "Clock",
    "ConcurrencyCap",
    "Cooldown",
    "FakeClock",
    "GuardRejected",
    "IdempotencyLockBusy",
    "Permit",
    "ProviderBreaker",
    "ProviderGuard",
    "ProviderView",
    "RedisState",
    "RetryBudget",
    "SharedBreaker",
    "SharedBucket",
    "SharedCooldown",
    "SharedProvider",
    "SharedStateUnavailable",
    "SystemClock",
    "TokenBucket",
    "gcra_admit",
    "gcra_available",
    "is_provider_failure",
    "parse_retry_after",
]
