"""Wiring: builds every part of a running Switchman from a :class:`Config`.

The :class:`Service` owns the resources with a lifetime (store, HTTP client,
sandbox emulators, job tasks) and starts and stops them in order.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import structlog
from opentelemetry.trace import Tracer

from breakers import RedisState, RetryBudget
from breakers.clock import Clock, SystemClock
from metrics import Metrics
from metrics.tracing import setup_tracing
from router import tenants, webhook_relay
from router.adapters.base import Adapter
from router.adapters.registry import build_adapter
from router.assets import AssetStore
from router.auth import Authenticator
from router.callbacks import CallbackSender
from router.config import Config, ProviderConfig, load_config
from router.engine import JobEngine
from router.errors import ConfigError
from router.http_client import new_client
from router.idempotency import IdempotencyKeys
from router.registry import ProviderRegistry
from router.replay import ReplayGuard
from router.sandbox import Emulator, build_emulator
from router.store import JobStore, open_store
from strategies import ProviderStrategy
from strategies.snapshot import Weights

__all__ = ["ReloadResult", "Service"]

_log = structlog.get_logger("switchman.service")
_BREAKER_LEVEL = {"closed": 0, "half_open": 1, "open": 2}
#: Server settings a reload applies live; every other server setting needs a restart.
_LIVE_SERVER_FIELDS = frozenset({"public_url", "ui_enabled"})


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a config reload changed, for the admin API and the audit log."""

    providers: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    #: Config sections that differ but only take effect after a restart.
    restart_required: tuple[str, ...]


def new_replica_id() -> str:
    """This process's name as a job owner: host, pid and a random part (a restarted
    container may reuse both host and pid, and must not inherit its predecessor's
    leases while they run)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"


def dead_predecessors(owners: Sequence[str], me: str) -> list[str]:
    """The ``owners`` that were processes on this host and no longer run.

    Their jobs can be taken at once instead of after their leases expire, which makes a
    restarted replica (a crash, a container restart) resume its jobs immediately. An
    owner on this host with this process's pid is dead (one pid, one live process); a
    pid that was reused by another process reads as alive, which only delays the
    takeover. Replicas must not share a hostname (each Kubernetes pod has its own); if
    they do, the worst case is a needless takeover: updates are fenced by the store, so
    a job is still never submitted twice.
    """
    host = me.rsplit(":", 2)[0]
    dead = []
    for owner in owners:
        parts = owner.rsplit(":", 2)
        if owner == me or len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or not _pid_alive(pid):
            dead.append(owner)
    return dead


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _restart_required(old: Config, new: Config) -> list[str]:
    fields: list[str] = []
    for name in old.server.__struct_fields__:
        if name not in _LIVE_SERVER_FIELDS and getattr(old.server, name) != getattr(
            new.server, name
        ):
            fields.append(f"server.{name}")
    if old.storage != new.storage:
        fields.append("storage")
    if old.sandbox is not None and new.sandbox is not None:
        before = {e.name: e for e in old.sandbox.emulators}
        if any(e.name in before and before[e.name] != e for e in new.sandbox.emulators):
            fields.append("sandbox.emulators")
    return fields


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
    #: Shared breakers, buckets, cooldowns, drains and idempotency locks
    #: (``storage.redis_url``); ``None`` keeps all of them in process.
    shared_state: RedisState | None = None
    ready: bool = False
    #: The file ``config`` came from; ``POST /v1/admin/reload`` re-reads it.
    config_path: Path | None = None
    #: Set when the HTTP server begins a graceful shutdown, so long-lived streams end.
    shutting_down: bool = False
    webhook_replay: ReplayGuard = field(init=False)
    #: ``Idempotency-Key`` handling for ``POST /v1/generations`` (set at start).
    idempotency: IdempotencyKeys | None = None
    #: The owner name of the jobs this replica runs (``router.engine``, leases).
    replica_id: str = field(default_factory=new_replica_id)
    _housekeeping: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _oldest_nonfinal_at: float | None = field(default=None, init=False, repr=False)
    _status_event: asyncio.Event = field(init=False, repr=False)
    _reload_lock: asyncio.Lock = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.webhook_replay = ReplayGuard(self.clock)
        self._status_event = asyncio.Event()
        self._reload_lock = asyncio.Lock()

    def status_changed(self) -> None:
        """Wake the status page's streams now (a breaker moved, a drain, a reload)."""
        event, self._status_event = self._status_event, asyncio.Event()
        event.set()

    async def wait_status_change(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for :meth:`status_changed`; whether it happened."""
        event = self._status_event
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            return False
        return True

    def begin_shutdown(self) -> None:
        """Tell long-lived responses (status-page streams) to finish, so the HTTP
        server's graceful shutdown is not held up by them."""
        self.shutting_down = True
        self.status_changed()
        if self.engine is not None:
            self.engine.release_waiters()  # Prefer: wait responses answer now

    async def start(self) -> None:
        """Start emulators, the store, the HTTP client, the registry and the engine."""
        config = self.config
        providers = await self._start_sandbox(config)
        self.store = open_store(config.storage.database_url)
        await self.store.start()
        self.client = new_client()
        if self.tracer is None:
            self.tracer = setup_tracing("switchman")
        # Exported from the start (0 = not degraded) so alerts and dashboards have a series.
        self.metrics.set_degraded("redis", False)
        if config.storage.redis_url and self.shared_state is None:
            self.shared_state = RedisState(
                config.storage.redis_url,
                clock=self.clock,
                prefix=config.storage.redis_prefix,
                replicas_hint=config.storage.replicas_hint,
                on_degraded=lambda degraded: self.metrics.set_degraded("redis", degraded),
            )
            self.shared_state.on_webhook = self._apply_forwarded_webhook
        self.registry = ProviderRegistry(
            providers,
            clock=self.clock,
            build_adapter=self._build_adapter,
            on_transition=self._on_breaker_transition,
            shared=self.shared_state,
        )
        if self.shared_state is not None:
            await self.shared_state.start()  # never fails: a dead Redis starts it degraded
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
        await tenants.attach(self)  # before jobs resume, so resumed jobs settle their usage
        await self._start_jobs(config)
        tenants.guard_callbacks(self)
        tenants.guard_input_images(self)
        self.auth = Authenticator(config.tenants)
        self.ready = True
        _log.info("service.started", providers=list(self.registry.names))

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop in reverse order; in-flight jobs stay resumable in the store."""
        self.ready = False
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None
        if self.engine is not None:
            await self.engine.close(grace_s)
            await tenants.detach(self)
            if self.engine.assets is not None:
                await self.engine.assets.aclose()
        if self.client is not None:
            await self.client.aclose()
        if self.store is not None:
            await self.store.close()
        if self.shared_state is not None:
            await self.shared_state.close()
        for emulator in self.emulators.values():
            await emulator.stop()
        self.emulators.clear()

    def _build_adapter(self, config: ProviderConfig) -> Adapter:
        """An adapter on the service's clock (token lifetimes, ``Retry-After`` dates)."""
        return build_adapter(config, clock=self.clock)

    async def _start_sandbox(self, config: Config) -> list[ProviderConfig]:
        """Start configured emulators and point ``sandbox:NAME`` providers at them."""
        if config.sandbox is None:
            return list(config.providers)
        for emu in config.sandbox.emulators:
            if emu.name in self.emulators:  # a reload keeps running emulators
                continue
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

    async def reload(self) -> ReloadResult:
        """Re-read :attr:`config_path` and apply it without dropping a request.

        A provider whose config is unchanged keeps its runtime (breaker, buckets,
        learned latency and success ratio, drain). A changed one gets a fresh runtime
        but keeps an operator's drain and forced-open breaker: an operator's decision
        outlives a config edit. Requests in flight hold the runtime they started with
        and finish on it. An invalid file raises :class:`ConfigError` and the running
        config stays in force.
        """
        if self.config_path is None:
            raise ConfigError(["$: the service was not started from a config file"])
        async with self._reload_lock:
            new = load_config(self.config_path)
            old_registry, engine = self.registry, self.engine
            assert old_registry is not None
            assert engine is not None
            providers = await self._start_sandbox(new)
            registry = ProviderRegistry(
                providers,
                clock=self.clock,
                build_adapter=self._build_adapter,
                on_transition=self._on_breaker_transition,
                reuse={rt.name: rt for rt in old_registry},
                shared=self.shared_state,
            )
            changed = []
            for rt in registry:
                prev = old_registry.get(rt.name)
                if prev is None or prev is rt:
                    continue
                changed.append(rt.name)
                rt.drained, rt.drain_reason = prev.drained, prev.drain_reason
                if prev.guard.breaker.forced_open:
                    rt.guard.breaker.force_open()
            old = self.config
            restart = _restart_required(old, new)
            self.metrics.declare_providers(registry.names)
            weights = new.routing.weights
            engine.strategy = ProviderStrategy(
                default_policy=new.routing.strategy,
                weights=Weights(weights.health, weights.latency, weights.cost, weights.load),
                near_tie=new.routing.near_tie,
            )
            if new.routing.retry_budget != old.routing.retry_budget:
                budget = new.routing.retry_budget
                engine.retry_budget = RetryBudget(budget.ratio, budget.min_per_s, self.clock)
            if new.server.public_url != old.server.public_url:
                engine.webhook_base_url = new.server.public_url
            # The swap itself is synchronous: no request sees half a config.
            engine.config = new
            engine.registry = registry
            self.registry = registry
            self.auth = Authenticator(new.tenants)
            if isinstance(engine.tenancy, tenants.Tenancy):
                engine.tenancy.reload(new)
            self.config = new
            result = ReloadResult(
                providers=registry.names,
                added=tuple(n for n in registry.names if old_registry.get(n) is None),
                removed=tuple(n for n in old_registry.names if registry.get(n) is None),
                changed=tuple(changed),
                restart_required=tuple(restart),
            )
        _log.info(
            "config.reloaded",
            path=str(self.config_path),
            providers=list(result.providers),
            added=list(result.added),
            removed=list(result.removed),
            changed=list(result.changed),
            restart_required=list(result.restart_required),
        )
        self.status_changed()
        return result

    def _on_breaker_transition(self, provider: str, old: str, new: str) -> None:
        if new == "closed" and old == "half_open" and self.registry is not None:
            rt = self.registry.get(provider)
            if rt is not None:
                rt.stats.forgive()  # a probe succeeded: the outage is over
        self.status_changed()
        if self.engine is not None:
            self.engine.breaker_changed()
        self.metrics.set_breaker_state(provider, new)
        self.metrics.breaker_transition(provider, new)
        log = _log.warning if new == "open" else _log.info
        log(f"breaker.{'opened' if new == 'open' else new}", provider=provider, previous=old)

    def _apply_forwarded_webhook(self, payload: object) -> None:
        """A webhook another replica received (see :mod:`router.webhook_relay`)."""
        if self.engine is None:
            return
        try:
            provider, job_id, attempt_id, event = webhook_relay.decode(payload)
        except (KeyError, TypeError, msgspec.ValidationError):
            _log.warning("webhook.forward_unreadable")
            return
        if self.engine.deliver_webhook(provider, job_id, attempt_id, event, forwarded=True):
            _log.info("webhook.forward_applied", provider=provider, job_id=job_id)

    async def _start_jobs(self, config: Config) -> None:
        """Assets, callbacks and idempotency keys; then resume what a previous process left."""
        assert self.engine is not None
        assert self.store is not None
        assert self.client is not None
        if config.storage.assets.enabled:
            self.engine.assets = AssetStore(
                config.storage.assets,
                self.store,
                self.client,
                self.clock,
                public_url=config.server.public_url,
                guard_downloads=True,
            )
        if config.security.callback_secret is not None:
            self.engine.callbacks = CallbackSender(config.security, self.client, self.clock)
        self.idempotency = IdempotencyKeys(
            self.store, self.clock, config.storage.idempotency_retention_s
        )
        self.engine.enable_leases(self.replica_id, config.storage.lease_s)
        # SQLite is one replica's file: whatever jobs it holds, their owner was this
        # file's previous process, so take them all at once instead of after lease_s.
        lone = config.storage.database_url.startswith("sqlite")
        dead = [] if lone else dead_predecessors(await self.store.lease_owners(), self.replica_id)
        await self.engine.resume(take_all=lone, take_from=dead)
        await self.engine.resume_callbacks()
        self.engine.start_lease_loop()
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")

    async def _housekeep(self, every_s: float = 30.0) -> None:
        """Prune expired idempotency keys; track the oldest non-final job for its gauge."""
        assert self.store is not None
        assert self.idempotency is not None
        ticks = 0
        while True:
            try:
                if ticks % 20 == 0:  # every ten minutes
                    await self.idempotency.prune()
                self._oldest_nonfinal_at = await self.store.oldest_nonfinal_created_at()
            except Exception as exc:  # the store may be briefly away; try next tick
                _log.warning("housekeeping.failed", error=type(exc).__name__)
            ticks += 1
            await asyncio.sleep(every_s)

    def refresh_gauges(self) -> None:
        """Update the per-provider gauges; called when /metrics is scraped."""
        if self.engine is not None:
            oldest = [
                t
                for t in (self._oldest_nonfinal_at, self.engine.oldest_inflight_created_at())
                if t is not None
            ]
            age = self.clock.time() - min(oldest) if oldest else 0.0
            self.metrics.set_oldest_nonfinal_age(max(age, 0.0))
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
