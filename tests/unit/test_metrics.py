"""Prometheus metrics: public names, closed label sets, and the HTTP middleware."""

from __future__ import annotations

import typing
from typing import Any

import httpx
import pytest
from litestar import Litestar, get
from litestar.params import FromPath
from prometheus_client import CollectorRegistry

from breakers.clock import FakeClock
from metrics.asgi import UNMATCHED, HttpMetricsMiddleware, Message, Receive, Scope, Send
from metrics.prometheus import OTHER, OUTCOMES, Metrics
from router.errors import ErrorKind

# DESIGN §7 plus the additive SRE-kit gauges, as exposed (counters with `_total`).
PUBLIC_NAMES = {
    "switchman_http_requests_total": "counter",
    "switchman_http_request_duration_seconds": "histogram",
    "switchman_provider_attempts_total": "counter",
    "switchman_provider_attempt_duration_seconds": "histogram",
    "switchman_provider_breaker_state": "gauge",
    "switchman_provider_breaker_transitions_total": "counter",
    "switchman_provider_rate_limit_available": "gauge",
    "switchman_provider_rate_limited_total": "counter",
    "switchman_provider_inflight": "gauge",
    "switchman_provider_score": "gauge",
    "switchman_provider_latency_ewma_seconds": "gauge",
    "switchman_failovers_total": "counter",
    "switchman_jobs_total": "counter",
    "switchman_jobs_inflight": "gauge",
    "switchman_cost_usd_total": "counter",
    "switchman_routing_decision_seconds": "histogram",
    "switchman_retry_budget_exhausted_total": "counter",
    "switchman_build_info": "gauge",
    "switchman_jobs_oldest_nonfinal_age_seconds": "gauge",
    "switchman_provider_drained": "gauge",
    "switchman_degraded": "gauge",
}


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics(CollectorRegistry(), version="1.2.3")
    m.declare_providers(["a", "b"])
    return m


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_every_public_metric_is_exposed_under_its_exact_name(metrics: Metrics) -> None:
    """Each DESIGN §7 metric appears in the exposition with its type, and no `_total_total`."""
    metrics.observe_http("/healthz", "GET", 200, 0.001)
    metrics.set_latency_ewma("a", "image", 1.0)
    metrics.provider_gauges("a", available=3, score=0.5)
    metrics.set_degraded("redis", True)
    metrics.failover("a", "b", "timeout")
    text = metrics.render()[0].decode()
    for name, kind in PUBLIC_NAMES.items():
        assert f"# TYPE {name} {kind}\n" in text, name
        assert f"\n{name}" in text, name
    assert "_total_total" not in text


def test_declared_providers_start_with_zero_series(metrics: Metrics) -> None:
    """Breaker state, transitions and attempts per outcome exist at zero before any event."""
    text = metrics.render()[0].decode()
    assert 'switchman_provider_breaker_state{provider="a"} 0.0' in text
    assert 'switchman_provider_breaker_transitions_total{provider="b",to="open"} 0.0' in text
    for outcome in OUTCOMES:
        assert value(
            metrics,
            "switchman_provider_attempts_total",
            provider="a",
            kind="video",
            outcome=outcome,
        ) == (0.0)
    assert value(metrics, "switchman_jobs_total", kind="image", status="failed") == 0.0
    assert value(metrics, "switchman_retry_budget_exhausted_total") == 0.0
    assert value(metrics, "switchman_build_info", version="1.2.3") == 1.0


def test_attempt_is_counted_and_its_duration_lands_in_the_right_bucket(metrics: Metrics) -> None:
    """observe_attempt increments the outcome counter and fills histogram buckets."""
    metrics.observe_attempt("a", "image", "success", 0.3)
    metrics.observe_attempt("a", "image", "timeout", 12.0)
    labels = {"provider": "a", "kind": "image"}
    name = "switchman_provider_attempt_duration_seconds"
    assert value(metrics, f"{name}_bucket", **labels, le="0.25") == 0.0
    assert value(metrics, f"{name}_bucket", **labels, le="0.5") == 1.0
    assert value(metrics, f"{name}_bucket", **labels, le="20.0") == 2.0
    assert value(metrics, f"{name}_count", **labels) == 2.0
    assert value(metrics, f"{name}_sum", **labels) == pytest.approx(12.3)
    assert value(metrics, "switchman_provider_attempts_total", **labels, outcome="timeout") == 1.0


def test_repeated_observations_reuse_one_cached_child(metrics: Metrics) -> None:
    """The hot path caches `.labels()` children: one cache entry per label tuple."""
    before = len(metrics._attempts)
    for _ in range(5):
        metrics.observe_attempt("a", "image", "auth", 0.1)
    assert len(metrics._attempts) == before
    assert metrics._attempt_child("a", "image", "auth") is metrics._attempt_child(
        "a", "image", "auth"
    )
    labels = {"provider": "a", "kind": "image", "outcome": "auth"}
    assert value(metrics, "switchman_provider_attempts_total", **labels) == 5.0


def test_unknown_label_values_map_to_other(metrics: Metrics) -> None:
    """An undeclared provider, kind, outcome or reason never mints a new series."""
    metrics.observe_attempt("evil{provider}", "audio", "exploded", 0.1)
    metrics.failover("a", "nobody", "mystery")
    metrics.rate_limited("c", "somewhere")
    text = metrics.render()[0].decode()
    assert "evil" not in text
    assert "nobody" not in text
    labels = {"provider": OTHER, "kind": OTHER, "outcome": OTHER}
    assert value(metrics, "switchman_provider_attempts_total", **labels) == 1.0
    assert (
        value(
            metrics, "switchman_failovers_total", from_provider="a", to_provider=OTHER, reason=OTHER
        )
        == 1.0
    )
    assert value(metrics, "switchman_provider_rate_limited_total", provider=OTHER, source=OTHER)


def test_provider_labels_are_open_until_declared() -> None:
    """Before declare_providers any name is used as is (start-up, tests)."""
    m = Metrics()
    m.observe_attempt("fal", "image", "success", 0.1)
    labels = {"provider": "fal", "kind": "image", "outcome": "success"}
    assert value(m, "switchman_provider_attempts_total", **labels) == 1.0


def test_outcomes_are_the_design_error_kinds_plus_success() -> None:
    """metrics keeps its own copy of the error kinds; it must match router.errors."""
    assert set(OUTCOMES) == {*typing.get_args(ErrorKind), "success"}


def test_breaker_transition_moves_the_state_gauge(metrics: Metrics) -> None:
    """A transition to half-open counts under `half_open` and sets the gauge to 1."""
    metrics.breaker_transition("a", "open")
    metrics.breaker_transition("a", "half-open")
    assert value(metrics, "switchman_provider_breaker_state", provider="a") == 1.0
    assert value(metrics, "switchman_provider_breaker_transitions_total", provider="a", to="open")
    labels = {"provider": "a", "to": "half_open"}
    assert value(metrics, "switchman_provider_breaker_transitions_total", **labels) == 1.0
    metrics.set_breaker_state("a", "open")
    assert value(metrics, "switchman_provider_breaker_state", provider="a") == 2.0


def test_provider_gauges_leave_unset_values_alone(metrics: Metrics) -> None:
    """None keeps a gauge's value; drained is exported as 1/0."""
    metrics.provider_gauges("a", available=7, inflight=2, score=0.8, drained=True)
    metrics.provider_gauges("a", inflight=3)
    assert value(metrics, "switchman_provider_rate_limit_available", provider="a") == 7.0
    assert value(metrics, "switchman_provider_inflight", provider="a") == 3.0
    assert value(metrics, "switchman_provider_score", provider="a") == 0.8
    assert value(metrics, "switchman_provider_drained", provider="a") == 1.0


def test_jobs_inflight_follows_start_and_finish(metrics: Metrics) -> None:
    """job_started raises the in-flight gauge; job_finished lowers it and counts the status."""
    metrics.job_started("video")
    metrics.job_started("video")
    metrics.job_finished("video", "succeeded")
    assert value(metrics, "switchman_jobs_inflight", kind="video") == 1.0
    assert value(metrics, "switchman_jobs_total", kind="video", status="succeeded") == 1.0
    metrics.set_jobs_inflight("video", 0)
    assert value(metrics, "switchman_jobs_inflight", kind="video") == 0.0


def test_cost_ignores_non_positive_amounts(metrics: Metrics) -> None:
    """Counters cannot go down; a zero or refund amount is dropped, not an error."""
    metrics.add_cost("b", "image", 0.003)
    metrics.add_cost("b", "image", 0)
    metrics.add_cost("b", "image", -1)
    assert value(metrics, "switchman_cost_usd_total", provider="b", kind="image") == 0.003


def test_decision_histogram_resolves_microseconds(metrics: Metrics) -> None:
    """Routing decisions of a few µs fall in µs-scale buckets."""
    metrics.observe_decision(3e-6)
    name = "switchman_routing_decision_seconds_bucket"
    assert value(metrics, name, le="2.5e-06") == 0.0
    assert value(metrics, name, le="5e-06") == 1.0


def test_render_negotiates_openmetrics(metrics: Metrics) -> None:
    """An OpenMetrics Accept header gets the OpenMetrics format; otherwise plain text."""
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    _, plain = metrics.render()
    assert plain.startswith("text/plain")


# -- middleware ----------------------------------------------------------------------


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _http_scope(path: str, method: str = "GET") -> Scope:
    return {"type": "http", "method": method, "path": path, "headers": []}


async def _call(app: HttpMetricsMiddleware, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, _receive, send)
    return sent


async def test_middleware_records_the_templated_route(metrics: Metrics) -> None:
    """The route label is the template the router left in the scope, never the raw path."""
    clock = FakeClock()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["path_template"] = "/v1/generations/{id}"
        clock.advance(0.25)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    mw = HttpMetricsMiddleware(app, metrics, clock=clock)
    sent = await _call(mw, _http_scope("/v1/generations/gen_123", "POST"))
    assert sent[0]["status"] == 201
    labels = {"route": "/v1/generations/{id}", "method": "POST"}
    assert value(metrics, "switchman_http_requests_total", **labels, status="201") == 1.0
    assert value(metrics, "switchman_http_request_duration_seconds_sum", **labels) == 0.25
    assert "gen_123" not in metrics.render()[0].decode()


async def test_middleware_labels_unrouted_requests_unmatched(metrics: Metrics) -> None:
    """A request no route matched is counted under `unmatched`; odd methods under `other`."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    await _call(HttpMetricsMiddleware(app, metrics), _http_scope("/wp-admin", "BREW"))
    labels = {"route": UNMATCHED, "method": OTHER, "status": "404"}
    assert value(metrics, "switchman_http_requests_total", **labels) == 1.0


async def test_middleware_counts_a_crash_as_500_and_reraises(metrics: Metrics) -> None:
    """An app that raises before responding is recorded as a 500."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await _call(HttpMetricsMiddleware(app, metrics), _http_scope("/x"))
    labels = {"route": UNMATCHED, "method": "GET", "status": "500"}
    assert value(metrics, "switchman_http_requests_total", **labels) == 1.0


async def test_middleware_passes_lifespan_through(metrics: Metrics) -> None:
    """Non-HTTP scopes reach the app untouched and record nothing."""
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    await _call(HttpMetricsMiddleware(app, metrics), {"type": "lifespan"})
    assert seen == ["lifespan"]
    assert "switchman_http_requests_total{" not in metrics.render()[0].decode()


async def test_middleware_reads_litestars_path_template(metrics: Metrics) -> None:
    """Wrapped around a real litestar 2 app, routes are labelled by their templates."""

    @get("/v1/generations/{job_id:str}", sync_to_thread=False)
    def show(job_id: FromPath[str]) -> dict[str, Any]:
        return {"id": job_id}

    wrapped = HttpMetricsMiddleware(Litestar(route_handlers=[show]), metrics)
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/v1/generations/gen_1")).status_code == 200
        assert (await client.get("/v1/generations/gen_2")).status_code == 200
        assert (await client.get("/nope/123")).status_code == 404
        assert (await client.post("/v1/generations/gen_1")).status_code == 405
    route = {"route": "/v1/generations/{job_id}", "method": "GET", "status": "200"}
    assert value(metrics, "switchman_http_requests_total", **route) == 2.0
    missing = {"route": UNMATCHED, "method": "GET", "status": "404"}
    assert value(metrics, "switchman_http_requests_total", **missing) == 1.0
    wrong_method = {"route": UNMATCHED, "method": "POST", "status": "405"}
    assert value(metrics, "switchman_http_requests_total", **wrong_method) == 1.0
