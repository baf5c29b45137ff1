"""Deadlines bound the whole attempt chain; traces follow a request upstream."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from metrics.tracing import setup_tracing
from tests.integration.harness import make_config, serve

pytestmark = pytest.mark.integration

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_traceparent_reaches_the_provider_as_a_child_of_the_attempt(tmp_path: Path) -> None:
    """The caller's trace continues through a server span and an attempt span to the upstream."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = setup_tracing("switchman", provider=provider)
    config = make_config(tmp_path, [{"name": "only", "faults": {}}])
    async with serve(config, tracer=tracer) as running:
        r = await running.generate(traceparent=f"00-{CALLER_TRACE}-00f067aa0ba902b7-01")
        seen = running.emulator("only").stats.last("/v1/images/generations")
    assert r.status_code == 200
    assert seen is not None
    upstream = {k.lower(): v for k, v in seen.headers.items()}["traceparent"]
    _, trace_id, parent_span, _ = upstream.split("-")
    assert trace_id == CALLER_TRACE
    spans = exporter.get_finished_spans()
    attempt = next(s for s in spans if s.kind == SpanKind.CLIENT)
    server = next(s for s in spans if s.kind == SpanKind.SERVER and s.name.startswith("POST"))
    assert attempt.context is not None
    assert f"{attempt.context.span_id:016x}" == parent_span
    assert attempt.parent is not None
    assert server.context is not None
    assert attempt.parent.span_id == server.context.span_id
    assert attempt.attributes is not None
    assert attempt.attributes["switchman.provider"] == "only"
    assert attempt.attributes["switchman.outcome"] == "success"
    assert server.name == "POST /v1/generations"


async def test_request_timeout_bounds_the_whole_chain(tmp_path: Path) -> None:
    """With every provider hanging, X-Request-Timeout ends the job on time, failed."""
    hang = {"faults": {"hang_ratio": 1.0}, "timeouts": {"request_s": 30}}
    config = make_config(tmp_path, [{"name": "a", **hang}, {"name": "b", **hang}])
    async with serve(config) as running:
        started = time.monotonic()
        r = await running.generate(X_Request_Timeout="0.5")
        elapsed = time.monotonic() - started
        job = (await running.client.get(r.headers["location"])).json()
    assert elapsed < 1.5, f"took {elapsed:.2f}s"
    assert job["status"] == "failed"
    assert job["error"]["code"] in ("timeout", "deadline_exceeded")
    # No attempt outlived the deadline: each ended by it.
    for attempt in job["attempts"]:
        assert attempt["status"] == "failed"


async def test_bad_request_timeout_header_is_a_problem(tmp_path: Path) -> None:
    """A non-numeric X-Request-Timeout is 400 naming the header."""
    config = make_config(tmp_path, [{"name": "only", "faults": {}}])
    async with serve(config) as running:
        r = await running.generate(X_Request_Timeout="soon")
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "X-Request-Timeout"


async def test_with_tracing_off_the_callers_trace_context_passes_through(tmp_path: Path) -> None:
    """No tracer configured: the caller's traceparent reaches the provider unchanged."""
    sent = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"
    config = make_config(tmp_path, [{"name": "only", "faults": {}}])
    async with serve(config) as running:  # the default: OTEL_TRACES_EXPORTER unset
        r = await running.generate(traceparent=sent, tracestate="vendor=1")
        seen = running.emulator("only").stats.last("/v1/images/generations")
    assert r.status_code == 200
    assert seen is not None
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert headers["traceparent"] == sent
    assert headers["tracestate"] == "vendor=1"
