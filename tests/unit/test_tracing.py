"""Tracing: the attempt span's attributes, W3C propagation, and tracing off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from metrics import tracing
from metrics.tracing import (
    attempt_span,
    current_trace_id,
    extract_context,
    inject_headers,
    record_outcome,
    server_span,
    set_http_request,
    setup_tracing,
)

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER_HEADERS = {"Traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[Tracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield setup_tracing(provider=provider)
    provider.shutdown()


@pytest.fixture
def tracing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.setattr(tracing, "_installed", None)


def test_attempt_span_is_a_client_span_with_semconv_attributes(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    """One CLIENT span per attempt carries provider, attempt number and stable HTTP names."""
    with attempt_span(tracer, "fal", "image", 2) as span:
        set_http_request(span, "post", "https://user:pw@queue.fal.run/fal-ai/flux?x=1")
        record_outcome(span, "success", upstream_id="req_9", status_code=200)
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "attempt fal"
    assert finished.kind is SpanKind.CLIENT
    assert dict(finished.attributes or {}) == {
        "switchman.provider": "fal",
        "switchman.kind": "image",
        "switchman.attempt": 2,
        "http.request.method": "POST",
        "url.full": "https://queue.fal.run/fal-ai/flux?x=1",
        "server.address": "queue.fal.run",
        "server.port": 443,
        "switchman.outcome": "success",
        "switchman.upstream_id": "req_9",
        "http.response.status_code": 200,
    }
    assert finished.status.status_code is StatusCode.UNSET


def test_failed_outcome_marks_the_span_as_an_error(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    """A failed attempt sets Error status and error.type to the error kind."""
    with attempt_span(tracer, "replicate", "video", 1) as span:
        record_outcome(span, "upstream_unavailable", status_code=503)
    (finished,) = exporter.get_finished_spans()
    assert finished.status.status_code is StatusCode.ERROR
    assert (finished.attributes or {})["error.type"] == "upstream_unavailable"


def test_exception_in_attempt_span_sets_error_type(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    """An exception escaping the block is recorded with its class name."""
    with pytest.raises(TimeoutError), attempt_span(tracer, "runway", "video", 1):
        raise TimeoutError
    (finished,) = exporter.get_finished_spans()
    assert (finished.attributes or {})["error.type"] == "TimeoutError"
    assert finished.status.status_code is StatusCode.ERROR
    assert finished.events[0].name == "exception"


def test_traceparent_round_trips(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    """inject_headers writes the attempt span's traceparent; extract_context reads it back."""
    carrier: dict[str, str] = {}
    with attempt_span(tracer, "fal", "image", 1) as span:
        inject_headers(carrier)
        ctx = span.get_span_context()
        assert current_trace_id() == format(ctx.trace_id, "032x")
    # Flags are 01 (sampled), or 03 where the SDK also sets W3C level 2's random bit.
    assert carrier["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-0")
    extracted = trace.get_current_span(extract_context({"TRACEPARENT": carrier["traceparent"]}))
    assert extracted.get_span_context().trace_id == ctx.trace_id
    assert extracted.get_span_context().span_id == ctx.span_id
    assert current_trace_id() is None


def test_server_span_continues_the_callers_trace(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    """A request's SERVER span joins the trace in its traceparent, and attempts nest in it."""
    with (
        server_span(tracer, "POST", "/v1/generations", CALLER_HEADERS),
        attempt_span(tracer, "fal", "image", 1),
    ):
        pass
    attempt, server = exporter.get_finished_spans()
    assert server.name == "POST /v1/generations"
    assert server.kind is SpanKind.SERVER
    assert (server.attributes or {})["http.route"] == "/v1/generations"
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == CALLER_SPAN
    assert format(server.context.trace_id, "032x") == CALLER_TRACE
    assert attempt.parent is not None
    assert attempt.parent.span_id == server.context.span_id


@pytest.mark.usefixtures("tracing_off")
def test_tracing_off_by_default_gives_non_recording_spans() -> None:
    """Without OTEL_TRACES_EXPORTER spans do not record and no global provider is set."""
    before = trace.get_tracer_provider()
    tracer = setup_tracing()
    with attempt_span(tracer, "fal", "image", 1) as span:
        set_http_request(span, "GET", "https://example.com/")
        record_outcome(span, "timeout")
        assert not span.is_recording()
    assert trace.get_tracer_provider() is before


@pytest.mark.usefixtures("tracing_off")
def test_tracing_off_still_propagates_the_callers_trace() -> None:
    """With tracing off the caller's trace id still reaches logs and the upstream."""
    tracer = setup_tracing()
    carrier: dict[str, str] = {}
    with server_span(tracer, "GET", "/v1/generations/{id}", CALLER_HEADERS):
        assert current_trace_id() == CALLER_TRACE
        inject_headers(carrier)
    assert CALLER_TRACE in carrier["traceparent"]


@pytest.mark.usefixtures("tracing_off")
def test_unknown_exporter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in OTEL_TRACES_EXPORTER fails at start-up instead of silently not tracing."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaegr")
    with pytest.raises(ValueError, match="jaegr"):
        setup_tracing()
