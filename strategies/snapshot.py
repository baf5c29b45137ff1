"""The immutable inputs and outputs of a routing decision.

A :class:`Snapshot` is a frozen picture of every provider's state, taken by the
router; the strategy reads only this, so it stays pure and property-testable.
Anything time-dependent (cooldowns, breaker timeouts) is resolved into plain
values before the snapshot is handed over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "BreakerState",
    "Capabilities",
    "Cost",
    "Exclusion",
    "Policy",
    "ProviderSnapshot",
    "Ranking",
    "RouteRequest",
    "ScoredCandidate",
    "Snapshot",
    "Weights",
]

BreakerState = Literal["closed", "open", "half_open"]
Policy = Literal["balanced", "cheapest", "fastest", "priority", "weighted"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider can produce. ``None`` means no limit declared."""

    kinds: frozenset[str]
    max_width: int | None = None
    max_height: int | None = None
    max_duration_s: float | None = None
    aspect_ratios: frozenset[str] | None = None
    max_n: int | None = None


@dataclass(frozen=True, slots=True)
class Cost:
    """A provider's price in its own units."""

    per_image_usd: float = 0.0
    per_video_s_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Weights:
    """Weights of the ``balanced`` policy's components (DESIGN §4 ``routing.weights``)."""

    health: float = 0.35
    latency: float = 0.25
    cost: float = 0.25
    load: float = 0.15


@dataclass(frozen=True, slots=True)
class ProviderSnapshot:
    """One provider's state at the moment of a decision."""

    name: str
    capabilities: Capabilities
    cost: Cost = Cost()
    breaker: BreakerState = "closed"
    #: Whether a half-open breaker has a free probe slot right now.
    probe_available: bool = True
    drained: bool = False
    #: Success ratio over the decaying window, 0..1 (1.0 with no data).
    success_ratio: float = 1.0
    #: Provider failures since its last success, decayed over seconds (0 after a success).
    failure_streak: float = 0.0
    #: Result of the latest active probe; ``False`` means the provider is known unhealthy.
    healthy: bool = True
    #: Latency estimates per kind (EWMA and a tail estimate), seconds.
    latency_ewma_s: Mapping[str, float] = field(default_factory=dict)
    latency_tail_s: Mapping[str, float] = field(default_factory=dict)
    #: Per kind, how long the oldest attempt still in flight has been running, seconds.
    outstanding_s: Mapping[str, float] = field(default_factory=dict)
    inflight: int = 0
    max_concurrency: int | None = None
    #: Token-bucket level and capacity (level already lowered by upstream headers).
    tokens_available: float = 1.0
    tokens_capacity: float = 1.0
    #: Seconds left of an upstream ``Retry-After`` cooldown; 0 when none.
    cooldown_remaining_s: float = 0.0
    priority: int = 100
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every provider's state, in configuration order."""

    providers: tuple[ProviderSnapshot, ...]


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """The parts of a generation request that routing looks at."""

    kind: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    aspect_ratio: str | None = None
    n: int = 1
    policy: Policy | None = None
    #: Allow list in preference order; ``None`` allows all.
    allow: tuple[str, ...] | None = None
    exclude: frozenset[str] = frozenset()
    max_cost_usd: float | None = None
    #: Seconds left before the caller's deadline; ``None`` means no deadline.
    remaining_s: float | None = None


@dataclass(frozen=True, slots=True)
class ScoredCandidate:
    """A routable provider with its score and the parts it is made of."""

    name: str
    score: float
    components: Mapping[str, float]
    expected_cost_usd: float
    expected_latency_s: float | None
    #: True when the provider's breaker is half-open and this attempt is its probe.
    probe: bool = False


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A provider left out of a decision, and why (``breaker_open``, ``drained``, …)."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ranking:
    """The outcome of a decision: candidates best first, and who was left out."""

    policy: Policy
    candidates: tuple[ScoredCandidate, ...]
    excluded: tuple[Exclusion, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.candidates)
