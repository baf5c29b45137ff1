"""Wiring: builds every part of a running Switchman from a :class:`Config`.

The :class:`Service` owns the resources with a lifetime (store, HTTP client,
sandbox emulators, job tasks) and starts and stops them in order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import structlog
from httpx_aiohttp import AiohttpTransport
from opentelemetry.trace import Tracer

from breakers import RetryBudget
from breakers.clock import Clock, SystemClock
from metrics import Metrics
from metrics.tracing import setup_tracing
from router.adapters.registry import build_adapter
from router.auth import Authenticator
from router.config import Config, ProviderConfig
from router.engine import JobEngine
from router.registry import ProviderRegistry
from router.replay import ReplayGuard
from router.sandbox import Emulator, build_emulator
from router.store import JobStore, open_store
from strategies import ProviderStrategy
from strategies.snapshot import Weights

__all__ = ["Service"]

_log = structlog.get_logger("switchman.service")
_BREAKER_LEVEL = {"closed": 0, "half_open": 1, "open": 2}


@dataclass
class Service:
    """A running Switchman: everything the HTTP layer needs."""

    config: Config
    clock: Clock = field(default_factory=SystemClock)
    metrics: Metrics = field(default_factory=Metrics)
    tracer: Tracer | None = None
    rng: random.Random = field(default_factory=random.Random)
    store: JobStore | None = None
    engine: JobEngine | None = None
    registry: ProviderRegistry | None = None
    auth: Authenticator | None = None
    client: httpx.AsyncClient | None = None
    emulators: dict[str, Emulator] = field(default_factory=dict)
    ready: bool = False
    webhook_replay: ReplayGuard = field(init=False)

    def __post_init__(self) -> None:
        self.webhook_replay = ReplayGuard(self.clock)

    async def start(self) -> None:
        """Start emulators, the store, the HTTP client, the registry and the engine."""
        config = self.config
        providers = await self._start_sandbox(config)
        self.store = open_store(config.storage.database_url)
        await self.store.start()
        self.client = httpx.AsyncClient(
            transport=AiohttpTransport(
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
                trust_env=False,
            ),
            trust_env=False,
            follow_redirects=False,
        )
        if self.tracer is None:
            self.tracer = setup_tracing("switchman")
        self.registry = ProviderRegistry(
            providers,
            clock=self.clock,
            build_adapter=build_adapter,
            on_transition=self._on_breaker_transition,
        )
        self.metrics.declare_providers(self.registry.names)
        weights = config.routing.weights
        strategy = ProviderStrategy(
            default_policy=config.routing.strategy,
            weights=Weights(weights.health, weights.latency, weights.cost, weights.load),
            near_tie=config.routing.near_tie,
        )
        budget = config.routing.retry_budget
        self.engine = JobEngine(
            config=config,
            registry=self.registry,
            store=self.store,
            strategy=strategy,
            retry_budget=RetryBudget(budget.ratio, budget.min_per_s, self.clock),
            metrics=self.metrics,
            clock=self.clock,
            client=self.client,
            rng=self.rng,
            tracer=self.tracer,
            webhook_base_url=config.server.public_url,
        )
        self.auth = Authenticator(config.tenants)
        self.ready = True
        _log.info("service.started", providers=list(self.registry.names))

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop in reverse order; in-flight jobs stay resumable in the store."""
        self.ready = False
        if self.engine is not None:
            await self.engine.close(grace_s)
        if self.client is not None:
            await self.client.aclose()
        if self.store is not None:
            await self.store.close()
        for emulator in self.emulators.values():
            await emulator.stop()
        self.emulators.clear()

    async def _start_sandbox(self, config: Config) -> list[ProviderConfig]:
        """Start configured emulators and point ``sandbox:NAME`` providers at them."""
        if config.sandbox is None:
            return list(config.providers)
        for emu in config.sandbox.emulators:
            emulator = build_emulator(emu.adapter, emu.faults)
            await emulator.start(config.sandbox.host, emu.port)
            self.emulators[emu.name] = emulator
        resolved = []
        for p in config.providers:
            if p.base_url.startswith("sandbox:"):
                emulator = self.emulators[p.base_url.removeprefix("sandbox:")]
                p = msgspec.structs.replace(p, base_url=emulator.base_url)
            resolved.append(p)
        return resolved

    def _on_breaker_transition(self, provider: str, old: str, new: str) -> None:
        if self.engine is not None:
            self.engine.breaker_changed()
        self.metrics.set_breaker_state(provider, new)
        self.metrics.breaker_transition(provider, new)
        log = _log.warning if new == "open" else _log.info
        log(f"breaker.{'opened' if new == 'open' else new}", provider=provider, previous=old)

    def refresh_gauges(self) -> None:
        """Update the per-provider gauges; called when /metrics is scraped."""
        if self.registry is None:
            return
        for rt in self.registry:
            guard = rt.guard
            self.metrics.set_breaker_state(rt.name, guard.breaker.state)
            self.metrics.provider_gauges(
                rt.name,
                available=guard.bucket.available,
                inflight=guard.concurrency.inflight,
                score=rt.last_score if rt.last_score is not None else 0.0,
                drained=rt.drained,
            )
            for kind in rt.capabilities.kinds:
                ewma = rt.stats.latency_ewma(kind)
                if ewma is not None:
                    self.metrics.set_latency_ewma(rt.name, kind, ewma)

    def readiness(self) -> dict[str, Any]:
        """What ``/readyz`` reports."""
        routable = 0
        if self.registry is not None:
            routable = sum(
                1 for rt in self.registry if not rt.drained and rt.guard.breaker.state != "open"
            )
        return {"config": True, "store": self.store is not None, "routable_providers": routable}
