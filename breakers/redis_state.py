"""Breakers, buckets, cooldowns, drains and idempotency locks shared through Redis.

Reads never touch Redis: each replica keeps a :class:`ProviderView` per provider,
written by the reply of every script it runs, by pub/sub (every state change is
published by the script that made it) and by a poll every ``poll_interval_s`` as a
backstop. The one Redis call on an attempt's path is the atomic ``ADMIT`` script
(breaker, cooldown, probe slot and a GCRA token in one round trip); outcomes are
recorded in the background.

**Staleness bound.** A change made on one replica reaches every other replica's view
within one pub/sub delivery (about a millisecond on a LAN); if a message is lost the
poll repairs the view within ``poll_interval_s`` plus one round trip (0.5 s + 0.3 s
at most with the defaults), so the documented bound is ``poll_interval_s +
timeout_s``. Admission itself never relies on the view being fresh: ``ADMIT``
re-checks the breaker in Redis, so an open breaker stops traffic from every replica
from the moment it opens; the view only decides how candidates are ranked.

**Degradation.** Every call runs with short socket timeouts and behind a circuit of
its own: the first connection error marks the state *offline* (``state.degraded``,
``on_degraded(True)``), after which no call touches the network until the supervisor's
``PING`` (every ``retry_interval_s``) succeeds, the replica resubscribes, pushes drains
made meanwhile and re-reads every provider (``state.resynced``). Offline, guards fall
back to their local breaker and their local share of each rate limit
(:mod:`breakers.shared`), and :meth:`RedisState.idempotency_lock` raises
:class:`SharedStateUnavailable` (503) so a caller never risks a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from breakers import redis_scripts as lua
from breakers.clock import Clock
from breakers.gcra import gcra_available
from router.config import ProviderConfig
from router.errors import ApiError, Conflict

__all__ = [
    "Admission",
    "IdempotencyLockBusy",
    "ProviderView",
    "RedisState",
    "SharedProvider",
    "SharedStateUnavailable",
]

_log = structlog.get_logger("switchman.state")

#: Failures older than this no longer count towards opening a shared breaker.
FAILURE_WINDOW_S: Final = 60.0
_US: Final = 1_000_000.0
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_CONNECTION_ERRORS: Final = (RedisError, OSError, TimeoutError)


class SharedStateUnavailable(ApiError):
    """Raised when an operation needs Redis and Redis is unreachable (fail closed: 503)."""

    status = 503
    type_slug = "state-unavailable"
    title = "Shared state unavailable"

    def __init__(self, detail: str = "shared state (Redis) is unreachable") -> None:
        super().__init__(detail, retry_after_s=1.0)


class IdempotencyLockBusy(Conflict):
    """Raised when another request holds the idempotency lock for the same key."""

    def __init__(self, tenant: str) -> None:
        super().__init__("a request with this idempotency key is in progress")
        self.tenant = tenant


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict of one ``ADMIT``: ``reason`` says why not; ``probe_id`` marks a trial call."""

    admitted: bool
    reason: str | None = None
    probe_id: str | None = None


class ProviderView:
    """This replica's copy of one provider's shared state, in its own clock's terms."""

    __slots__ = (
        "cooldown_until",
        "drain_reason",
        "drained",
        "failures",
        "open_until",
        "probes",
        "stored",
        "tat_until",
        "updated_at",
    )

    def __init__(self) -> None:
        #: ``closed``, ``open`` (half-open once ``open_until`` passes) or ``forced_open``.
        self.stored = "closed"
        self.open_until = -math.inf
        self.failures = 0
        self.cooldown_until = -math.inf
        self.drained = False
        self.drain_reason: str | None = None
        #: When the bucket's TAT is reached, i.e. the bucket is full again.
        self.tat_until = -math.inf
        self.probes = 0
        self.updated_at = -math.inf

    def breaker_state(self, now: float) -> str:
        """``closed``, ``open`` or ``half_open`` at ``now``."""
        if self.stored == "forced_open":
            return "open"
        if self.stored == "open":
            return "open" if now < self.open_until else "half_open"
        return "closed"

    def apply(self, data: dict[str, Any], now: float) -> None:
        """Take a script's snapshot (durations relative to the script's ``now``)."""
        self.stored = str(data.get("state", "closed"))
        self.open_until = now + float(data.get("open_in", 0)) / _US
        self.failures = int(data.get("failures", 0))
        self.cooldown_until = now + float(data.get("cooldown_in", 0)) / _US
        self.drained = bool(data.get("drained", False))
        self.drain_reason = str(data.get("reason") or "") or None
        self.tat_until = now + float(data.get("tat_in", 0)) / _US
        self.probes = int(data.get("probes", 0))
        self.updated_at = now

    def __repr__(self) -> str:
        return (
            f"ProviderView(stored={self.stored!r}, failures={self.failures}, "
            f"drained={self.drained})"
        )


TransitionHook = Callable[[str, str], None]


class SharedProvider:
    """One provider's handle on the shared state: its view, and the scripts that change it."""

    __slots__ = (
        "_pending_drain",
        "_state",
        "burst",
        "emission_us",
        "fail_max",
        "keys",
        "max_probes",
        "name",
        "on_change",
        "probe_ttl_us",
        "reset_us",
        "view",
    )

    def __init__(self, state: RedisState, config: ProviderConfig) -> None:
        self._state = state
        self.name = config.name
        base = f"{state.prefix}p:{{{config.name}}}:"
        self.keys = (base + "br", base + "probes", base + "tat")
        self.view = ProviderView()
        self._pending_drain: tuple[bool, str | None] | None = None
        #: Called with (old, new) breaker state when the view's state changes.
        self.on_change: TransitionHook | None = None
        self.configure(config)

    def configure(self, config: ProviderConfig) -> None:
        """Take the provider's limits from ``config`` (again, after a reload)."""
        rl, br = config.rate_limit, config.breaker
        self.emission_us = rl.per_s / rl.requests * _US
        self.burst = rl.requests
        self.max_probes = br.half_open_max_probes
        self.fail_max = br.fail_max
        self.reset_us = br.reset_timeout_s * _US
        # A probe slot outlives the longest attempt, so a replica dying mid-probe frees it.
        self.probe_ttl_us = (config.timeouts.request_s + 1.0) * _US

    @property
    def online(self) -> bool:
        """Whether shared state is in use (Redis reachable)."""
        return self._state.online

    @property
    def replicas_hint(self) -> int:
        """Replicas sharing the state: offline, this one keeps ``1 / replicas_hint`` of a limit."""
        return self._state.replicas_hint

    def breaker_state(self) -> str:
        return self.view.breaker_state(self._state.clock.monotonic())

    def tokens_available(self) -> float:
        """Estimated tokens left in the shared bucket (exact as of the last snapshot)."""
        tat_in = self.view.tat_until - self._state.clock.monotonic()
        return gcra_available(tat_in, self.emission_us / _US, self.burst)

    def cooldown_remaining_s(self) -> float:
        return max(0.0, self.view.cooldown_until - self._state.clock.monotonic())

    def apply(self, data: dict[str, Any]) -> None:
        """Update the view from a snapshot and report a breaker state change."""
        now = self._state.clock.monotonic()
        old = self.view.breaker_state(now)
        self.view.apply(data, now)
        if self._pending_drain is not None:  # our own newer intent wins until it is written
            self.view.drained, self.view.drain_reason = self._pending_drain
        new = self.view.breaker_state(now)
        if old != new and self.on_change is not None:
            try:
                self.on_change(old, new)
            except Exception:
                _log.exception("state.transition_callback_failed", provider=self.name)

    async def _run(self, script: str, *args: str | float | int) -> list[Any]:
        reply = await self._state.run(script, self.keys, self.name, args)
        self.apply(msgspec.json.decode(reply[-1]))
        return reply

    async def admit(self) -> Admission:
        """Take a token (and a probe slot in half-open) in one round trip.

        Raises :class:`SharedStateUnavailable` when Redis cannot be asked.
        """
        probe_id = secrets.token_hex(8)
        admitted, reason, _ = await self._run(
            lua.ADMIT,
            self.max_probes,
            _fmt(self.probe_ttl_us),
            _fmt(self.emission_us),
            _fmt(self.burst),
            probe_id,
        )
        if not int(admitted):
            return Admission(False, str(reason))
        return Admission(True, None, probe_id if reason == "probe" else None)

    def report_success(self, probe_id: str | None) -> None:
        """Record a success in the background (skipped when it would change nothing)."""
        if probe_id is None and self.view.stored == "closed" and self.view.failures == 0:
            return
        self._state.spawn(self._run(lua.RECORD_SUCCESS, probe_id or ""))

    def report_failure(self, probe_id: str | None) -> None:
        """Record a provider failure in the background."""
        self._state.spawn(
            self._run(
                lua.RECORD_FAILURE,
                self.fail_max,
                _fmt(self.reset_us),
                _fmt(FAILURE_WINDOW_S * _US),
                probe_id or "",
            )
        )

    def report_neutral(self, probe_id: str | None) -> None:
        """A neutral outcome: only a probe slot to give back."""
        if probe_id is not None:
            self._state.spawn(self._run(lua.RELEASE_PROBE, probe_id))

    def force(self, open_: bool) -> None:
        """Hold the shared breaker open, or close it, on every replica (while offline
        the local breaker alone takes the order)."""
        if not self.online:
            return
        self.view.stored = "forced_open" if open_ else "closed"
        self.view.failures = 0
        self._state.spawn(self._run(lua.FORCE, "open" if open_ else "closed"))

    def cooldown(self, seconds: float | None) -> None:
        """Start (``seconds``) or end (``None``) a cooldown on every replica."""
        if not self.online:
            return
        if seconds is None:
            self.view.cooldown_until = -math.inf
            self._state.spawn(self._run(lua.COOLDOWN, "clear"))
            return
        until = self._state.clock.monotonic() + seconds
        self.view.cooldown_until = max(self.view.cooldown_until, until)
        self._state.spawn(self._run(lua.COOLDOWN, _fmt(seconds * _US)))

    def drain(self, drained: bool, reason: str | None) -> None:
        """Drain or undrain on every replica; kept as an intent until Redis has it."""
        self._pending_drain = (drained, reason)
        self.view.drained, self.view.drain_reason = drained, reason
        if self.online:
            self._state.spawn(self.flush_drain())

    async def flush_drain(self) -> None:
        """Write a pending drain intent (called again on resynchronization)."""
        pending = self._pending_drain
        if pending is None:
            return
        reply = await self._state.run(
            lua.DRAIN, self.keys, self.name, ("1" if pending[0] else "0", pending[1] or "")
        )
        if self._pending_drain == pending:
            self._pending_drain = None
        self.apply(msgspec.json.decode(reply[-1]))

    def __repr__(self) -> str:
        return f"SharedProvider({self.name!r}, {self.view!r})"


def _fmt(value: float) -> str:
    return f"{value:.0f}"


class RedisState:
    """The shared-state backend: one per process, one :class:`SharedProvider` per provider.

    ``now_us`` replaces Redis ``TIME`` in every script (tests only); in production
    every replica reads the one Redis clock, so replica clock skew never matters.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        prefix: str = "switchman:",
        replicas_hint: int = 1,
        poll_interval_s: float = 0.5,
        retry_interval_s: float = 1.0,
        timeout_s: float = 0.3,
        on_degraded: Callable[[bool], None] | None = None,
        now_us: Callable[[], float] | None = None,
    ) -> None:
        self.clock = clock
        self.prefix = prefix
        self.channel = prefix + "events"
        self.replicas_hint = max(1, replicas_hint)
        self.poll_interval_s = poll_interval_s
        self.retry_interval_s = retry_interval_s
        self.timeout_s = timeout_s
        self._on_degraded = on_degraded
        self._now_us = now_us
        self._redis: Redis = Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._scripts: dict[str, AsyncScript] = {}
        self._providers: dict[str, SharedProvider] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._down = asyncio.Event()
        self.online = False
        self._closed = False
        self._ever_reported = False
        #: Called with each webhook another replica forwarded (see :meth:`forward_webhook`).
        self.on_webhook: Callable[[dict[str, Any]], None] | None = None

    @property
    def staleness_bound_s(self) -> float:
        """The documented bound on how stale a replica's view may be while online."""
        return self.poll_interval_s + self.timeout_s

    def provider(self, config: ProviderConfig) -> SharedProvider:
        """The handle for ``config``'s provider: created once, reconfigured on a reload."""
        handle = self._providers.get(config.name)
        if handle is None:
            handle = self._providers[config.name] = SharedProvider(self, config)
        else:
            handle.configure(config)
        return handle

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and read every provider; if Redis is down, start degraded and keep trying."""
        try:
            await self._resync()
        except _CONNECTION_ERRORS as exc:
            self._mark_down(exc)
        self._supervisor = asyncio.create_task(self._supervise(), name="state.supervisor")

    async def close(self) -> None:
        """Stop the background tasks and close the connections."""
        self._closed = True
        self.online = False
        self._down.set()
        tasks = [*self._loops, *self._tasks]
        if self._supervisor is not None:
            tasks.append(self._supervisor)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._redis.aclose()

    async def purge(self) -> None:
        """Delete every key under this prefix (tests, and tearing down a stack)."""
        async for key in self._redis.scan_iter(match=self.prefix + "*", count=500):
            await self._redis.delete(key)

    # -- calls -----------------------------------------------------------------------

    async def run(
        self, source: str, keys: Sequence[str], name: str, args: Sequence[str | float | int]
    ) -> list[Any]:
        """Run a script for provider ``name`` behind the circuit; raise
        :class:`SharedStateUnavailable` (without touching the network) while offline."""
        if not self.online:
            raise SharedStateUnavailable
        script = self._script(source)
        now = "" if self._now_us is None else _fmt(self._now_us())
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                reply = await script(keys=list(keys), args=[now, name, self.channel, *args])
        except _CONNECTION_ERRORS as exc:
            self._mark_down(exc)
            raise SharedStateUnavailable from exc
        return list(reply)

    async def forward_webhook(self, payload: dict[str, Any]) -> bool:
        """Tell every replica of a webhook for a job this one is not running.

        Provider webhooks reach whichever replica the load balancer picks; the one
        running the job applies it (``on_webhook``), the rest ignore it. Best effort:
        ``False`` when Redis is away, and the owner's polling finishes the job anyway.
        """
        if not self.online:
            return False
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                await self._redis.publish(self.channel, msgspec.json.encode({"w": payload}))
        except _CONNECTION_ERRORS as exc:
            self._mark_down(exc)
            return False
        return True

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a write in the background; an unreachable Redis is already handled by
        :meth:`run` (it marks the state offline), so failures are only logged."""
        task = asyncio.create_task(self._quiet(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain_background(self) -> None:
        """Wait for background writes started so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @staticmethod
    async def _quiet(coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except SharedStateUnavailable:
            pass
        except Exception:
            _log.exception("state.write_failed")

    def _script(self, source: str) -> AsyncScript:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._redis.register_script(source)
        return script

    # -- idempotency locks ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def idempotency_lock(self, tenant: str, key: str, ttl_s: float) -> AsyncIterator[None]:
        """Hold ``tenant``'s idempotency ``key`` for the body (``SET NX PX`` with a token).

        Raises :class:`IdempotencyLockBusy` (409) when another request holds it and
        :class:`SharedStateUnavailable` (503) when Redis is unreachable: without the
        lock a duplicate could slip through, so the caller must not proceed. The lock
        expires after ``ttl_s`` if this process dies; release deletes it only if it is
        still ours (compare-and-delete), never a successor's.
        """
        if not self.online:
            raise SharedStateUnavailable
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        name = f"{self.prefix}idem:{tenant}:{digest}"
        token = secrets.token_hex(16)
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                ok = await self._redis.set(name, token, nx=True, px=max(1, int(ttl_s * 1000)))
        except _CONNECTION_ERRORS as exc:
            self._mark_down(exc)
            raise SharedStateUnavailable from exc
        if not ok:
            raise IdempotencyLockBusy(tenant)
        try:
            yield
        finally:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                async with asyncio.timeout(self.timeout_s * 2):
                    await self._script(_RELEASE)(keys=[name], args=[token])

    # -- online / offline ------------------------------------------------------------------

    def _report(self, degraded: bool) -> None:
        if self._on_degraded is not None:
            try:
                self._on_degraded(degraded)
            except Exception:
                _log.exception("state.degraded_callback_failed")

    def _mark_down(self, exc: BaseException) -> None:
        if self._closed or (not self.online and self._ever_reported):
            return
        self.online = False
        self._ever_reported = True
        self._down.set()
        self._report(True)
        _log.warning("state.degraded", component="redis", error=type(exc).__name__)

    async def _resync(self) -> None:
        """Subscribe, push pending drains, read every provider, then go online."""
        async with asyncio.timeout(self.timeout_s * 2):
            await self._redis.ping()
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                await pubsub.subscribe(self.channel)  # before reading: no change slips between
            self.online = True  # run() below must be allowed through
            for handle in self._providers.values():
                await handle.flush_drain()
            await self._poll_once()
        except BaseException:
            self.online = False
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 8
            raise
        self._down.clear()
        self._loops = [
            asyncio.create_task(self._listen(pubsub), name="state.listen"),
            asyncio.create_task(self._poll(), name="state.poll"),
        ]
        was_reported = self._ever_reported
        self._ever_reported = True
        self._report(False)
        if was_reported:
            _log.info("state.resynced", component="redis", providers=len(self._providers))

    async def _supervise(self) -> None:
        while not self._closed:
            if self.online:
                await self._down.wait()
                continue
            for task in self._loops:
                task.cancel()
            await asyncio.gather(*self._loops, return_exceptions=True)
            self._loops = []
            await asyncio.sleep(self.retry_interval_s)
            with contextlib.suppress(*_CONNECTION_ERRORS, SharedStateUnavailable):
                await self._resync()

    async def _poll_once(self) -> None:
        """Read every provider's snapshot in one pipelined round trip."""
        if not self._providers:
            return
        script = self._script(lua.SNAPSHOT)
        now = "" if self._now_us is None else _fmt(self._now_us())
        async with asyncio.timeout(self.timeout_s * 2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for handle in self._providers.values():
                    await script(
                        keys=list(handle.keys), args=[now, handle.name, self.channel], client=pipe
                    )
                replies = await pipe.execute()
        for handle, reply in zip(self._providers.values(), replies, strict=True):
            handle.apply(msgspec.json.decode(reply[-1]))

    async def _poll(self) -> None:
        try:
            while self.online:
                await asyncio.sleep(self.poll_interval_s)
                await self._poll_once()
        except _CONNECTION_ERRORS as exc:
            self._mark_down(exc)

    async def _listen(self, pubsub: PubSub) -> None:
        try:
            while self.online:
                message = await pubsub.get_message(timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                data = msgspec.json.decode(message["data"])
                if "w" in data:
                    if self.on_webhook is not None:
                        self._deliver(data["w"])
                    continue
                handle = self._providers.get(str(data.get("p", "")))
                if handle is not None:
                    handle.apply(data)
        except _CONNECTION_ERRORS as exc:
            self._mark_down(exc)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 8

    def _deliver(self, payload: Any) -> None:
        try:
            assert self.on_webhook is not None
            self.on_webhook(payload)
        except Exception:  # a bad message must not stop the listener
            _log.exception("state.webhook_failed")

    def __repr__(self) -> str:
        return (
            f"RedisState(prefix={self.prefix!r}, online={self.online}, "
            f"providers={len(self._providers)})"
        )
