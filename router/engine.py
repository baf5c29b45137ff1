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
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import httpx
import msgspec
import structlog
from opentelemetry.trace import Tracer

from breakers import GuardRejected, RetryBudget
from breakers.clock import Clock
from metrics import Metrics
from metrics.tracing import attempt_span, inject_headers, record_outcome
from router.adapters.base import AttemptContext, PollResult, SubmitResult, WebhookEvent
from router.config import Config
from router.errors import CALLER_KINDS, ErrorKind, NoProviderAvailable, UpstreamError
from router.models import FINAL_STATUSES, GenerationRequest
from router.registry import ProviderRegistry, ProviderRuntime
from router.store import AttemptRecord, JobRecord, JobStore, new_attempt_id, new_job_id
from strategies import ProviderStrategy
from strategies.snapshot import Ranking, RouteRequest, ScoredCandidate

__all__ = ["JobEngine"]

_log = structlog.get_logger("switchman.engine")
_encode = msgspec.json.encode
#: An attempt is not started with less time than this left before the deadline.
_MIN_ATTEMPT_S: Final = 0.005
#: Consecutive failed polls before an accepted upstream job is given up on.
_MAX_POLL_ERRORS: Final = 5


@dataclass(slots=True)
class _Run:
    """An in-flight job and the events its HTTP handler waits on."""

    job: JobRecord
    request: GenerationRequest
    deadline: float
    trace_headers: Mapping[str, str]
    persisted: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    no_provider: NoProviderAvailable | None = None
    #: A verified webhook's result for the attempt being polled, and the bell it rings.
    pushed: PollResult | None = None
    pushed_for: str | None = None
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_requested: bool = False
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Outcome:
    """How one attempt ended, as the loop needs it."""

    kind: ErrorKind | None = None
    message: str = ""
    skipped: bool = False
    final: bool = False


def _only_busy_probes(ranking: Ranking) -> bool:
    """Whether some provider would be routable once its half-open probe resolves."""
    return any(e.reason == "probe_busy" for e in ranking.excluded)


class JobEngine:
    """Runs generation jobs across providers."""

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
    ) -> None:
        self.tracer = tracer
        self.config = config
        self.registry = registry
        self.store = store
        self.strategy = strategy
        self.retry_budget = retry_budget
        self.metrics = metrics
        self.clock = clock
        self.client = client
        self.rng = rng or random.Random()
        self.webhook_base_url = webhook_base_url
        self._runs: dict[str, _Run] = {}
        self._transition = asyncio.Event()
        #: The latest failovers, newest last, for the on-call status page.
        self.recent_failovers: deque[dict[str, object]] = deque(maxlen=50)
        self._inflight_by_kind: dict[str, int] = {"image": 0, "video": 0}

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
    ) -> JobRecord:
        """Admit a job: start its task and return once it is durably written.

        Raises :class:`NoProviderAvailable` (nothing written) when no provider
        can take the request right now.
        """
        budget = timeout_s if timeout_s is not None else self.config.routing.default_timeout_s
        budget = min(budget, self.config.routing.default_timeout_s)
        now = self.clock.time()
        job = JobRecord(
            id=new_job_id(),
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
        run.task = asyncio.create_task(self._run_job(run), name=f"job {job.id}")
        persisted = asyncio.ensure_future(run.persisted.wait())
        try:
            await asyncio.wait({persisted, run.task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            persisted.cancel()
        if run.no_provider is not None:
            raise run.no_provider
        if not run.persisted.is_set():
            # The task died before writing anything: surface its error.
            await run.task
        return job

    async def wait(self, job_id: str, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for an in-flight job to reach a final state."""
        run = self._runs.get(job_id)
        if run is None or timeout_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await run.done.wait()

    def live_job(self, job_id: str) -> JobRecord | None:
        """The in-memory record of an in-flight job (fresher than the store's)."""
        run = self._runs.get(job_id)
        return run.job if run is not None else None

    # ------------------------------------------------------------------ the loop

    async def _run_job(self, run: _Run) -> None:
        job = run.job
        kind = job.kind
        self._inflight_by_kind[kind] = self._inflight_by_kind.get(kind, 0) + 1
        self.metrics.set_jobs_inflight(kind, self._inflight_by_kind[kind])
        structlog.contextvars.bind_contextvars(job_id=job.id, tenant=job.tenant)
        try:
            await self._attempt_chain(run)
        except asyncio.CancelledError:
            # Shutdown: the job stays non-final in the store and is resumed on start.
            raise
        except Exception as exc:  # a bug must not leave a job hanging forever
            _log.exception("job.crashed", error=type(exc).__name__)
            if run.persisted.is_set() and job.status not in FINAL_STATUSES:
                await self._finish(run, "failed", "upstream_unavailable", "internal error")
        finally:
            self._inflight_by_kind[kind] -= 1
            self.metrics.set_jobs_inflight(kind, self._inflight_by_kind[kind])
            run.persisted.set()
            run.done.set()
            self._runs.pop(job.id, None)

    async def _attempt_chain(self, run: _Run) -> None:
        remaining = run.deadline - self.clock.monotonic()
        ranking = self.rank(run.request, remaining)
        if not ranking.candidates and _only_busy_probes(ranking):
            ranking = await self._await_probes(run)
        if not ranking.candidates:
            run.no_provider = self._no_provider(ranking)
            return
        max_attempts = self.config.routing.max_attempts
        self.retry_budget.record_request()
        last: _Outcome | None = None
        started = 0
        for cand in ranking.candidates:
            if started >= max_attempts or run.cancel_requested:
                break
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
            if ranking.candidates or not _only_busy_probes(ranking):
                return ranking
        return self.rank(run.request, run.deadline - self.clock.monotonic())

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
        with attempt_span(self.tracer, rt.name, job.kind, seq) as span:
            # The upstream sees this attempt's span as its parent (W3C traceparent).
            trace_headers: dict[str, str] = {}
            inject_headers(trace_headers)
            ctx = self._context(run, rt, attempt, trace_headers)
            try:
                async with rt.guard.attempt():
                    job.attempts.append(attempt)
                    job.status = "running"
                    job.provider = rt.name
                    job.updated_at = now
                    if not run.persisted.is_set():
                        await self.store.create_job(job)
                        run.persisted.set()
                    else:
                        await self.store.save(job, attempt)
                    budget = min(
                        run.deadline - self.clock.monotonic(), rt.config.timeouts.request_s
                    )
                    async with asyncio.timeout(max(budget, 0.0)):
                        result = await rt.adapter.submit(run.request, ctx)
            except GuardRejected:
                return _Outcome(skipped=True)
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
            rt.stats.record(job.kind, True, latency)
            self.metrics.observe_attempt(rt.name, job.kind, "success", latency)
            attempt.status = "succeeded"
            attempt.ended_at = self.clock.time()
            attempt.latency_s = latency
            attempt.cost_usd = result.cost_usd
            job.outputs = list(result.outputs)
            job.cost_usd += result.cost_usd
            job.progress = 100
            self.metrics.add_cost(rt.name, job.kind, result.cost_usd)
            await self._finish(run, "succeeded", None, None, attempt)
            return _Outcome(final=True)
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
        if result.progress is not None:
            job.progress = result.progress
        await self.store.save(job, attempt)
        return await self._poll_until_final(run, rt, attempt, ctx, result.poll_after_s, started)

    async def _attempt_failed(
        self,
        run: _Run,
        rt: ProviderRuntime,
        attempt: AttemptRecord,
        kind: ErrorKind | None,
        message: str,
        http_status: int | None,
        latency: float,
    ) -> _Outcome:
        job = run.job
        kind = kind or "upstream_unavailable"
        if kind not in CALLER_KINDS and kind != "rate_limited":
            rt.stats.record(job.kind, False, None)
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
            provider=rt.name,
            attempt=attempt.seq,
            outcome=kind,
            status=http_status,
        )
        if attempt in job.attempts:
            await self.store.save(job, attempt)
        return _Outcome(kind, message)

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
                with contextlib.suppress(UpstreamError, httpx.HTTPError, TimeoutError):
                    await rt.adapter.cancel(upstream_id, ctx)
                attempt.status = "canceled"
                attempt.ended_at = self.clock.time()
                await self._finish(run, "canceled", "canceled", "canceled by the caller", attempt)
                return _Outcome(final=True)
            now = self.clock.monotonic()
            if now >= job_deadline or now - last_progress_at > poll.stall_s:
                with contextlib.suppress(UpstreamError, httpx.HTTPError, TimeoutError):
                    await rt.adapter.cancel(upstream_id, ctx)
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
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await run.wakeup.wait()  # a webhook or a cancel rings early
            run.wakeup.clear()
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
                await self.store.save_job(job)
            if state.status in ("queued", "running"):
                if state.poll_after_s is not None:
                    interval = state.poll_after_s
                continue
            latency = self.clock.monotonic() - started
            if state.status == "succeeded":
                rt.stats.record(job.kind, True, latency)
                self.metrics.observe_attempt(rt.name, job.kind, "success", latency)
                attempt.status = "succeeded"
                attempt.ended_at = self.clock.time()
                attempt.latency_s = latency
                attempt.cost_usd = state.cost_usd
                job.outputs = list(state.outputs)
                job.cost_usd += state.cost_usd
                job.progress = 100
                self.metrics.add_cost(rt.name, job.kind, state.cost_usd)
                await self._finish(run, "succeeded", None, None, attempt)
                return _Outcome(final=True)
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
                latency,
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
        now = self.clock.time()
        job.status = status
        job.error_code = code
        job.error_message = message
        job.updated_at = now
        job.completed_at = now
        if attempt is not None:
            await self.store.save(job, attempt)
        elif run.persisted.is_set():
            await self.store.save_job(job)
        self.metrics.job_finished(job.kind, status)
        _log.info("job.finished", status=status, provider=job.provider, outcome=code or "success")

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
            api_key=rt.config.api_key,
            webhook_url=webhook,
            trace_headers=trace_headers,
        )

    @staticmethod
    def _last_kind(job: JobRecord) -> str:
        for attempt in reversed(job.attempts):
            if attempt.error_kind:
                return attempt.error_kind
        return "unknown"

    # ------------------------------------------------------------------ lifecycle

    async def cancel(self, job_id: str) -> bool:
        """Ask an in-flight job to stop; ``False`` when it is not running here."""
        run = self._runs.get(job_id)
        if run is None:
            return False
        run.cancel_requested = True
        run.wakeup.set()
        return True

    def deliver_webhook(
        self, provider: str, job_id: str | None, attempt_id: str | None, event: WebhookEvent
    ) -> bool:
        """Apply a verified webhook to the attempt it names; ``False`` when none matches here."""
        run = self._runs.get(job_id) if job_id else None
        if run is None:
            return False
        for attempt in reversed(run.job.attempts):
            matches = attempt.id == attempt_id or (
                attempt_id is None and attempt.upstream_id == event.upstream_id
            )
            if matches and attempt.provider == provider and attempt.status == "running":
                run.pushed, run.pushed_for = event.result, attempt.id
                run.wakeup.set()
                return True
        return False

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop every job task; their jobs stay resumable in the store."""
        tasks = [r.task for r in self._runs.values() if r.task is not None]
        if grace_s > 0 and tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
