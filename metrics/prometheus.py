"""Switchman's Prometheus metrics (DESIGN §7).

The names here are public: dashboards, alert rules and runbooks query them, so they
are written out in full below and only ever added to. Every label takes its value
from a closed set so that a typo or a hostile provider name can never mint new
series: providers come from :meth:`Metrics.declare_providers`, everything else from
the constants in this module, and anything unknown becomes ``"other"``.

``.labels(...)`` on a prometheus-client metric costs a lock and a dict lookup on a
tuple of strings; the hot-path helpers cache the children themselves so that an
observation costs a dict hit and the child's own update.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

__all__ = [
    "BREAKER_STATES",
    "ERROR_KINDS",
    "FAILOVER_REASONS",
    "GENERATION_KINDS",
    "JOB_STATUSES",
    "OTHER",
    "OUTCOMES",
    "RATE_LIMIT_SOURCES",
    "Metrics",
]

#: The label value every unknown input maps to.
OTHER: Final = "other"

#: Attempt ``error.kind`` values (DESIGN §3); kept in step with ``router.errors.ErrorKind``
#: by a test, because ``metrics/`` sits below ``router/`` and may not import it.
ERROR_KINDS: Final[tuple[str, ...]] = (
    "upstream_unavailable",
    "timeout",
    "rate_limited",
    "invalid_request",
    "content_policy",
    "auth",
    "not_found",
    "malformed_response",
    "canceled",
    "deadline_exceeded",
    "no_provider",
)
#: ``outcome`` label of attempts: an error kind or ``success``.
OUTCOMES: Final[tuple[str, ...]] = ("success", *ERROR_KINDS)
GENERATION_KINDS: Final[tuple[str, ...]] = ("image", "video")
JOB_STATUSES: Final[tuple[str, ...]] = ("queued", "running", "succeeded", "failed", "canceled")
_FINAL_JOB_STATUSES: Final = ("succeeded", "failed", "canceled")
#: Breaker states and their gauge values; ``half-open`` (pybreaker's spelling) is accepted too.
BREAKER_STATES: Final[dict[str, int]] = {"closed": 0, "half_open": 1, "open": 2}
RATE_LIMIT_SOURCES: Final[tuple[str, ...]] = ("upstream", "local")
#: Why work moved on: the failed attempt's error kind, or a guard that refused the provider.
FAILOVER_REASONS: Final[tuple[str, ...]] = (*ERROR_KINDS, "breaker_open", "local_limit")
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# 0.5 ms .. 60 s: the API answers cached reads in well under a millisecond and holds
# `Prefer: wait` requests for up to a minute.
_HTTP_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# An image attempt takes about a second; a video attempt can poll for ten minutes.
_ATTEMPT_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
# Ranking is pure and should take microseconds for tens of providers.
_DECISION_BUCKETS: Final = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2,
)  # fmt: skip

_P = "switchman_"
_Child = TypeVar("_Child", Counter, Gauge, Histogram)


def _version() -> str:
    try:
        return metadata.version("switchman")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def _closed(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


class Metrics:
    """Every Switchman metric, registered in one registry.

    Args:
        registry: where to register; ``None`` makes a private registry (tests, and
            the app, which serves :attr:`registry` at ``/metrics``).
        version: the ``version`` label of ``switchman_build_info``.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, version: str | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # prometheus-client strips a trailing `_total` from Counter names and adds it
        # back on exposition, so the names below are written without it.
        self.http_requests_total = Counter(
            _P + "http_requests", "HTTP requests served.", ("route", "method", "status"), registry=r
        )
        self.http_request_duration_seconds = Histogram(
            _P + "http_request_duration_seconds",
            "Time to serve an HTTP request, until the response body is sent.",
            ("route", "method"),
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.provider_attempts_total = Counter(
            _P + "provider_attempts",
            "Attempts at upstream providers by outcome (success or an error kind).",
            ("provider", "kind", "outcome"),
            registry=r,
        )
        self.provider_attempt_duration_seconds = Histogram(
            _P + "provider_attempt_duration_seconds",
            "Duration of one attempt at a provider, submit to final state.",
            ("provider", "kind"),
            buckets=_ATTEMPT_BUCKETS,
            registry=r,
        )
        self.provider_breaker_state = Gauge(
            _P + "provider_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ("provider",),
            registry=r,
        )
        self.provider_breaker_transitions_total = Counter(
            _P + "provider_breaker_transitions",
            "Circuit breaker transitions by target state.",
            ("provider", "to"),
            registry=r,
        )
        self.provider_rate_limit_available = Gauge(
            _P + "provider_rate_limit_available",
            "Tokens left in the provider's local rate-limit bucket.",
            ("provider",),
            registry=r,
        )
        self.provider_rate_limited_total = Counter(
            _P + "provider_rate_limited",
            "Requests refused for rate limits, by the upstream (429) or the local bucket.",
            ("provider", "source"),
            registry=r,
        )
        self.provider_inflight = Gauge(
            _P + "provider_inflight",
            "Attempts in flight at the provider.",
            ("provider",),
            registry=r,
        )
        self.provider_score = Gauge(
            _P + "provider_score",
            "The provider's score in the latest routing snapshot.",
            ("provider",),
            registry=r,
        )
        self.provider_latency_ewma_seconds = Gauge(
            _P + "provider_latency_ewma_seconds",
            "Exponentially weighted mean attempt latency used for routing.",
            ("provider", "kind"),
            registry=r,
        )
        self.failovers_total = Counter(
            _P + "failovers",
            "Jobs moved from one provider to the next.",
            ("from_provider", "to_provider", "reason"),
            registry=r,
        )
        self.jobs_total = Counter(
            _P + "jobs", "Jobs that reached a final status.", ("kind", "status"), registry=r
        )
        self.jobs_inflight = Gauge(
            _P + "jobs_inflight", "Jobs not yet in a final status.", ("kind",), registry=r
        )
        self.cost_usd_total = Counter(
            _P + "cost_usd",
            "Money spent at providers, in US dollars.",
            ("provider", "kind"),
            registry=r,
        )
        self.routing_decision_seconds = Histogram(
            _P + "routing_decision_seconds",
            "Time to rank the candidates for one request.",
            buckets=_DECISION_BUCKETS,
            registry=r,
        )
        self.retry_budget_exhausted_total = Counter(
            _P + "retry_budget_exhausted",
            "Failovers refused because the retry budget was spent.",
            registry=r,
        )
        self.build_info = Gauge(
            _P + "build_info", "Always 1; the running version.", ("version",), registry=r
        )
        self.jobs_oldest_nonfinal_age_seconds = Gauge(
            _P + "jobs_oldest_nonfinal_age_seconds",
            "Age of the oldest job not yet in a final status (0 when none).",
            registry=r,
        )
        self.provider_drained = Gauge(
            _P + "provider_drained",
            "1 while an operator has drained the provider.",
            ("provider",),
            registry=r,
        )
        self.degraded = Gauge(
            _P + "degraded",
            "1 while a component runs in a degraded mode (e.g. Redis unreachable).",
            ("component",),
            registry=r,
        )
        self.build_info.labels(version or _version()).set(1)

        self._providers: frozenset[str] | None = None
        self._kinds = frozenset(GENERATION_KINDS)
        self._outcomes = frozenset(OUTCOMES)
        self._reasons = frozenset(FAILOVER_REASONS)
        self._statuses = frozenset(JOB_STATUSES)
        self._sources = frozenset(RATE_LIMIT_SOURCES)
        # Children caches, keyed by the already-closed label tuple.
        self._attempts: dict[tuple[str, str, str], Counter] = {}
        self._attempt_durations: dict[tuple[str, str], Histogram] = {}
        self._http_count: dict[tuple[str, str, str], Counter] = {}
        self._http_duration: dict[tuple[str, str], Histogram] = {}
        self._generic: dict[tuple[object, ...], Counter | Gauge | Histogram] = {}
        for kind in GENERATION_KINDS:
            self.jobs_inflight.labels(kind).set(0)
            for status in _FINAL_JOB_STATUSES:
                self.jobs_total.labels(kind, status)
        self.retry_budget_exhausted_total.inc(0)

    # -- label hygiene -------------------------------------------------------------

    def declare_providers(self, names: Iterable[str]) -> None:
        """Fix the set of provider label values and create their series at zero.

        Dashboards and alerts need every series to exist before the first event
        (``rate()`` over a missing series is no data, not zero). After this, a name
        outside ``names`` is reported as ``"other"``. Calling it again (config
        reload) adds the new names; series of removed providers stay until restart.
        """
        declared = frozenset(names) | (self._providers or frozenset())
        self._providers = declared | {OTHER}
        for p in sorted(self._providers):
            self._child(self.provider_breaker_state, p).set(0)
            for to in BREAKER_STATES:
                self._child(self.provider_breaker_transitions_total, p, to)
            for source in RATE_LIMIT_SOURCES:
                self._child(self.provider_rate_limited_total, p, source)
            self._child(self.provider_inflight, p)
            self._child(self.provider_drained, p)
            for kind in GENERATION_KINDS:
                self._attempt_duration_child(p, kind)
                self._child(self.cost_usd_total, p, kind)
                for outcome in OUTCOMES:
                    self._attempt_child(p, kind, outcome)

    def _provider(self, name: str) -> str:
        # Before declare_providers the set is open, so early start-up and tests work.
        if self._providers is None or name in self._providers:
            return name
        return OTHER

    def _child(self, metric: _Child, *labels: str) -> _Child:
        key = (id(metric), *labels)
        child = self._generic.get(key)
        if child is None:
            child = self._generic[key] = metric.labels(*labels)
        return child  # type: ignore[return-value]  # the key pins the metric's type

    def _attempt_child(self, provider: str, kind: str, outcome: str) -> Counter:
        key = (provider, kind, outcome)
        child = self._attempts.get(key)
        if child is None:
            child = self._attempts[key] = self.provider_attempts_total.labels(*key)
        return child

    def _attempt_duration_child(self, provider: str, kind: str) -> Histogram:
        key = (provider, kind)
        child = self._attempt_durations.get(key)
        if child is None:
            child = self._attempt_durations[key] = self.provider_attempt_duration_seconds.labels(
                *key
            )
        return child

    # -- hot-path helpers ----------------------------------------------------------

    def observe_attempt(self, provider: str, kind: str, outcome: str, duration_s: float) -> None:
        """Count one finished attempt and record how long it took."""
        p = self._provider(provider)
        k = _closed(kind, self._kinds)
        self._attempt_child(p, k, _closed(outcome, self._outcomes)).inc()
        self._attempt_duration_child(p, k).observe(duration_s)

    def set_breaker_state(self, provider: str, state: str) -> None:
        """Set the breaker gauge from ``closed``, ``half-open`` (or ``half_open``) or ``open``."""
        value = BREAKER_STATES.get(state.replace("-", "_"))
        if value is not None:
            self._child(self.provider_breaker_state, self._provider(provider)).set(value)

    def breaker_transition(self, provider: str, to: str) -> None:
        """Count a breaker transition and move the state gauge with it."""
        state = to.replace("-", "_")
        p = self._provider(provider)
        self._child(self.provider_breaker_transitions_total, p, _closed(state, _BREAKER_SET)).inc()
        self.set_breaker_state(p, state)

    def failover(self, from_p: str, to_p: str, reason: str) -> None:
        """Count work moving from one provider to the next, and why."""
        labels = (self._provider(from_p), self._provider(to_p), _closed(reason, self._reasons))
        self._child(self.failovers_total, *labels).inc()

    def job_started(self, kind: str) -> None:
        """Count a job entering the engine (new or resumed after a restart)."""
        self._child(self.jobs_inflight, _closed(kind, self._kinds)).inc()

    def job_finished(self, kind: str, status: str) -> None:
        """Count a job reaching a final status; pairs with :meth:`job_started`."""
        k = _closed(kind, self._kinds)
        self._child(self.jobs_total, k, _closed(status, self._statuses)).inc()
        self._child(self.jobs_inflight, k).dec()

    def set_jobs_inflight(self, kind: str, count: int) -> None:
        """Set the in-flight gauge outright, e.g. from the job store at start-up."""
        self._child(self.jobs_inflight, _closed(kind, self._kinds)).set(count)

    def observe_http(self, route: str, method: str, status: int, duration_s: float) -> None:
        """Record one served request; ``route`` must be a template, never a raw path."""
        m = method if method in _METHODS else OTHER
        key = (route, m, str(status))
        counter = self._http_count.get(key)
        if counter is None:
            counter = self._http_count[key] = self.http_requests_total.labels(*key)
        counter.inc()
        dkey = (route, m)
        hist = self._http_duration.get(dkey)
        if hist is None:
            hist = self._http_duration[dkey] = self.http_request_duration_seconds.labels(*dkey)
        hist.observe(duration_s)

    def provider_gauges(
        self,
        provider: str,
        *,
        available: float | None = None,
        inflight: float | None = None,
        score: float | None = None,
        drained: bool | None = None,
    ) -> None:
        """Set the provider's state gauges; ``None`` leaves a gauge as it was."""
        p = self._provider(provider)
        if available is not None:
            self._child(self.provider_rate_limit_available, p).set(available)
        if inflight is not None:
            self._child(self.provider_inflight, p).set(inflight)
        if score is not None:
            self._child(self.provider_score, p).set(score)
        if drained is not None:
            self._child(self.provider_drained, p).set(1 if drained else 0)

    def set_latency_ewma(self, provider: str, kind: str, seconds: float) -> None:
        """Export the latency EWMA the strategy ranks by."""
        labels = (self._provider(provider), _closed(kind, self._kinds))
        self._child(self.provider_latency_ewma_seconds, *labels).set(seconds)

    def add_cost(self, provider: str, kind: str, usd: float) -> None:
        """Add money spent at a provider (ignores zero and negative amounts)."""
        if usd > 0:
            labels = (self._provider(provider), _closed(kind, self._kinds))
            self._child(self.cost_usd_total, *labels).inc(usd)

    def rate_limited(self, provider: str, source: str) -> None:
        """Count a rate-limit refusal; ``source`` is ``upstream`` or ``local``."""
        labels = (self._provider(provider), _closed(source, self._sources))
        self._child(self.provider_rate_limited_total, *labels).inc()

    def observe_decision(self, seconds: float) -> None:
        """Record how long one routing decision took."""
        self.routing_decision_seconds.observe(seconds)

    def retry_budget_exhausted(self) -> None:
        """Count a failover refused by the retry budget."""
        self.retry_budget_exhausted_total.inc()

    def set_oldest_nonfinal_age(self, seconds: float) -> None:
        """Export the age of the oldest unfinished job (stuck-job alerts read it)."""
        self.jobs_oldest_nonfinal_age_seconds.set(seconds)

    def set_degraded(self, component: str, degraded: bool) -> None:
        """Flag a component (``redis``, ``store``, …) as running degraded or not."""
        self._child(self.degraded, component).set(1 if degraded else 0)

    # -- exposition ----------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type.

        Negotiated from the scraper's ``Accept`` header exactly as prometheus-client's
        own server does: OpenMetrics when asked for (the format that carries
        exemplars), otherwise the Prometheus text format.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def __repr__(self) -> str:
        n = "open" if self._providers is None else str(len(self._providers) - 1)
        return f"Metrics(providers={n})"


_BREAKER_SET: Final = frozenset(BREAKER_STATES)
