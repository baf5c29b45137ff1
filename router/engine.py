"""The job engine: admission, the attempt loop, polling, and failover.

Each job runs in a task of its own, so a caller that hangs up never cancels its
job. The first thing a job task does is take a guard permit for the best
candidate and write the job with that attempt, in one transaction, *before* the
upstream call (DESIGN §6); the HTTP handler waits for that write (or for the
final state under ``Prefer: wait``).

    admit ─▶ rank ─▶ for each candidate (≤ max_attempts, retry budget, deadline):
                        guard permit ─▶ write attempt ─▶ adapter.submit
                        ├─ succeeded (sync) ─────────────────────────▶ finish
                        ├─ accepted (async) ─▶ poll with backoff ─┬─▶ finish
                        │                                         └─▶ next candidate
                        ├─ caller's fault ───────────────────────────▶ fail job
                        └─ retryable ────────────────────────────────▶ next candidate

Every change is written with the events it produces (``router.events``) in one store
transaction, so the SSE stream is a replay of the store. A successful attempt's
outputs are downloaded and kept (``router.assets``) before the job succeeds; an output
that cannot be kept fails the attempt like a bad upstream answer. A failed or stalled
accepted upstream job is canceled upstream (the orphan) before the next candidate.

Restart (:meth:`JobEngine.resume`) re-drives every non-final job from the store:

- an attempt with an upstream id is polled again, never resubmitted;
- an attempt written ``running`` without an upstream id (the process died during its
  submit, outcome unknown) is *reconciled*: the adapter's optional
  ``async find_submission(ctx) -> str | None`` looks the submission up by the
  attempt's ids (``None``: the provider never got it); otherwise, when the adapter
  says ``sends_webhooks = True`` and was given a webhook URL (which names the job and
  attempt), the engine waits up to ``poll.stall_s`` for that webhook; otherwise the
  attempt fails with ``upstream_unavailable`` "submission outcome unknown" and the job
  fails over. Should the provider have accepted it after all, its webhook later reveals
  the duplicate: the engine records it on the attempt and the job
  (``duplicate_submissions``) and cancels it upstream.

Several replicas on one PostgreSQL (:meth:`JobEngine.enable_leases`): a replica owns
the non-final jobs it creates or claims under a lease in the store
(``storage.lease_s``), renews them all in one statement every third of it, and claims
(every third of it, jittered) the non-final jobs whose lease expired, e.g. those of a
killed replica, resuming each exactly as at restart above. The store fences every job
update on ownership (:class:`~router.store.LeaseLost`), and an attempt is written before
its submit, so a replica that lost a job can never submit it a second time; it stops
the job at its next write or renewal, whichever comes first. A cancel through another
replica takes the job over, cancels it upstream and ends it ``canceled``. A graceful
stop releases the leases so another replica takes the jobs over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import OrderedDict, deque
from collections.abc import Container, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

import httpx
import msgspec
import structlog
from opentelemetry.trace import INVALID_SPAN, NoOpTracer, Tracer

from breakers import GuardRejected, RetryBudget
from breakers.clock import Clock
from metrics import Metrics
from metrics.tracing import attempt_span, inject_headers, record_outcome
from router.adapters.base import AttemptContext, PollResult, SubmitResult, WebhookEvent
from router.assets import AssetRejected, AssetStore, host_of
from router.callbacks import CallbackSender, message_id
from router.config import Config
from router.errors import CALLER_KINDS, ErrorKind, NoProviderAvailable, UpstreamError
from router.events import FINAL_EVENT, EventHub, make_event
from router.models import FINAL_STATUSES, GenerationRequest, Output
from router.registry import ProviderRegistry, ProviderRuntime
from router.store import (
    AttemptRecord,
    DuplicateIdempotencyKey,
    EventRecord,
    JobRecord,
    JobStore,
    LeaseLost,
    new_attempt_id,
    new_job_id,
    to_api_attempt,
    to_api_job,
)
from strategies import ProviderStrategy
from strategies.snapshot import Ranking, RouteRequest, ScoredCandidate, Snapshot

if TYPE_CHECKING:
    from router.tenants import EngineHooks

__all__ = ["JobEngine"]

_log = structlog.get_logger("switchman.engine")
_encode = msgspec.json.encode
_decode_request = msgspec.json.Decoder(GenerationRequest).decode
#: Why an attempt written before a crash is given up on (DESIGN §6, reconciliation).
OUTCOME_UNKNOWN: Final = "submission outcome unknown"
#: Parked webhooks kept at most (oldest dropped): one per attempt a dead process left.
_MAX_PARKED_WEBHOOKS: Final = 10_000
#: An attempt is not started with less time than this left before the deadline.
_MIN_ATTEMPT_S: Final = 0.005
#: Consecutive failed polls before an accepted upstream job is given up on.
_MAX_POLL_ERRORS: Final = 5
#: Panic mode: an open breaker may be probed early once it has been open this fraction
#: of its reset timeout (so at most ~1 / fraction trials per timeout, one at a time).
_PANIC_PROBE_FRACTION: Final = 0.05


@dataclass(slots=True)
class _Run:
    """An in-flight job and the events its HTTP handler waits on."""

    job: JobRecord
    request: GenerationRequest
    deadline: float
    trace_headers: Mapping[str, str]
    persisted: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when the job ends or shutdown begins: a ``Prefer: wait`` response may go.
    answer: asyncio.Event = field(default_factory=asyncio.Event)
    no_provider: NoProviderAvailable | None = None
    #: Another replica created a job under the same idempotency key first.
    key_taken: DuplicateIdempotencyKey | None = None
    #: A verified webhook's result for the attempt being polled, and the bell it rings.
    pushed: PollResult | None = None
    pushed_for: str | None = None
    pushed_upstream_id: str | None = None
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_requested: bool = False
    task: asyncio.Task[None] | None = None
    #: The task ended without running (cancelled before its first step).
    never_started: bool = False
    #: The last event number written, and events waiting for the next write.
    event_seq: int = 0
    events: list[EventRecord] = field(default_factory=list)

    def wake_if_never_started(self, _task: asyncio.Task[None]) -> None:
        """The job task's done callback: wake :meth:`JobEngine.submit` if the task ended
        without running, as its ``finally`` (which sets :attr:`persisted`) never ran."""
        if not self.persisted.is_set():
            self.never_started = True
            self.persisted.set()


@dataclass(slots=True)
class _Outcome:
    """How one attempt ended, as the loop needs it."""

    kind: ErrorKind | None = None
    message: str = ""
    skipped: bool = False
    final: bool = False


class _NotTheProviders(BaseException):
    """Carries an error out of a guard permit without charging the provider's breaker.

    The breaker counts only ``Exception``s as provider failures; a ``BaseException``
    passes through as neutral, and the engine unwraps it right after the permit.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _only_busy_probes(ranking: Ranking, panic: Container[str] = ()) -> bool:
    """Whether some provider would be routable once its half-open probe resolves.

    Panic-mode trials (``panic``) do not count: while every breaker is open callers get
    the fast 503, not a wait on a trial that will most likely fail.
    """
    return any(e.reason == "probe_busy" and e.name not in panic for e in ranking.excluded)


class JobEngine:
    """Runs generation jobs across providers."""

    #: Tenant keys and usage settlement (``router.tenants``), set by the service.
    tenancy: EngineHooks | None = None
    #: The replica id this engine owns jobs as (:meth:`enable_leases`); ``None``: no leases.
    lease_owner: str | None = None
    lease_s: float = 15.0
    _lease_task: asyncio.Task[None] | None = None

    def __init__(
        self,
        *,
        config: Config,
        registry: ProviderRegistry,
        store: JobStore,
        strategy: ProviderStrategy,
        retry_budget: RetryBudget,
        metrics: Metrics,
        clock: Clock,
        client: httpx.AsyncClient,
        rng: random.Random | None = None,
        tracer: Tracer,
        webhook_base_url: str | None = None,
        assets: AssetStore | None = None,
        callbacks: CallbackSender | None = None,
        events: EventHub | None = None,
    ) -> None:
        self.tracer = tracer
        #: With the no-op tracer, span bookkeeping (context attach/detach) is skipped.
        self._tracing = not isinstance(tracer, NoOpTracer)
        self.config = config
        self.registry = registry
        self.store = store
        self.strategy = strategy
        self.retry_budget = retry_budget
        self.metrics = metrics
        self.clock = clock
        self.client = client
        #: The SSRF-guarded client for callers' input images (set by the tenancy layer).
        self.input_client: httpx.AsyncClient | None = None
        self.rng = rng or random.Random()
        self.webhook_base_url = webhook_base_url
        self.assets = assets
        self.callbacks = callbacks
        self.events = events or EventHub()
        self._runs: dict[str, _Run] = {}
        #: Webhooks for running attempts of jobs not running here yet (see _late_webhook).
        self._parked: OrderedDict[str, tuple[str, WebhookEvent]] = OrderedDict()
        #: Callback deliveries and late-webhook handling, kept so they are not collected.
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self._draining = asyncio.Event()
        self._transition = asyncio.Event()
        #: The latest failovers, newest last, for the on-call status page.
        self.recent_failovers: deque[dict[str, object]] = deque(maxlen=50)
        self._inflight_by_kind: dict[str, int] = {"image": 0, "video": 0}
        #: Providers with a panic-mode trial in flight (see :meth:`_panic_probe`).
        self._panic_probes: set[str] = set()
        #: Until when (monotonic) better providers still open may be probed early.
        self._panic_until = float("-inf")

    # ------------------------------------------------------------------ admission

    def route_request(self, request: GenerationRequest, remaining_s: float | None) -> RouteRequest:
        """The routing view of a request."""
        routing = request.routing
        return RouteRequest(
            kind=request.kind,
            width=request.width,
            height=request.height,
            duration_s=request.duration_s,
            aspect_ratio=request.aspect_ratio,
            n=request.n,
            policy=routing.strategy if routing else None,
            allow=tuple(routing.providers) if routing and routing.providers else None,
            exclude=frozenset(routing.exclude) if routing and routing.exclude else frozenset(),
            max_cost_usd=routing.max_cost_usd if routing else None,
            remaining_s=remaining_s,
        )

    def rank(self, request: GenerationRequest, remaining_s: float | None) -> Ranking:
        """Rank the providers for ``request`` and record the decision's cost and scores."""
        started = self.clock.monotonic()
        ranking = self.strategy.rank(
            self.route_request(request, remaining_s), self.registry.snapshot(), self.rng
        )
        self.metrics.observe_decision(self.clock.monotonic() - started)
        for cand in ranking.candidates:
            rt = self.registry.get(cand.name)
            if rt is not None:
                rt.last_score = cand.score
                rt.last_components = dict(cand.components)
        return ranking

    async def submit(
        self,
        tenant: str,
        request: GenerationRequest,
        *,
        timeout_s: float | None = None,
        trace_headers: Mapping[str, str] | None = None,
        job_id: str | None = None,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> JobRecord:
        """Admit a job: start its task and return once it is durably written.

        ``idempotency_key`` and ``fingerprint`` are written on the job row, whose unique
        ``(tenant, key)`` index makes a concurrent creation on another replica fail with
        :class:`~router.store.DuplicateIdempotencyKey` (raised here, nothing submitted).

        Raises :class:`NoProviderAvailable` (nothing written) when no provider
        can take the request right now.
        """
        budget = timeout_s if timeout_s is not None else self.config.routing.default_timeout_s
        budget = min(budget, self.config.routing.default_timeout_s)
        now = self.clock.time()
        job = JobRecord(
            id=job_id or new_job_id(),
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            tenant=tenant,
            kind=request.kind,
            status="queued",
            request=_encode(request),
            created_at=now,
            updated_at=now,
            deadline_at=now + budget,
            metadata=request.metadata,
            callback_url=request.callback_url,
        )
        run = _Run(
            job=job,
            request=request,
            deadline=self.clock.monotonic() + budget,
            trace_headers=dict(trace_headers or {}),
        )
        self._runs[job.id] = run
        task = run.task = asyncio.create_task(self._run_job(run), name=f"job {job.id}")
        # One event, no helper task or asyncio.wait: this runs for every request.
        task.add_done_callback(run.wake_if_never_started)
        await run.persisted.wait()
        if run.no_provider is not None:
            raise run.no_provider
        if run.key_taken is not None:
            raise run.key_taken
        if run.never_started:
            await task  # cancelled before its first step: surface that
        return job

    async def wait(self, job_id: str, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for an in-flight job to reach a final state.

        Returns early when the service begins shutting down (:meth:`release_waiters`),
        so ``Prefer: wait`` responses finish within the shutdown grace period.
        """
        run = self._runs.get(job_id)
        if run is None or timeout_s <= 0 or self._draining.is_set():
            return
        # One event per job, no helper tasks: this runs for nearly every request.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await run.answer.wait()

    def release_waiters(self) -> None:
        """Answer every ``Prefer: wait`` request now (graceful shutdown has begun)."""
        self._draining.set()
        for run in self._runs.values():
            run.answer.set()

    def live_job(self, job_id: str) -> JobRecord | None:
        """The in-memory record of an in-flight job (fresher than the store's)."""
        run = self._runs.get(job_id)
        return run.job if run is not None else None

    # ------------------------------------------------------------------ the loop

    async def _run_job(self, run: _Run, *, resumed: bool = False) -> None:
        job = run.job
        kind = job.kind
        self._inflight_by_kind[kind] = self._inflight_by_kind.get(kind, 0) + 1
        self.metrics.set_jobs_inflight(kind, self._inflight_by_kind[kind])
        structlog.contextvars.bind_contextvars(job_id=job.id, tenant=job.tenant)
        try:
            if resumed:
                await self._resume_chain(run)
            else:
                await self._attempt_chain(run)
        except asyncio.CancelledError:
            # Shutdown: the job stays non-final in the store and is resumed on start.
            raise
        except DuplicateIdempotencyKey as exc:
            run.key_taken = exc  # nothing was written or submitted: the caller answers
        except LeaseLost as exc:
            # Another replica owns the job now (took it over, or canceled it through
            # itself): stop here, writing nothing more; it is that replica's job.
            _log.warning("job.lease_lost", owner=exc.owner)
        except Exception as exc:  # a bug must not leave a job hanging forever
            _log.exception("job.crashed", error=type(exc).__name__)
            if run.persisted.is_set() and job.status not in FINAL_STATUSES:
                await self._finish(run, "failed", "upstream_unavailable", "internal error")
        finally:
            self._inflight_by_kind[kind] -= 1
            self.metrics.set_jobs_inflight(kind, self._inflight_by_kind[kind])
            run.persisted.set()
            run.done.set()
            run.answer.set()
            self._runs.pop(job.id, None)

    async def _attempt_chain(self, run: _Run, last: _Outcome | None = None) -> None:
        """Try candidates in rank order until one finishes the job.

        A resumed job continues its chain: its earlier attempts count towards
        ``max_attempts`` and providers that already failed it are not tried again.
        """
        job = run.job
        done_before = len(job.attempts)
        failed_providers = {a.provider for a in job.attempts if a.status != "running"}
        remaining = run.deadline - self.clock.monotonic()
        ranking = self.rank(run.request, remaining)
        if not ranking.candidates and _only_busy_probes(ranking, self._panic_probes):
            ranking = await self._await_probes(run)
        panic = None
        if not ranking.candidates:
            panic = self._panic_probe(run, ranking)
        elif self.clock.monotonic() < self._panic_until:
            # Just after panic: a provider back from the same outage may not be the
            # best; the better ones still open are probed early too (see _panic_probe).
            panic = self._panic_probe(run, ranking, ahead_of=ranking.candidates[0].name)
        if panic is not None:
            ranking = self.rank(run.request, run.deadline - self.clock.monotonic())
            self._panic_probes.add(panic)
        try:
            await self._run_candidates(run, ranking, last, done_before, failed_providers)
        finally:
            if panic is not None:
                self._panic_probes.discard(panic)

    async def _run_candidates(
        self,
        run: _Run,
        ranking: Ranking,
        last: _Outcome | None,
        done_before: int,
        failed_providers: set[str],
    ) -> None:
        """The body of :meth:`_attempt_chain` once the ranking is known."""
        if not ranking.candidates:
            if run.persisted.is_set():
                await self._finish(run, "failed", "no_provider", self._no_provider(ranking).detail)
            else:
                run.no_provider = self._no_provider(ranking)
            return
        max_attempts = self.config.routing.max_attempts
        if done_before == 0:
            self.retry_budget.record_request()
        started = done_before
        for cand in ranking.candidates:
            if started >= max_attempts or run.cancel_requested or self._closing:
                break
            if cand.name in failed_providers:
                continue
            remaining = run.deadline - self.clock.monotonic()
            if remaining < _MIN_ATTEMPT_S:
                last = _Outcome("deadline_exceeded", "the job's deadline passed")
                break
            if (
                started > 0
                and cand.expected_latency_s is not None
                and cand.expected_latency_s > remaining
            ):
                continue  # cannot finish in time; a later candidate might
            if started > 0 and not self.retry_budget.try_spend():
                self.metrics.retry_budget_exhausted()
                _log.warning("job.retry_budget_exhausted", provider=cand.name)
                break
            outcome = await self._attempt(run, cand, started + 1)
            if outcome.skipped:
                continue
            started += 1
            if outcome.final:
                return
            last = outcome
            if outcome.kind in CALLER_KINDS:
                await self._finish(run, "failed", outcome.kind, outcome.message)
                return
        if self._closing and not run.cancel_requested:
            raise asyncio.CancelledError  # shutting down: leave the job to be resumed
        if not run.persisted.is_set():
            # Every candidate refused us at the guard: nothing was attempted.
            run.no_provider = self._no_provider(ranking)
            return
        if run.cancel_requested:
            await self._finish(run, "canceled", "canceled", "canceled by the caller")
            return
        kind = last.kind if last and last.kind else "no_provider"
        message = last.message if last else "no provider could take the job"
        await self._finish(run, "failed", kind, message)

    def breaker_changed(self) -> None:
        """Wake requests waiting on a half-open probe's verdict (see :meth:`_await_probes`)."""
        self._transition.set()
        self._transition = asyncio.Event()

    async def _await_probes(self, run: _Run) -> Ranking:
        """Wait for busy half-open probes to resolve, then rank again.

        During recovery every provider may be half-open with its probe slots taken.
        Failing those callers with 503 would turn a provider's recovery into a burst
        of errors; instead they wait (bounded by ``routing.probe_wait_s`` and their
        deadline) for a probe's verdict: closed admits them, open refuses them.
        """
        give_up = min(run.deadline, self.clock.monotonic() + self.config.routing.probe_wait_s)
        while True:
            left = give_up - self.clock.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._transition.wait()
            ranking = self.rank(run.request, run.deadline - self.clock.monotonic())
            if ranking.candidates or not _only_busy_probes(ranking, self._panic_probes):
                return ranking
        return self.rank(run.request, run.deadline - self.clock.monotonic())

    def _panic_probe(self, run: _Run, ranking: Ranking, ahead_of: str | None = None) -> str | None:
        """Panic mode: every capable provider's breaker is open; maybe carry one trial.

        Like Envoy's panic threshold, refusing everything forever is worse than trying:
        the provider most likely to serve (the strategy's first choice, were every open
        breaker half-open) has its breaker turned half-open now, if it has been open for
        a twentieth of its reset timeout and no trial is in flight, and this request is its
        probe (one upstream attempt). Every other request gets the fast 503. Recovery is
        thus seen at the first trial that succeeds, not a whole reset timeout later.

        An outage that took every provider down tends to end for all of them at once,
        but the first probe to succeed may not be the best provider's. So for one reset
        timeout after panic (``ahead_of``: the best routable provider now), an open
        provider the strategy would rank before ``ahead_of`` may still be probed early,
        under the same spacing; should that probe fail, its request fails over as usual.
        Returns the provider's name, or ``None`` (no trial: answer 503 / route as usual).
        """
        open_names = {e.name for e in ranking.excluded if e.reason == "breaker_open"}
        if not open_names:
            return None
        snapshot = self.registry.snapshot()
        as_if = Snapshot(
            tuple(
                replace(p, breaker="half_open", probe_available=True) if p.name in open_names else p
                for p in snapshot.providers
            )
        )
        remaining = run.deadline - self.clock.monotonic()
        wished = self.strategy.rank(self.route_request(run.request, remaining), as_if, self.rng)
        for cand in wished.candidates:
            if cand.name == ahead_of:
                break
            rt = self.registry.get(cand.name)
            if rt is None or cand.name not in open_names or cand.name in self._panic_probes:
                continue
            breaker = rt.guard.breaker
            if breaker.probe_early(breaker.reset_timeout_s * _PANIC_PROBE_FRACTION):
                _log.info("breaker.panic_probe", provider=cand.name, after_panic=bool(ahead_of))
                if ahead_of is None:
                    until = self.clock.monotonic() + breaker.reset_timeout_s
                    self._panic_until = max(self._panic_until, until)
                return cand.name
        return None

    def _no_provider(self, ranking: Ranking) -> NoProviderAvailable:
        reasons = sorted({f"{e.name}: {e.reason}" for e in ranking.excluded})
        retry = 1.0
        for rt in self.registry:
            cd = rt.guard.cooldown.remaining_s
            if cd > 0:
                retry = min(retry, cd) if retry else cd
        detail = "no provider can take this request now"
        if reasons:
            detail += " (" + ", ".join(reasons[:10]) + ")"
        return NoProviderAvailable(detail, retry_after_s=max(1.0, retry))

    async def _attempt(self, run: _Run, cand: ScoredCandidate, seq: int) -> _Outcome:
        """One attempt at one provider, from guard permit to outcome."""
        rt = self.registry.get(cand.name)
        if rt is None or rt.drained or rt.guard.admission_reason() is not None:
            return _Outcome(skipped=True)
        unsupported = rt.adapter.supports(run.request)
        if unsupported is not None:
            # The adapter knows limits config does not state (model sizes, durations):
            # refuse before any call, as if the provider had not been ranked.
            _log.debug("attempt.unsupported", provider=rt.name, reason=unsupported)
            return _Outcome(skipped=True)
        job = run.job
        now = self.clock.time()
        attempt = AttemptRecord(
            id=new_attempt_id(),
            job_id=job.id,
            seq=seq,
            provider=rt.name,
            status="running",
            started_at=now,
        )
        started = self.clock.monotonic()
        kind: ErrorKind | None = None
        message = ""
        http_status: int | None = None
        result: SubmitResult | None = None
        if seq > 1 and job.provider is not None:
            reason = self._last_kind(job)
            self.metrics.failover(job.provider, rt.name, reason)
            self.recent_failovers.append(
                {"at": now, "job_id": job.id, "from": job.provider, "to": rt.name, "reason": reason}
            )
            _log.info("job.failed_over", provider=rt.name, previous=job.provider, reason=reason)
        spans = (
            attempt_span(self.tracer, rt.name, job.kind, seq)
            if self._tracing
            else contextlib.nullcontext(INVALID_SPAN)
        )
        with spans as span:
            trace_headers: dict[str, str] = {}
            if self._tracing:  # the upstream sees this attempt's span as its parent
                inject_headers(trace_headers)
            else:  # tracing off: pass the caller's trace context through untouched
                trace_headers.update(run.trace_headers)
            ctx = self._context(run, rt, attempt, trace_headers)
            try:
                async with rt.guard.attempt():
                    job.attempts.append(attempt)
                    if job.status != "running":
                        job.status = "running"
                        self._emit(run, "status", {"status": "running"})
                    job.provider = rt.name
                    job.updated_at = now
                    self._emit_attempt(run, attempt)
                    try:
                        await self._write(run, attempt)
                    except Exception as exc:  # our store, not the provider: spare its breaker
                        raise _NotTheProviders(exc) from exc
                    budget = min(
                        run.deadline - self.clock.monotonic(), rt.config.timeouts.request_s
                    )
                    outstanding = rt.stats.begin(job.kind)
                    try:
                        async with asyncio.timeout(max(budget, 0.0)):
                            result = await rt.adapter.submit(run.request, ctx)
                    except UpstreamError as exc:
                        if exc.kind == "auth" and ctx.api_key != rt.config.api_key:
                            # A tenant's own key was refused: that tenant's problem, not
                            # the provider's, so other tenants keep using it.
                            raise _NotTheProviders(exc) from exc
                        raise
                    finally:
                        rt.stats.end(outstanding)
            except GuardRejected:
                return _Outcome(skipped=True)
            except _NotTheProviders as wrapped:
                if not isinstance(wrapped.error, UpstreamError):
                    raise wrapped.error from None
                refused = wrapped.error
                kind, message = refused.kind, refused.message
                http_status = refused.http_status
            except UpstreamError as exc:
                kind, message, http_status = exc.kind, exc.message, exc.http_status
                if exc.kind == "rate_limited":
                    self.metrics.rate_limited(rt.name, "upstream")
            except TimeoutError:
                kind, message = "timeout", "the attempt ran out of time"
            except httpx.HTTPError as exc:  # an adapter should map these; be safe
                kind, message = "upstream_unavailable", type(exc).__name__
            record_outcome(
                span,
                kind or "success",
                upstream_id=result.upstream_id if result is not None else None,
                status_code=http_status,
            )
        latency = self.clock.monotonic() - started
        if result is None:
            return await self._attempt_failed(run, rt, attempt, kind, message, http_status, latency)
        if result.rate_limit is not None:
            rt.guard.observe_rate_limit(result.rate_limit)
        attempt.upstream_id = result.upstream_id
        if result.status == "succeeded":
            return await self._attempt_succeeded(
                run, rt, attempt, result.outputs, result.cost_usd, started
            )
        if result.status in ("failed", "canceled"):
            return await self._attempt_failed(
                run,
                rt,
                attempt,
                "malformed_response",
                "submit ended without a result",
                None,
                latency,
            )
        # Accepted by an asynchronous provider: poll it to the end.
        if result.progress is not None and result.progress != job.progress:
            job.progress = result.progress
            self._emit(run, "progress", {"progress": job.progress})
        self._emit_attempt(run, attempt)
        await self._write(run, attempt)
        return await self._poll_until_final(run, rt, attempt, ctx, result.poll_after_s, started)

    async def _attempt_succeeded(
        self,
        run: _Run,
        rt: ProviderRuntime,
        attempt: AttemptRecord,
        outputs: tuple[Output, ...],
        cost_usd: float,
        started: float,
    ) -> _Outcome:
        """Keep the outputs, then finish the job; an output that cannot be kept fails over."""
        job = run.job
        kept = list(outputs)
        if self.assets is not None:
            try:
                left = max(run.deadline - self.clock.monotonic(), _MIN_ATTEMPT_S)
                async with asyncio.timeout(left):
                    # An adapter whose file URLs need its credential says so (Gemini).
                    hook = getattr(rt.adapter, "output_headers", None)
                    kept = await self.assets.ingest(
                        job.tenant,
                        job.id,
                        job.kind,
                        kept,
                        headers_for=(lambda url: hook(url, rt.config.api_key)) if hook else None,
                        provider_host=host_of(rt.config.base_url),
                    )
            except AssetRejected as exc:
                latency = self.clock.monotonic() - started
                return await self._attempt_failed(
                    run, rt, attempt, exc.kind, exc.message, None, latency
                )
            except TimeoutError:
                latency = self.clock.monotonic() - started
                return await self._attempt_failed(
                    run,
                    rt,
                    attempt,
                    "timeout",
                    "downloading the outputs ran out of time",
                    None,
                    latency,
                )
        latency = self.clock.monotonic() - started
        rt.stats.record(job.kind, True, latency)
        self.metrics.observe_attempt(rt.name, job.kind, "success", latency)
        attempt.status = "succeeded"
        attempt.ended_at = self.clock.time()
        attempt.latency_s = latency
        attempt.cost_usd = cost_usd
        job.outputs = kept
        job.cost_usd += cost_usd
        if job.progress != 100:
            job.progress = 100
            self._emit(run, "progress", {"progress": 100})
        self.metrics.add_cost(rt.name, job.kind, cost_usd)
        self._emit_attempt(run, attempt)
        for output in kept:
            self._emit(run, "output", output)
        await self._finish(run, "succeeded", None, None, attempt)
        return _Outcome(final=True)

    async def _attempt_failed(
        self,
        run: _Run,
        rt: ProviderRuntime | None,
        attempt: AttemptRecord,
        kind: ErrorKind | None,
        message: str,
        http_status: int | None,
        latency: float,
    ) -> _Outcome:
        job = run.job
        kind = kind or "upstream_unavailable"
        if kind == "auth" and self.tenancy is not None:
            await self.tenancy.auth_rejected(job.tenant, attempt.provider)
        if rt is not None:
            if kind not in CALLER_KINDS and kind != "rate_limited":
                started = self.clock.monotonic() - latency
                rt.stats.record(job.kind, False, None, started_s=started)
            self.metrics.observe_attempt(rt.name, job.kind, kind, latency)
        attempt.status = "failed"
        attempt.error_kind = kind
        attempt.error_message = message[:500]
        attempt.http_status = http_status
        attempt.ended_at = self.clock.time()
        attempt.latency_s = latency
        job.updated_at = attempt.ended_at
        _log.info(
            "attempt.failed",
            provider=attempt.provider,
            attempt=attempt.seq,
            outcome=kind,
            status=http_status,
        )
        if attempt in job.attempts:
            self._emit_attempt(run, attempt)
            await self._write(run, attempt)
        return _Outcome(kind, message)

    async def _cancel_orphan(
        self, rt: ProviderRuntime, upstream_id: str | None, ctx: AttemptContext
    ) -> bool:
        """Cancel an upstream job Switchman gives up on, so it stops costing money."""
        if not upstream_id:
            return False
        canceled = False
        with contextlib.suppress(UpstreamError, httpx.HTTPError, TimeoutError):
            async with asyncio.timeout(rt.config.timeouts.request_s):
                canceled = await rt.adapter.cancel(upstream_id, ctx)
        _log.info("attempt.orphan_canceled", provider=rt.name, canceled=canceled)
        return canceled

    async def _poll_until_final(
        self,
        run: _Run,
        rt: ProviderRuntime,
        attempt: AttemptRecord,
        ctx: AttemptContext,
        first_delay: float | None,
        started: float,
    ) -> _Outcome:
        """Poll an accepted upstream job with jittered backoff until it ends."""
        job = run.job
        poll = rt.config.poll
        interval = first_delay if first_delay is not None else poll.interval_s
        job_deadline = min(run.deadline, started + rt.config.timeouts.job_s)
        last_progress_at = self.clock.monotonic()
        errors = 0
        upstream_id = attempt.upstream_id or ""
        while True:
            if run.cancel_requested:
                await self._cancel_orphan(rt, upstream_id, ctx)
                attempt.status = "canceled"
                attempt.ended_at = self.clock.time()
                self._emit_attempt(run, attempt)
                await self._finish(run, "canceled", "canceled", "canceled by the caller", attempt)
                return _Outcome(final=True)
            if self._closing:
                raise asyncio.CancelledError  # shutting down: the job is resumed on start
            now = self.clock.monotonic()
            if now >= job_deadline or now - last_progress_at > poll.stall_s:
                await self._cancel_orphan(rt, upstream_id, ctx)
                return await self._attempt_failed(
                    run,
                    rt,
                    attempt,
                    "timeout",
                    "the upstream job stalled or ran out of time",
                    None,
                    now - started,
                )
            delay = min(interval * (0.8 + 0.4 * self.rng.random()), job_deadline - now)
            if run.pushed is not None and run.pushed_for == attempt.id:
                delay = 0.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await run.wakeup.wait()  # a webhook or a cancel rings early
            run.wakeup.clear()
            if self._interrupted(run):
                continue  # handled at the top of the loop
            interval = min(interval * 1.5, poll.max_interval_s)
            state: PollResult
            try:
                if run.pushed is not None and run.pushed_for == attempt.id:
                    state, run.pushed = run.pushed, None
                else:
                    async with asyncio.timeout(rt.config.timeouts.request_s):
                        state = await rt.adapter.poll(upstream_id, ctx)
            except (UpstreamError, httpx.HTTPError, TimeoutError) as exc:
                errors += 1
                if errors >= _MAX_POLL_ERRORS:
                    kind: ErrorKind = exc.kind if isinstance(exc, UpstreamError) else "timeout"
                    await self._cancel_orphan(rt, upstream_id, ctx)
                    return await self._attempt_failed(
                        run,
                        rt,
                        attempt,
                        kind,
                        "polling kept failing",
                        None,
                        self.clock.monotonic() - started,
                    )
                continue
            errors = 0
            if state.progress is not None and state.progress != job.progress:
                job.progress = state.progress
                last_progress_at = self.clock.monotonic()
                job.updated_at = self.clock.time()
                self._emit(run, "progress", {"progress": job.progress})
                await self._write(run)
            if state.status in ("queued", "running"):
                if state.poll_after_s is not None:
                    interval = state.poll_after_s
                continue
            if state.status == "succeeded":
                return await self._attempt_succeeded(
                    run, rt, attempt, state.outputs, state.cost_usd, started
                )
            kind = state.error_kind or (
                "canceled" if state.status == "canceled" else "upstream_unavailable"
            )
            return await self._attempt_failed(
                run,
                rt,
                attempt,
                kind,
                state.error_message or f"upstream {state.status}",
                None,
                self.clock.monotonic() - started,
            )

    async def _finish(
        self,
        run: _Run,
        status: str,
        code: str | None,
        message: str | None,
        attempt: AttemptRecord | None = None,
    ) -> None:
        job = run.job
        if self.tenancy is not None:  # settle before the end is visible, so a slot is free
            await self.tenancy.job_finished(job)
        now = self.clock.time()
        job.status = status
        job.error_code = code
        job.error_message = message
        job.updated_at = now
        job.completed_at = now
        if job.callback_url and self.callbacks is not None and job.callback_state is None:
            job.callback_state = "pending"
        self._emit(run, "status", {"status": status})
        self._emit(run, FINAL_EVENT, to_api_job(job))
        if attempt is not None:
            await self._write(run, attempt)
        elif run.persisted.is_set():
            await self._write(run)
        self.metrics.job_finished(job.kind, status)
        _log.info("job.finished", status=status, provider=job.provider, outcome=code or "success")
        if job.callback_state == "pending":
            self._spawn(self._send_callback(job), f"callback {job.id}")

    # ------------------------------------------------------------------ events and writes

    def _emit(self, run: _Run, type_: str, data: object) -> None:
        """Queue an event; it is written with the next store write of the job."""
        run.event_seq += 1
        run.events.append(make_event(run.job.id, run.event_seq, type_, data, self.clock.time()))

    def _emit_attempt(self, run: _Run, attempt: AttemptRecord) -> None:
        self._emit(run, "attempt", to_api_attempt(attempt))

    async def _write(self, run: _Run, *attempts: AttemptRecord) -> None:
        """Persist the job (created on first write), ``attempts`` and queued events."""
        events, run.events = run.events, []
        if not run.persisted.is_set():
            await self.store.create_job(run.job, events)
            run.persisted.set()
        else:
            await self.store.save(run.job, *attempts, events=events)
        if events:
            self.events.notify(run.job.id)

    def _spawn(self, coro: Coroutine[object, object, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ callbacks

    async def _send_callback(self, job: JobRecord) -> None:
        """Deliver a final job to its ``callback_url`` and record the outcome."""
        assert self.callbacks is not None
        url = job.callback_url
        if url is None:
            return
        body = msgspec.json.encode(to_api_job(job))
        delivered = await self.callbacks.deliver(url, message_id(job.id), body)
        job.callback_state = "delivered" if delivered else "failed"
        with contextlib.suppress(Exception):
            await self.store.save_job(job)

    async def resume_callbacks(self) -> int:
        """Re-send callbacks a previous process left pending; returns how many."""
        if self.callbacks is None:
            return 0
        jobs = await self.store.pending_callbacks()
        for job in jobs:
            self._spawn(self._send_callback(job), f"callback {job.id}")
        return len(jobs)

    # ------------------------------------------------------------------ resume

    async def resume(self, *, take_all: bool = False, take_from: Sequence[str] = ()) -> int:
        """Re-drive the non-final jobs in the store; returns how many were resumed.

        Called once at start, before requests are served; the jobs run in their own
        tasks, so this returns at once. Without leases every non-final job is resumed;
        with leases only those claimed: whose lease expired or that nobody owns, those
        of the owners in ``take_from`` (known dead, e.g. this replica's previous
        process), or every one with ``take_all`` (a lone SQLite replica: their owner
        was this file's previous process).
        """
        if self.lease_owner is None:
            jobs = await self.store.nonfinal_jobs(limit=100_000)
        else:
            jobs = []
            for dead in take_from:
                jobs += await self.store.claim_jobs(self.lease_owner, self.lease_s, from_owner=dead)
            jobs += await self.store.claim_jobs(
                self.lease_owner, self.lease_s, limit=100_000, expired_only=not take_all
            )
        count = 0
        for job in jobs:
            count += await self._resume_job(job)
        if count:
            _log.info("engine.resumed", jobs=count)
        return count

    async def _resume_job(self, job: JobRecord) -> bool:
        """Start a task that continues ``job`` (see :meth:`_resume_chain`)."""
        if job.id in self._runs:
            return False
        try:
            request = _decode_request(job.request)
        except msgspec.DecodeError:
            _log.error("job.unresumable", job_id=job.id)
            return False
        left = job.deadline_at - self.clock.time()
        run = _Run(
            job=job,
            request=request,
            deadline=self.clock.monotonic() + left,
            trace_headers={},
        )
        run.persisted.set()
        run.event_seq = await self.store.last_event_seq(job.id)
        if job.id in self._runs:
            return False
        self._runs[job.id] = run
        self._unpark(run)  # no await since the line above: no webhook can slip between
        run.task = asyncio.create_task(self._run_job(run, resumed=True), name=f"job {job.id}")
        return True

    # ------------------------------------------------------------------ leases

    def enable_leases(self, owner: str, lease_s: float) -> None:
        """Own jobs as replica ``owner``: created jobs are claimed, updates fenced."""
        self.lease_owner = owner
        self.lease_s = lease_s
        self.store.use_leases(owner, lease_s)

    def start_lease_loop(self) -> None:
        """Renew this replica's leases and take over expired ones, every ~lease_s/3."""
        if self.lease_owner is not None and self._lease_task is None:
            self._lease_task = asyncio.create_task(self._keep_leases(), name="leases")

    async def _keep_leases(self) -> None:
        while True:
            # Jittered below a third, so replicas started together do not claim in step
            # and a lease is renewed at least twice before it could expire.
            await asyncio.sleep(self.lease_s / 3 * (0.8 + 0.2 * self.rng.random()))
            try:
                await self.renew_leases()
            except Exception as exc:  # the store may be briefly away: the lease has slack
                _log.warning("lease.renew_failed", error=type(exc).__name__)
            try:
                await self.take_over()
            except Exception as exc:
                _log.warning("lease.takeover_failed", error=type(exc).__name__)

    async def renew_leases(self) -> set[str]:
        """Renew the leases of the jobs running here in one statement; stop (without a
        write) those another replica holds now. Returns the ids of the jobs stopped."""
        owner = self.lease_owner
        if owner is None:
            return set()
        ids = [jid for jid, run in self._runs.items() if run.persisted.is_set()]
        kept = await self.store.renew_leases(owner, ids, self.lease_s)
        lost = set(ids) - kept
        for job_id in lost:
            run = self._runs.get(job_id)
            if run is not None and run.task is not None and not run.task.done():
                _log.warning("job.lease_lost", job_id=job_id)
                run.task.cancel()
        return lost

    async def take_over(self, limit: int = 100) -> int:
        """Claim non-final jobs whose lease expired and resume them here; how many."""
        owner = self.lease_owner
        if owner is None:
            return 0
        jobs = await self.store.claim_jobs(owner, self.lease_s, limit=limit)
        count = 0
        for job in jobs:
            count += await self._resume_job(job)
        if count:
            _log.info("lease.taken_over", jobs=count)
        return count

    async def _resume_chain(self, run: _Run) -> None:
        """Continue a job a previous process left non-final."""
        job = run.job
        _log.info("job.resumed", attempts=len(job.attempts))
        last = job.attempts[-1] if job.attempts else None
        if last is None or last.status != "running":
            await self._attempt_chain(run)  # between attempts: the next candidate
            return
        rt = self.registry.get(last.provider)
        if rt is None:
            await self._attempt_failed(
                run, None, last, "not_found", "the provider is no longer configured", None, 0.0
            )
            await self._attempt_chain(run, _Outcome("not_found", "provider gone"))
            return
        ctx = self._context(run, rt, last, {})
        elapsed = max(self.clock.time() - (last.started_at or self.clock.time()), 0.0)
        started = self.clock.monotonic() - elapsed
        if run.deadline - self.clock.monotonic() < _MIN_ATTEMPT_S:
            await self._cancel_orphan(rt, last.upstream_id, ctx)
            await self._attempt_failed(
                run, rt, last, "deadline_exceeded", "the job's deadline passed", None, elapsed
            )
            await self._finish(run, "failed", "deadline_exceeded", "the job's deadline passed")
            return
        if last.upstream_id is None:
            upstream_id = await self._reconcile(run, rt, last, ctx)
            if upstream_id is None:
                outcome = await self._attempt_failed(
                    run, rt, last, "upstream_unavailable", OUTCOME_UNKNOWN, None, elapsed
                )
                await self._attempt_chain(run, outcome)
                return
            last.upstream_id = upstream_id
            self._emit_attempt(run, last)
            await self._write(run, last)
        outcome = await self._poll_until_final(run, rt, last, ctx, 0.0, started)
        if outcome.final:
            return
        if outcome.kind in CALLER_KINDS:
            await self._finish(run, "failed", outcome.kind, outcome.message)
            return
        await self._attempt_chain(run, outcome)

    async def _reconcile(
        self, run: _Run, rt: ProviderRuntime, attempt: AttemptRecord, ctx: AttemptContext
    ) -> str | None:
        """The upstream id of an attempt whose submit outcome is unknown, if it can be found.

        ``None`` means the outcome stays unknown (or the provider never got it); the
        caller fails the attempt and fails over.
        """
        find = getattr(rt.adapter, "find_submission", None)
        if find is not None:
            try:
                async with asyncio.timeout(rt.config.timeouts.request_s):
                    found: str | None = await find(ctx)
            except (UpstreamError, httpx.HTTPError, TimeoutError) as exc:
                _log.warning("attempt.reconcile_failed", provider=rt.name, error=repr(exc))
            else:
                _log.info("attempt.reconciled", provider=rt.name, by="lookup", found=bool(found))
                return found
        if ctx.webhook_url is None or not getattr(rt.adapter, "sends_webhooks", False):
            return None
        # The provider was told to call back with this job's and attempt's ids: wait.
        wait_s = min(rt.config.poll.stall_s, run.deadline - self.clock.monotonic())
        give_up = self.clock.monotonic() + max(wait_s, 0.0)
        while run.pushed_for != attempt.id or run.pushed_upstream_id is None:
            left = give_up - self.clock.monotonic()
            if left <= 0 or run.cancel_requested or self._closing:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await run.wakeup.wait()
            run.wakeup.clear()
        if self._closing:
            raise asyncio.CancelledError
        if run.pushed_for == attempt.id and run.pushed_upstream_id:
            _log.info("attempt.reconciled", provider=rt.name, by="webhook", found=True)
            return run.pushed_upstream_id
        return None

    # ------------------------------------------------------------------ helpers

    def _context(
        self,
        run: _Run,
        rt: ProviderRuntime,
        attempt: AttemptRecord,
        trace_headers: Mapping[str, str],
    ) -> AttemptContext:
        webhook = None
        if self.webhook_base_url:
            webhook = (
                f"{self.webhook_base_url}/v1/webhooks/{rt.name}"
                f"?job={attempt.job_id}&attempt={attempt.id}"
            )
        return AttemptContext(
            client=self.client,
            job_id=attempt.job_id,
            attempt_id=attempt.id,
            deadline=run.deadline,
            api_key=(
                rt.config.api_key
                if self.tenancy is None
                else self.tenancy.api_key(run.job.tenant, rt.name, rt.config.api_key)
            ),
            webhook_url=webhook,
            trace_headers=trace_headers,
            input_client=self.input_client,
        )

    @staticmethod
    def _last_kind(job: JobRecord) -> str:
        for attempt in reversed(job.attempts):
            if attempt.error_kind:
                return attempt.error_kind
        return "unknown"

    def _interrupted(self, run: _Run) -> bool:
        """Whether the caller canceled the job or the engine is shutting down."""
        return run.cancel_requested or self._closing

    def oldest_inflight_created_at(self) -> float | None:
        """When the oldest job running in this process was created."""
        return min((r.job.created_at for r in self._runs.values()), default=None)

    # ------------------------------------------------------------------ lifecycle

    async def cancel(self, job_id: str) -> bool:
        """Ask an in-flight job to stop; ``False`` when it is not running here."""
        run = self._runs.get(job_id)
        if run is None:
            return False
        run.cancel_requested = True
        run.wakeup.set()
        return True

    async def cancel_job(self, tenant: str, job_id: str, wait_s: float = 10.0) -> JobRecord | None:
        """Cancel a tenant's job wherever it runs; ``None`` when the tenant has no such job.

        In this process the job's task cancels upstream and ends it. Otherwise (the
        job is not running here) the store is updated directly and the running
        attempt's upstream job canceled where the provider allows. The job ends
        ``canceled`` either way; a job already final is returned unchanged.
        """
        run = self._runs.get(job_id)
        if run is not None and run.job.tenant == tenant:
            run.cancel_requested = True
            run.wakeup.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await run.done.wait()
            return run.job
        job = await self.store.get_job(tenant, job_id)
        if job is None or job.status in FINAL_STATUSES:
            return job
        if self.lease_owner is not None:
            # Another replica runs it: take it over, so that replica's next write fails
            # (LeaseLost) and its next renewal stops the job; then end it here.
            taken = await self.store.take_job(tenant, job_id, self.lease_owner, self.lease_s)
            if taken is None:  # it ended meanwhile
                return await self.store.get_job(tenant, job_id)
            job = taken
        detached = _Run(
            job=job,
            request=_decode_request(job.request),
            deadline=self.clock.monotonic(),
            trace_headers={},
        )
        detached.persisted.set()
        detached.event_seq = await self.store.last_event_seq(job.id)
        running = [a for a in job.attempts if a.status == "running"]
        for attempt in running:
            rt = self.registry.get(attempt.provider)
            if rt is not None:
                ctx = self._context(detached, rt, attempt, {})
                await self._cancel_orphan(rt, attempt.upstream_id, ctx)
            attempt.status = "canceled"
            attempt.ended_at = self.clock.time()
            self._emit_attempt(detached, attempt)
        await self.store.save(job, *running)  # the attempts first, events below
        await self._finish(detached, "canceled", "canceled", "canceled by the caller")
        return job

    def deliver_webhook(
        self,
        provider: str,
        job_id: str | None,
        attempt_id: str | None,
        event: WebhookEvent,
        *,
        forwarded: bool = False,
    ) -> bool:
        """Apply a verified webhook to the attempt it names; ``False`` when none matches.

        A webhook for an attempt given up on as "submission outcome unknown" reveals a
        duplicate submission: it is recorded and canceled upstream in the background.
        A ``forwarded`` one (another replica received it, :mod:`router.webhook_relay`)
        is only applied to a job running here: the receiver handled the rest.
        """
        run = self._runs.get(job_id) if job_id else None
        if run is not None:
            for attempt in reversed(run.job.attempts):
                matches = attempt.id == attempt_id or (
                    attempt_id is None and attempt.upstream_id == event.upstream_id
                )
                if not matches or attempt.provider != provider:
                    continue
                if attempt.status == "running":
                    run.pushed, run.pushed_for = event.result, attempt.id
                    run.pushed_upstream_id = event.upstream_id
                    run.wakeup.set()
                    return True
                if _outcome_was_unknown(attempt):
                    self._spawn(
                        self._record_duplicate(run.job.tenant, run.job.id, attempt.id, event),
                        f"duplicate {attempt.id}",
                    )
                    return True
            return False
        if job_id and attempt_id and not forwarded:
            self._spawn(self._late_webhook(provider, job_id, attempt_id, event), f"late {job_id}")
            return True
        return False

    async def _late_webhook(
        self, provider: str, job_id: str, attempt_id: str, event: WebhookEvent
    ) -> None:
        """A webhook for a job not running here: a duplicate to record, or one to keep.

        An attempt still ``running`` in the store belongs to a job a dead process left
        that no one has resumed yet (here it waits for its lease, or the restart is
        still resuming): the webhook is the only news of its upstream id, and the
        provider will not send it again. It is parked for :meth:`_resume_job`; dropped,
        the resumed job would wait for it in vain, call the outcome unknown and submit
        the job elsewhere while the provider runs it too.
        """
        job = await self.store.get_job(None, job_id)
        if job is None:
            return
        if job_id in self._runs:  # resumed while the store answered
            self.deliver_webhook(provider, job_id, attempt_id, event, forwarded=True)
            return
        for attempt in job.attempts:
            if attempt.id == attempt_id and attempt.provider == provider:
                if _outcome_was_unknown(attempt):
                    await self._record_duplicate(job.tenant, job_id, attempt_id, event)
                elif attempt.status == "running":
                    self._park(attempt_id, provider, event)
                return

    def _park(self, attempt_id: str, provider: str, event: WebhookEvent) -> None:
        self._parked[attempt_id] = (provider, event)
        self._parked.move_to_end(attempt_id)
        while len(self._parked) > _MAX_PARKED_WEBHOOKS:
            self._parked.popitem(last=False)
        _log.info("webhook.parked", provider=provider, attempt_id=attempt_id)

    def _unpark(self, run: _Run) -> None:
        """Apply a parked webhook to the running attempt of a job about to resume."""
        for attempt in run.job.attempts:
            parked = self._parked.pop(attempt.id, None)
            if parked is None:
                continue
            provider, event = parked
            if attempt.status == "running" and attempt.provider == provider:
                run.pushed, run.pushed_for = event.result, attempt.id
                run.pushed_upstream_id = event.upstream_id

    async def _record_duplicate(
        self, tenant: str, job_id: str, attempt_id: str, event: WebhookEvent
    ) -> None:
        """Record that an attempt given up on did reach the provider, and cancel it there."""
        run = self._runs.get(job_id)
        if run is None:
            job = await self.store.get_job(tenant, job_id)
            if job is None:
                return
            run = _Run(
                job=job, request=_decode_request(job.request), deadline=0.0, trace_headers={}
            )
            run.persisted.set()
            run.event_seq = await self.store.last_event_seq(job_id)
        attempt = next((a for a in run.job.attempts if a.id == attempt_id), None)
        if attempt is None or not _outcome_was_unknown(attempt):
            return
        attempt.upstream_id = event.upstream_id
        attempt.error_message = f"{OUTCOME_UNKNOWN}; duplicate submission detected"
        run.job.duplicate_submissions += 1
        rt = self.registry.get(attempt.provider)
        canceled = False
        if rt is not None and event.result.status not in FINAL_STATUSES:
            canceled = await self._cancel_orphan(
                rt, event.upstream_id, self._context(run, rt, attempt, {})
            )
        if canceled:
            attempt.error_message += " and canceled upstream"
        _log.warning(
            "job.duplicate_detected", job_id=job_id, provider=attempt.provider, canceled=canceled
        )
        self._emit_attempt(run, attempt)
        await self._write(run, attempt)

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop every job task; their jobs stay resumable in the store.

        Jobs that are polling stop at once; a submit in flight is given up to
        ``grace_s`` to finish, so its upstream id is recorded rather than unknown.
        """
        self._closing = True
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
            self._lease_task = None
        for run in self._runs.values():
            run.wakeup.set()
        tasks = [r.task for r in self._runs.values() if r.task is not None]
        if grace_s > 0 and tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        background = list(self._background)
        for task in [*tasks, *background]:
            task.cancel()
        for task in [*tasks, *background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.lease_owner is not None:
            # Hand the jobs left non-final to another replica now, not after lease_s.
            try:
                released = await self.store.release_leases(self.lease_owner)
            except Exception as exc:  # they are taken over when the leases expire
                _log.warning("lease.release_failed", error=type(exc).__name__)
            else:
                _log.info("lease.released", jobs=released)


def _outcome_was_unknown(attempt: AttemptRecord) -> bool:
    return (
        attempt.status == "failed"
        and attempt.upstream_id is None
        and (attempt.error_message or "").startswith(OUTCOME_UNKNOWN)
    )
