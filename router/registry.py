"""The live providers: config, adapter, guard, stats and operator flags for each.

The registry is the only place that turns mutable runtime state into the
immutable :class:`~strategies.snapshot.Snapshot` the strategy ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from breakers import ProviderGuard, RedisState
from breakers.clock import Clock
from router.adapters.base import Adapter
from router.config import ProviderConfig
from router.health import ProviderStats
from strategies.snapshot import Capabilities, Cost, ProviderSnapshot, Snapshot

__all__ = ["ProviderRegistry", "ProviderRuntime"]

#: How fast old outcomes fade from a provider's success ratio. Short enough that a
#: recovered provider wins its traffic back within tens of seconds (chaos bench).
_HEALTH_HALF_LIFE_S = 10.0


@dataclass(slots=True)
class ProviderRuntime:
    """One provider's live state."""

    config: ProviderConfig
    adapter: Adapter
    guard: ProviderGuard
    stats: ProviderStats
    capabilities: Capabilities
    cost: Cost
    healthy: bool = True
    last_score: float | None = None
    last_components: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    # The drain flag lives in the guard, so a drain reaches every replica when
    # state is shared (``storage.redis_url``).
    @property
    def drained(self) -> bool:
        """Whether an operator took the provider out of rotation."""
        return self.guard.drained

    @drained.setter
    def drained(self, value: bool) -> None:
        self.guard.set_drained(value, self.guard.drain_reason if value else None)

    @property
    def drain_reason(self) -> str | None:
        """The operator's reason for the drain."""
        return self.guard.drain_reason

    @drain_reason.setter
    def drain_reason(self, value: str | None) -> None:
        self.guard.set_drained(self.guard.drained, value)

    def snapshot(self) -> ProviderSnapshot:
        """This provider's state right now, resolved into plain values."""
        guard = self.guard
        breaker = guard.breaker
        state = breaker.state
        kinds = self.capabilities.kinds
        return ProviderSnapshot(
            name=self.config.name,
            capabilities=self.capabilities,
            cost=self.cost,
            breaker=state,
            probe_available=breaker.probe_available if state == "half_open" else True,
            drained=self.drained,
            success_ratio=self.stats.success_ratio,
            failure_streak=self.stats.failure_streak,
            healthy=self.healthy,
            latency_ewma_s={k: v for k in kinds if (v := self.stats.latency_ewma(k)) is not None},
            latency_tail_s={k: v for k in kinds if (v := self.stats.latency_tail(k)) is not None},
            outstanding_s={
                k: v for k in kinds if (v := self.stats.oldest_outstanding_s(k)) is not None
            },
            inflight=guard.concurrency.inflight,
            max_concurrency=guard.concurrency.max,
            tokens_available=guard.bucket.available,
            tokens_capacity=guard.bucket.capacity,
            cooldown_remaining_s=guard.cooldown.remaining_s,
            priority=self.config.priority,
            weight=self.config.weight,
        )

    def describe(self) -> dict[str, Any]:
        """The ``GET /v1/providers`` view (DESIGN §3)."""
        guard = self.guard
        cooldown = guard.cooldown.remaining_s
        kinds = sorted(self.capabilities.kinds)
        latency = {k: v for k in kinds if (v := self.stats.latency_ewma(k)) is not None}
        return {
            "name": self.config.name,
            "adapter": self.config.adapter,
            "kinds": kinds,
            "breaker": guard.breaker.state,
            "drained": self.drained,
            "drain_reason": self.drain_reason,
            "healthy": self.healthy,
            "rate_limit": {
                "capacity": guard.bucket.capacity,
                "available": round(guard.bucket.available, 3),
                "cooldown_until": guard.cooldown.until_unix if cooldown > 0 else None,
            },
            "inflight": guard.concurrency.inflight,
            "max_concurrency": guard.concurrency.max,
            "latency_ewma_s": latency,
            "success_ratio": round(self.stats.success_ratio, 4),
            "failure_streak": round(self.stats.failure_streak, 3),
            "cost": {
                "per_image_usd": self.cost.per_image_usd,
                "per_video_s_usd": self.cost.per_video_s_usd,
            },
            "priority": self.config.priority,
            "weight": self.config.weight,
            "score": {"value": self.last_score, "components": self.last_components},
        }


def _capabilities(config: ProviderConfig) -> Capabilities:
    caps = config.capabilities
    return Capabilities(
        kinds=frozenset(config.kinds),
        max_width=caps.max_width,
        max_height=caps.max_height,
        max_duration_s=caps.max_duration_s,
        aspect_ratios=frozenset(caps.aspect_ratios) if caps.aspect_ratios else None,
        max_n=caps.max_n,
    )


class ProviderRegistry:
    """Every configured provider, in configuration order."""

    __slots__ = ("_by_name", "_order")

    def __init__(
        self,
        configs: list[ProviderConfig],
        *,
        clock: Clock,
        build_adapter: Callable[[ProviderConfig], Adapter],
        on_transition: Callable[[str, str, str], None] | None = None,
        reuse: Mapping[str, ProviderRuntime] | None = None,
        shared: RedisState | None = None,
    ) -> None:
        """``reuse`` (a config reload) carries over runtimes whose config is unchanged,
        so their breaker, limits and learned stats survive."""
        self._by_name: dict[str, ProviderRuntime] = {}
        for cfg in configs:
            kept = reuse.get(cfg.name) if reuse is not None else None
            if kept is not None and kept.config == cfg:
                self._by_name[cfg.name] = kept
                continue
            self._by_name[cfg.name] = ProviderRuntime(
                config=cfg,
                adapter=build_adapter(cfg),
                guard=ProviderGuard(
                    cfg,
                    clock=clock,
                    on_transition=on_transition,
                    shared=shared.provider(cfg) if shared is not None else None,
                ),
                stats=ProviderStats(clock, half_life_s=_HEALTH_HALF_LIFE_S),
                capabilities=_capabilities(cfg),
                cost=Cost(cfg.cost.per_image_usd, cfg.cost.per_video_s_usd),
            )
        self._order = tuple(self._by_name.values())

    def __iter__(self) -> Iterator[ProviderRuntime]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def get(self, name: str) -> ProviderRuntime | None:
        return self._by_name.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def snapshot(self) -> Snapshot:
        """Every provider's state, for one routing decision."""
        return Snapshot(tuple(rt.snapshot() for rt in self._order))
