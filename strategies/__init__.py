"""Pure provider scoring: a request and a snapshot in, a ranking out (DESIGN §2)."""

from strategies.eligibility import (
    DEFAULT_VIDEO_DURATION_S,
    exclusion_reason,
    expected_cost_usd,
    latency_estimate_s,
)
from strategies.snapshot import (
    BreakerState,
    Capabilities,
    Cost,
    Exclusion,
    Policy,
    ProviderSnapshot,
    Ranking,
    RouteRequest,
    ScoredCandidate,
    Snapshot,
    Weights,
)
from strategies.strategy import ProviderStrategy

__all__ = [
    "DEFAULT_VIDEO_DURATION_S",
    "BreakerState",
    "Capabilities",
    "Cost",
    "Exclusion",
    "Policy",
    "ProviderSnapshot",
    "ProviderStrategy",
    "Ranking",
    "RouteRequest",
    "ScoredCandidate",
    "Snapshot",
    "Weights",
    "exclusion_reason",
    "expected_cost_usd",
    "latency_estimate_s",
]
