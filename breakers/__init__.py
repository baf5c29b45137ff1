"""Per-provider guards: circuit breakers, token buckets, cooldowns, concurrency caps,
and the service-wide retry budget. Everything time-dependent reads an injected clock."""

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
from breakers.guard import GuardRejected, Permit, ProviderGuard
from breakers.retry_budget import RetryBudget

__all__ = [
    "MAX_COOLDOWN_S",
    "BreakerOpenError",
    "BreakerStateName",
    "Clock",
    "ConcurrencyCap",
    "Cooldown",
    "FakeClock",
    "GuardRejected",
    "Permit",
    "ProviderBreaker",
    "ProviderGuard",
    "RetryBudget",
    "SystemClock",
    "TokenBucket",
    "is_provider_failure",
    "parse_retry_after",
]
