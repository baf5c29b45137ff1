"""Tenants: their request rate, in-flight jobs, monthly budget and own provider keys.

Many teams share one Switchman; each must spend only its own budget and must not
starve the others. Per tenant (``tenants[]`` in the config):

- ``rate_limit_per_s``: a token bucket on ``POST /v1/generations`` (a burst of one
  second's worth, at least one request); over it a 429 with ``Retry-After``. Reads are
  not limited: polling a job must not be refused because the tenant just submitted.
- ``max_inflight``: admitted jobs not yet final; at the limit a 409 (no
  ``Retry-After``: the slot frees when a job ends, not at a time we know).
- ``budget_usd_per_month``: the estimated cost of a job (the dearest provider that could
  take it, since failover may land anywhere) is reserved at admission and settled to
  the real cost when it ends; a job that does not fit is a 402 with ``Retry-After``
  until the next month (UTC).

In-flight slots and reservations are rows in the job store's database
(:mod:`router.store.credentials`), taken by conditional updates, so they hold across
replicas and restarts. The engine settles a job through :meth:`Tenancy.job_finished`
(called from ``JobEngine._finish``); the reservation rides to it in a context variable
set before ``engine.submit`` (the job's task inherits the request's context), and a
resumed job finds its reservation by job id.

Bring-your-own credentials (:class:`Credentials`) are sealed by :mod:`router.crypto`,
kept decrypted only in memory for routing (refreshed from the database every
``_REFRESH_S`` so every replica sees a new key), registered with the log scrubber, and
never returned, logged or put in an error.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import httpx
import structlog

from breakers.clock import Clock
from metrics.logging import register_secrets
from router.config import Config, TenantConfig
from router.crypto import DecryptionFailed, KeyRing, Sealed
from router.errors import ApiError, Conflict, NotFound, RateLimited
from router.models import GenerationRequest
from router.registry import ProviderRegistry
from router.ssrf import Resolver, SystemResolver, UrlPolicy, check_url, guarded_client
from router.store.credentials import (
    BudgetExceeded,
    CredentialRow,
    InflightExceeded,
    Reservation,
    TenantStore,
)
from router.store.records import JobRecord

if TYPE_CHECKING:
    from router.service import Service

__all__ = [
    "BudgetExhausted",
    "Credentials",
    "EngineHooks",
    "RateLimiter",
    "Tenancy",
    "admission",
    "attach",
    "check_admission",
    "detach",
    "estimate_cost",
    "guard_callbacks",
    "guard_input_images",
    "month_of",
    "seconds_to_next_month",
]

_log = structlog.get_logger("switchman.tenants")
#: How often the in-memory credential cache is re-read (other replicas' changes).
_REFRESH_S: Final = 30.0
#: Reservations older than this whose job is gone or final are released at start.
_STALE_RESERVATION_S: Final = 3600.0
_CURRENT: contextvars.ContextVar[Reservation | None] = contextvars.ContextVar(
    "switchman_reservation", default=None
)


class BudgetExhausted(ApiError):
    """Raised when a job's estimated cost does not fit in the tenant's monthly budget."""

    status = 402
    type_slug = "budget-exhausted"
    title = "Budget exhausted"


class EngineHooks(Protocol):
    """What :class:`~router.engine.JobEngine` calls, when the service sets ``engine.tenancy``."""

    def api_key(self, tenant: str, provider: str, platform_key: str | None) -> str | None:
        """The key an attempt for ``tenant`` at ``provider`` uses."""
        ...

    async def auth_rejected(self, tenant: str, provider: str) -> None:
        """An attempt ended ``auth``: a tenant key it used is now known invalid."""
        ...

    async def job_finished(self, job: JobRecord) -> None:
        """A job reached a final state: settle its reservation (never raises)."""
        ...


def month_of(unix_s: float) -> str:
    """``YYYY-MM`` (UTC) of a unix time: the budget period."""
    return time.strftime("%Y-%m", time.gmtime(unix_s))


def seconds_to_next_month(unix_s: float) -> float:
    """Seconds from ``unix_s`` to the start of the next UTC month."""
    t = time.gmtime(unix_s)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return max(calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0)) - unix_s, 1.0)


def estimate_cost(request: GenerationRequest, registry: ProviderRegistry) -> float:
    """The dearest estimate among providers that could serve ``request``.

    Failover may land the job on any capable provider, so reserving less could let a
    tenant overspend by more than one job; ``0.0`` when none is capable (the engine
    then refuses the job anyway).
    """
    routing = request.routing
    allow = set(routing.providers) if routing and routing.providers else None
    exclude = set(routing.exclude) if routing and routing.exclude else set()
    best = 0.0
    for rt in registry:
        if (allow is not None and rt.name not in allow) or rt.name in exclude:
            continue
        if request.kind not in rt.config.kinds:
            continue
        try:
            if rt.adapter.supports(request) is not None:
                continue
            best = max(best, float(rt.adapter.estimate_cost(request)))
        except Exception:  # an adapter's estimate must not break admission
            _log.warning("tenant.estimate_failed", provider=rt.name)
    return best


class RateLimiter:
    """One token bucket per tenant on an injected clock (pure; never waits)."""

    __slots__ = ("_buckets", "_clock")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        #: tenant → (tokens, last refill at, rate it was built for)
        self._buckets: dict[str, tuple[float, float, float]] = {}

    def try_acquire(self, tenant: str, rate_per_s: float) -> float | None:
        """Take a token; ``None`` when admitted, else seconds until a token is due."""
        capacity = max(1.0, rate_per_s)
        now = self._clock.monotonic()
        tokens, last, rate = self._buckets.get(tenant, (capacity, now, rate_per_s))
        if rate != rate_per_s:  # a reload changed the limit: start full at the new one
            tokens, rate = capacity, rate_per_s
        tokens = min(capacity, tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[tenant] = (tokens - 1.0, now, rate)
            return None
        self._buckets[tenant] = (tokens, now, rate)
        return (1.0 - tokens) / rate


@dataclass(frozen=True, slots=True)
class _Cached:
    kid: str
    secret: str | None  # None: stored but could not be opened (logged once)
    is_valid: bool | None


class Credentials:
    """Tenants' own provider keys: sealed at rest, open only in this process's memory."""

    def __init__(self, store: TenantStore, ring: KeyRing, clock: Clock) -> None:
        self.store = store
        self.ring = ring
        self.clock = clock
        self._cache: dict[tuple[str, str], _Cached] = {}

    def _open(self, row: CredentialRow) -> _Cached:
        try:
            secret: str | None = self.ring.decrypt(
                Sealed.decode(row.kid, row.ciphertext), tenant=row.tenant, provider=row.provider
            )
        except DecryptionFailed as exc:
            # The message names the key id at most, never key material.
            _log.error(
                "credential.undecryptable", tenant=row.tenant, provider=row.provider, error=str(exc)
            )
            secret = None
        if secret is not None:
            register_secrets([secret])
        return _Cached(row.kid, secret, row.is_valid)

    async def refresh(self) -> None:
        """Re-read every stored credential into memory."""
        rows = await self.store.all_credentials()
        self._cache = {(r.tenant, r.provider): self._open(r) for r in rows}

    def api_key(self, tenant: str, provider: str, platform_key: str | None) -> str | None:
        """The tenant's own key for ``provider`` unless known invalid; else the platform's."""
        cached = self._cache.get((tenant, provider))
        if cached is None or cached.secret is None or cached.is_valid is False:
            return platform_key
        return cached.secret

    def uses_own_key(self, tenant: str, provider: str) -> _Cached | None:
        """The tenant's usable own credential for ``provider``, if any."""
        cached = self._cache.get((tenant, provider))
        if cached is None or cached.secret is None or cached.is_valid is False:
            return None
        return cached

    async def put(self, tenant: str, provider: str, secret: str) -> CredentialRow:
        """Seal and store ``secret``; it is used from the next attempt on."""
        if not self.ring.enabled:
            raise Conflict(
                "storing provider credentials is not configured on this service "
                "(security.encryption_keys is empty)"
            )
        register_secrets([secret])
        sealed = self.ring.encrypt(secret, tenant=tenant, provider=provider)
        now = self.clock.time()
        await self.store.put_credential(tenant, provider, sealed.kid, sealed.encoded(), now)
        self._cache[(tenant, provider)] = _Cached(sealed.kid, secret, None)
        _log.info("credential.stored", tenant=tenant, provider=provider, kid=sealed.kid)
        row = await self.store.credential(tenant, provider)
        assert row is not None
        return row

    async def delete(self, tenant: str, provider: str) -> bool:
        """Forget a tenant's key for ``provider``; the platform's is used again."""
        self._cache.pop((tenant, provider), None)
        deleted = await self.store.delete_credential(tenant, provider)
        if deleted:
            _log.info("credential.deleted", tenant=tenant, provider=provider)
        return deleted

    async def mark(self, tenant: str, provider: str, valid: bool) -> None:
        """Record a verdict on the tenant's current credential for ``provider``."""
        cached = self._cache.get((tenant, provider))
        row = await self.store.credential(tenant, provider)
        if row is None:
            return
        kid = cached.kid if cached is not None else row.kid
        await self.store.mark_credential(tenant, provider, kid, valid, self.clock.time())
        if cached is not None:
            self._cache[(tenant, provider)] = _Cached(cached.kid, cached.secret, valid)

    async def secret(self, tenant: str, provider: str) -> str | None:
        """The tenant's decrypted key for ``provider`` (for a test), or ``None``."""
        row = await self.store.credential(tenant, provider)
        if row is None:
            return None
        opened = self._open(row)
        self._cache[(tenant, provider)] = opened
        return opened.secret

    async def rotate_all(self) -> tuple[int, int]:
        """Re-seal every stored secret under the current key; (rotated, already current)."""
        rows = await self.store.all_credentials()
        changes: list[dict[str, Any]] = []
        for row in rows:
            sealed = Sealed.decode(row.kid, row.ciphertext)
            new = self.ring.rotate(sealed, tenant=row.tenant, provider=row.provider)
            if new is not sealed:
                changes.append(
                    {
                        "tenant": row.tenant,
                        "provider": row.provider,
                        "old_kid": row.kid,
                        "old_ct": row.ciphertext,
                        "kid": new.kid,
                        "ciphertext": new.encoded(),
                    }
                )
        done = await self.store.replace_sealed(changes) if changes else 0
        return done, len(rows) - len(changes)


class Tenancy:
    """Admission limits, usage settlement and credentials; the engine's tenant hooks."""

    def __init__(
        self,
        config: Config,
        store: TenantStore,
        clock: Clock,
        *,
        ring: KeyRing | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.config = config
        #: Name resolution for URL checks (admission and connect time); tests replace it.
        self.resolver: Resolver = resolver or SystemResolver()
        self.store = store
        self.clock = clock
        self.rate = RateLimiter(clock)
        self.credentials = Credentials(
            store, ring or KeyRing(config.security.encryption_keys), clock
        )
        self._tenants = {t.id: t for t in config.tenants}
        self._refresher: asyncio.Task[None] | None = None
        #: Spend of unlimited tenants not yet written: (tenant, period) -> [usd, jobs].
        self._unflushed: dict[tuple[str, str], list[float]] = {}
        self._flusher: asyncio.Task[None] | None = None
        #: The SSRF-guarded client callbacks are sent with (see :func:`guard_callbacks`).
        self.callback_http: httpx.AsyncClient | None = None
        #: The SSRF-guarded client input images are fetched with (see :func:`guard_input_images`).
        self.input_http: httpx.AsyncClient | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load credentials, release reservations a dead process left, start refreshing."""
        await self.credentials.refresh()
        with contextlib.suppress(Exception):
            await self.release_stale()
        self._refresher = asyncio.create_task(self._refresh_loop(), name="credentials refresh")
        self._flusher = asyncio.create_task(self._flush_loop(), name="tenant spend")

    async def stop(self) -> None:
        """Stop the refresher; write the spend still batched in memory."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush_spend()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None

    def reload(self, config: Config) -> None:
        """Apply a new config's tenants (limits take effect on the next request)."""
        self.config = config
        self._tenants = {t.id: t for t in config.tenants}

    # -- caller-supplied URLs (SSRF) ---------------------------------------------------------

    def callback_policy(self) -> UrlPolicy:
        """Where callbacks may go: public https, or a ``security.callback_hosts`` host."""
        return UrlPolicy("callback_url", tuple(self.config.security.callback_hosts))

    def input_image_policy(self) -> UrlPolicy:
        """Where input images may come from: public https, or ``security.input_image_hosts``."""
        return UrlPolicy("input_image_url", tuple(self.config.security.input_image_hosts))

    async def check_urls(self, request: GenerationRequest) -> None:
        """Refuse (422) a ``callback_url`` or ``input_image_url`` that reaches inside."""
        if request.callback_url is not None:
            await check_url(request.callback_url, self.callback_policy(), self.resolver)
        if request.input_image_url is not None and not request.input_image_url.startswith("data:"):
            await check_url(request.input_image_url, self.input_image_policy(), self.resolver)

    def callback_client(self) -> httpx.AsyncClient:
        """A client whose connections are checked against the callback policy."""
        return guarded_client(self.callback_policy(), _LateResolver(self))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(_REFRESH_S)
            try:
                await self.credentials.refresh()
            except Exception as exc:  # the store may be briefly away; next time
                _log.warning("credential.refresh_failed", error=type(exc).__name__)

    async def release_stale(self) -> int:
        """Settle reservations of jobs that ended while no process was watching."""
        released = 0
        now = self.clock.time()
        for rid, job_id, status, cost in await self.store.stale_reservations(
            now - _STALE_RESERVATION_S
        ):
            if status in ("queued", "running"):
                continue  # still running: it settles when it ends
            if status is None:
                released += await self.store.cancel(rid)
            else:
                released += await self.store.settle(rid, job_id or "", cost, month_of(now))
        if released:
            _log.info("tenant.reservations_released", count=released)
        return released

    # -- admission -------------------------------------------------------------------------

    def tenant(self, tenant: str) -> TenantConfig | None:
        """The tenant's config, if it has one."""
        return self._tenants.get(tenant)

    def check_rate(self, tenant: str) -> None:
        """Raise a 429 when ``tenant`` is over its request rate."""
        cfg = self._tenants.get(tenant)
        if cfg is None or cfg.rate_limit_per_s is None:
            return
        wait = self.rate.try_acquire(tenant, cfg.rate_limit_per_s)
        if wait is not None:
            raise RateLimited(
                f"tenant request rate limit ({cfg.rate_limit_per_s:g}/s) exceeded",
                retry_after_s=wait,
            )

    def unlimited(self, tenant: str) -> bool:
        """Whether ``tenant`` has neither a budget nor an in-flight cap.

        Such tenants reserve nothing at admission (no store write on the request
        path); their spend is added after each job ends, off the response path.
        """
        cfg = self._tenants.get(tenant)
        return cfg is None or (cfg.max_inflight is None and cfg.budget_usd_per_month is None)

    async def admit(self, tenant: str, estimate_usd: float) -> Reservation:
        """Take an in-flight slot and reserve ``estimate_usd`` (409/402 when over a limit).

        The reservation is made current for this context, so the job task created next
        (``engine.submit``) settles it when it ends.
        """
        cfg = self._tenants.get(tenant)
        now = self.clock.time()
        try:
            res = await self.store.reserve(
                tenant,
                month_of(now),
                estimate_usd,
                now,
                max_inflight=cfg.max_inflight if cfg else None,
                budget_usd=cfg.budget_usd_per_month if cfg else None,
            )
        except InflightExceeded:
            limit = cfg.max_inflight if cfg else 0
            raise Conflict(
                f"tenant has {limit} job(s) in flight, its limit; retry when one ends"
            ) from None
        except BudgetExceeded as exc:
            budget = cfg.budget_usd_per_month if cfg else 0.0
            raise BudgetExhausted(
                f"this job's estimated cost ({estimate_usd:.4f} USD) exceeds what is left of "
                f"the monthly budget ({exc.left_usd:.4f} of {budget:g} USD)",
                retry_after_s=seconds_to_next_month(now),
            ) from None
        _CURRENT.set(res)
        return res

    async def flush_spend(self) -> None:
        """Write the unlimited tenants' batched spend (never raises)."""
        pending, self._unflushed = self._unflushed, {}
        items = [(t, p, usd, int(jobs)) for (t, p), (usd, jobs) in pending.items()]
        try:
            await self.store.add_spend(items)
        except Exception as exc:
            _log.warning("tenant.spend_failed", error=type(exc).__name__)
            for (t, p), (usd, jobs) in pending.items():  # keep it for the next round
                totals = self._unflushed.setdefault((t, p), [0, 0])
                totals[0] += usd
                totals[1] += jobs

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.flush_spend()

    async def admitted(self, reservation: Reservation, job_id: str | None) -> None:
        """After ``engine.submit``: link the reservation to its job, or release it."""
        _CURRENT.set(None)
        try:
            if job_id is None:
                await self.store.cancel(reservation.id)
            else:
                await self.store.link(reservation.id, job_id)
        except Exception as exc:
            _log.warning("tenant.reservation_update_failed", error=type(exc).__name__)

    # -- engine hooks ----------------------------------------------------------------------

    def api_key(self, tenant: str, provider: str, platform_key: str | None) -> str | None:
        """See :class:`EngineHooks`."""
        return self.credentials.api_key(tenant, provider, platform_key)

    async def auth_rejected(self, tenant: str, provider: str) -> None:
        """See :class:`EngineHooks`: mark the tenant's own key invalid (never raises)."""
        if self.credentials.uses_own_key(tenant, provider) is None:
            return
        try:
            await self.credentials.mark(tenant, provider, False)
        except Exception as exc:
            _log.warning("credential.mark_failed", provider=provider, error=type(exc).__name__)
            return
        _log.warning("credential.rejected", tenant=tenant, provider=provider)

    async def job_finished(self, job: JobRecord) -> None:
        """See :class:`EngineHooks`: settle the job's reservation with its real cost."""
        if self.unlimited(job.tenant):
            # Informational only (no budget to enforce): batched, written once a second.
            totals = self._unflushed.setdefault((job.tenant, month_of(self.clock.time())), [0, 0])
            totals[0] += job.cost_usd
            totals[1] += 1
            return
        current = _CURRENT.get()
        rid = current.id if current is not None and current.tenant == job.tenant else None
        try:
            await self.store.settle(rid, job.id, job.cost_usd, month_of(self.clock.time()))
        except Exception as exc:
            _log.warning("tenant.settle_failed", error=type(exc).__name__)

    # -- usage -----------------------------------------------------------------------------

    async def usage(self, tenant: str) -> dict[str, Any]:
        """What ``GET /v1/usage`` shows."""
        cfg = self._tenants.get(tenant)
        period = month_of(self.clock.time())
        row = await self.store.usage(tenant, period)
        unflushed = self._unflushed.get((tenant, period))
        if unflushed is not None:  # batched spend not yet written counts too
            row = type(row)(
                row.spent_usd + unflushed[0],
                row.reserved_usd,
                row.jobs + int(unflushed[1]),
                row.inflight,
            )
        budget = cfg.budget_usd_per_month if cfg else None
        return {
            "tenant": tenant,
            "period": period,
            "spent_usd": round(row.spent_usd, 6),
            "reserved_usd": round(row.reserved_usd, 6),
            "budget_usd": budget,
            "remaining_usd": (
                None
                if budget is None
                else round(max(budget - row.spent_usd - row.reserved_usd, 0.0), 6)
            ),
            "inflight": row.inflight,
            "jobs": row.jobs,
            "limits": {
                "budget_usd_per_month": budget,
                "max_inflight": cfg.max_inflight if cfg else None,
                "rate_limit_per_s": cfg.rate_limit_per_s if cfg else None,
            },
        }

    # -- credentials (API) -------------------------------------------------------------------

    def require_provider(self, registry: ProviderRegistry, provider: str) -> None:
        """404 unless ``provider`` is configured (credentials name real providers only)."""
        if registry.get(provider) is None:
            raise NotFound(f"no provider {provider!r}")

    async def test_credential(
        self, registry: ProviderRegistry, client: httpx.AsyncClient, tenant: str, provider: str
    ) -> dict[str, Any]:
        """Probe ``provider`` with the tenant's key and keep the verdict."""
        self.require_provider(registry, provider)
        secret = await self.credentials.secret(tenant, provider)
        if secret is None:
            raise NotFound(f"no credential for {provider!r}")
        rt = registry.get(provider)
        assert rt is not None
        started = self.clock.monotonic()
        try:
            async with asyncio.timeout(rt.config.timeouts.request_s):
                result = await rt.adapter.probe(client, secret)
            ok, latency, detail = result.ok, result.latency_s, result.detail
        except Exception as exc:  # a probe that crashes is a failed test, never a 500
            ok, latency, detail = False, self.clock.monotonic() - started, type(exc).__name__
        await self.credentials.mark(tenant, provider, ok)
        return {
            "provider": provider,
            "ok": ok,
            "is_valid": ok,
            "latency_s": round(latency, 4),
            "detail": _redact(detail, (secret,)),
        }


class _LateResolver:
    """Resolves through whatever ``tenancy.resolver`` is now (tests swap it after start)."""

    def __init__(self, tenancy: Tenancy) -> None:
        self.tenancy = tenancy

    async def resolve(self, host: str, port: int) -> list[str]:
        """Delegate."""
        return await self.tenancy.resolver.resolve(host, port)


def _redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` without any of ``secrets`` (an upstream error may echo the key)."""
    for s in secrets:
        if s:
            text = text.replace(s, "[REDACTED]")
    return text[:500]


# -- wiring (called from ``Service.start``/``stop``) ------------------------------------------


async def attach(service: Service) -> Tenancy:
    """Build the service's :class:`Tenancy` and hand it to the engine.

    Called before the engine resumes jobs, so a resumed job that ends settles too.
    """
    engine, store = service.engine, service.store
    assert engine is not None
    assert store is not None
    tenancy = Tenancy(service.config, TenantStore.for_job_store(store), service.clock)
    await tenancy.start()
    engine.tenancy = tenancy
    return tenancy


def guard_callbacks(service: Service) -> None:
    """Send callbacks through a client that checks every address at connect time."""
    engine = service.engine
    if engine is None or engine.tenancy is None or engine.callbacks is None:
        return
    tenancy = engine.tenancy
    if isinstance(tenancy, Tenancy):
        tenancy.callback_http = tenancy.callback_client()
        engine.callbacks.client = tenancy.callback_http


def guard_input_images(service: Service) -> None:
    """Fetch callers' input images through a client that checks every address at connect time."""
    engine = service.engine
    if engine is None or engine.tenancy is None:
        return
    tenancy = engine.tenancy
    if isinstance(tenancy, Tenancy):
        tenancy.input_http = guarded_client(tenancy.input_image_policy(), _LateResolver(tenancy))
        engine.input_client = tenancy.input_http


async def detach(service: Service) -> None:
    """Stop the refresher and close the callback client (after the engine stopped)."""
    engine = service.engine
    tenancy = engine.tenancy if engine is not None else None
    if isinstance(tenancy, Tenancy):
        await tenancy.stop()
        if tenancy.input_http is not None:
            await tenancy.input_http.aclose()
            tenancy.input_http = None
        if tenancy.callback_http is not None:
            await tenancy.callback_http.aclose()
            tenancy.callback_http = None


# -- the generation route's hooks ---------------------------------------------------------


def _tenancy_of(service: Service) -> Tenancy | None:
    tenancy = service.engine.tenancy if service.engine is not None else None
    return tenancy if isinstance(tenancy, Tenancy) else None


async def check_admission(service: Service, tenant: str, request: GenerationRequest) -> None:
    """Before a job is created: the tenant's request rate (429), then SSRF (422)."""
    tenancy = _tenancy_of(service)
    if tenancy is None:
        return
    tenancy.check_rate(tenant)
    await tenancy.check_urls(request)


@contextlib.asynccontextmanager
async def admission(
    service: Service, tenant: str, request: GenerationRequest
) -> AsyncIterator[Callable[[str], None]]:
    """Hold an in-flight slot and the job's estimated cost around ``engine.submit``.

    Yields ``created(job_id)``; when the block raises (no provider, say) before it was
    called, the reservation is released.
    """
    tenancy = _tenancy_of(service)
    if tenancy is None or service.registry is None or tenancy.unlimited(tenant):
        yield lambda _job_id: None
        return
    reservation = await tenancy.admit(tenant, estimate_cost(request, service.registry))
    job_ids: list[str] = []
    try:
        yield job_ids.append
    finally:
        await asyncio.shield(tenancy.admitted(reservation, job_ids[0] if job_ids else None))
