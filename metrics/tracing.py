"""OpenTelemetry tracing: set-up, W3C propagation and the attempt span.

One SERVER span per request and one CLIENT span per upstream attempt (DESIGN §7),
with attribute names from the *stable* HTTP semantic conventions. Tracing is off
unless ``OTEL_TRACES_EXPORTER`` says otherwise; off means the API's no-op tracer,
whose spans cost a context switch and nothing else, and the helpers here skip all
attribute work when ``span.is_recording()`` is false. Incoming ``traceparent``
headers still flow upstream when tracing is off, because the no-op tracer hands the
parent's span context on.

``trace.set_tracer_provider`` works once per process, so :func:`setup_tracing`
installs a global provider at most once; tests inject their own provider instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "ATTR_ATTEMPT",
    "ATTR_ERROR_TYPE",
    "ATTR_HTTP_METHOD",
    "ATTR_HTTP_ROUTE",
    "ATTR_HTTP_STATUS",
    "ATTR_JOB_ID",
    "ATTR_KIND",
    "ATTR_OUTCOME",
    "ATTR_PROVIDER",
    "ATTR_SERVER_ADDRESS",
    "ATTR_SERVER_PORT",
    "ATTR_UPSTREAM_ID",
    "ATTR_URL_FULL",
    "attempt_span",
    "current_trace_id",
    "extract_context",
    "inject_headers",
    "record_outcome",
    "server_span",
    "set_http_request",
    "setup_tracing",
    "shutdown_tracing",
]

# Stable HTTP semantic conventions (semantic-conventions docs/http/http-spans.md).
ATTR_HTTP_METHOD: Final = "http.request.method"
ATTR_HTTP_STATUS: Final = "http.response.status_code"
ATTR_HTTP_ROUTE: Final = "http.route"
ATTR_URL_FULL: Final = "url.full"
ATTR_SERVER_ADDRESS: Final = "server.address"
ATTR_SERVER_PORT: Final = "server.port"
ATTR_ERROR_TYPE: Final = "error.type"
# Switchman's own attributes.
ATTR_PROVIDER: Final = "switchman.provider"
ATTR_ATTEMPT: Final = "switchman.attempt"
ATTR_KIND: Final = "switchman.kind"
ATTR_UPSTREAM_ID: Final = "switchman.upstream_id"
ATTR_OUTCOME: Final = "switchman.outcome"
ATTR_JOB_ID: Final = "switchman.job_id"

_INSTRUMENTATION: Final = "switchman"
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

# The provider this process installed globally, so a second set-up reuses it.
_installed: TracerProvider | None = None


def setup_tracing(
    service_name: str = "switchman", *, provider: TracerProvider | None = None
) -> Tracer:
    """Return the tracer Switchman's spans come from.

    Args:
        service_name: ``service.name`` of the resource, unless ``OTEL_SERVICE_NAME``
            is set.
        provider: use this provider and leave the global one alone (tests pass one
            with an ``InMemorySpanExporter``).

    Without a provider, ``OTEL_TRACES_EXPORTER`` (comma-separated) picks the
    exporters: ``none`` (the default) returns a no-op tracer; ``otlp`` exports over
    OTLP/HTTP in batches (``OTEL_EXPORTER_OTLP_*`` configure it); ``console`` prints
    spans. ``OTEL_SDK_DISABLED=true`` also turns tracing off. The sampler comes from
    ``OTEL_TRACES_SAMPLER`` as usual.

    Raises:
        ValueError: ``OTEL_TRACES_EXPORTER`` names an exporter Switchman does not ship.
    """
    global _installed  # set at most once per process
    if provider is not None:
        return provider.get_tracer(_INSTRUMENTATION)
    if _installed is not None:
        return _installed.get_tracer(_INSTRUMENTATION)
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return trace.NoOpTracer()
    names = [
        n.strip().lower()
        for n in os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",")
        if n.strip().lower() not in ("", "none")
    ]
    if not names:
        return trace.NoOpTracer()
    exporters = [_exporter(n) for n in names]
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    built = TracerProvider(resource=Resource.create(attributes))
    for name, exporter in zip(names, exporters, strict=True):
        # Console output is for a developer watching: show spans as they end.
        processor = SimpleSpanProcessor if name == "console" else BatchSpanProcessor
        built.add_span_processor(processor(exporter))
    trace.set_tracer_provider(built)
    _installed = built
    return built.get_tracer(_INSTRUMENTATION)


def _exporter(name: str) -> SpanExporter:
    if name == "otlp":
        # Imported here: the OTLP exporter pulls in protobuf, which only matters when used.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter {name!r} (otlp, console, none)")


def shutdown_tracing() -> None:
    """Flush and stop the globally installed provider, if any (call at app shutdown)."""
    if _installed is not None:
        _installed.shutdown()


def extract_context(headers: Mapping[str, str]) -> Context:
    """The trace context a caller sent in ``traceparent``/``tracestate``.

    Header names are matched case-insensitively, as HTTP requires.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    return _PROPAGATOR.extract(lowered)


def inject_headers(carrier: MutableMapping[str, str], context: Context | None = None) -> None:
    """Write ``traceparent`` (and ``tracestate``) for the current span into ``carrier``."""
    _PROPAGATOR.inject(carrier, context=context)


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or ``None`` outside any trace (for logs)."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


@contextmanager
def server_span(
    tracer: Tracer, method: str, route: str, headers: Mapping[str, str]
) -> Iterator[Span]:
    """Start the SERVER span of one request, continuing the caller's trace.

    ``route`` is the matched template (``/v1/generations/{id}``), never the raw path;
    the span is named ``{method} {route}`` as the conventions ask.
    """
    with tracer.start_as_current_span(
        f"{method} {route}", context=extract_context(headers), kind=SpanKind.SERVER
    ) as span:
        if span.is_recording():
            span.set_attribute(ATTR_HTTP_METHOD, method)
            span.set_attribute(ATTR_HTTP_ROUTE, route)
        yield span


@contextmanager
def attempt_span(tracer: Tracer, provider: str, kind: str, attempt_no: int) -> Iterator[Span]:
    """Start the CLIENT span of one attempt at one provider.

    The span is current inside the block, so :func:`inject_headers` sends its
    ``traceparent`` upstream. Set the result with :func:`record_outcome` and the
    request with :func:`set_http_request`; an exception escaping the block is
    recorded with its class name as ``error.type``.
    """
    with tracer.start_as_current_span(
        f"attempt {provider}",
        kind=SpanKind.CLIENT,
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        if span.is_recording():
            span.set_attribute(ATTR_PROVIDER, provider)
            span.set_attribute(ATTR_KIND, kind)
            span.set_attribute(ATTR_ATTEMPT, attempt_no)
        try:
            yield span
        except BaseException as exc:
            # An outcome recorded before the raise names the failure better than a class.
            recorded = getattr(span, "attributes", None) or {}
            if span.is_recording() and ATTR_ERROR_TYPE not in recorded:
                span.set_attribute(ATTR_ERROR_TYPE, type(exc).__qualname__)
            raise


def set_http_request(span: Span, method: str, url: str) -> None:
    """Set the required HTTP client attributes; credentials in the URL are dropped."""
    if not span.is_recording():
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    netloc = parts.netloc.rpartition("@")[2]  # userinfo never leaves the process
    span.set_attribute(ATTR_HTTP_METHOD, method.upper())
    span.set_attribute(ATTR_URL_FULL, urlunsplit(parts._replace(netloc=netloc)))
    span.set_attribute(ATTR_SERVER_ADDRESS, host)
    if port is not None:
        span.set_attribute(ATTR_SERVER_PORT, port)


def record_outcome(
    span: Span,
    outcome: str,
    *,
    upstream_id: str | None = None,
    status_code: int | None = None,
) -> None:
    """Record how an attempt ended: ``success`` or an error kind.

    A failed outcome sets the span status to Error with ``error.type`` = the kind,
    following the convention that a client span with a 4xx/5xx answer is an error.
    """
    if not span.is_recording():
        return
    span.set_attribute(ATTR_OUTCOME, outcome)
    if upstream_id is not None:
        span.set_attribute(ATTR_UPSTREAM_ID, upstream_id)
    if status_code is not None:
        span.set_attribute(ATTR_HTTP_STATUS, status_code)
    if outcome != "success":
        span.set_attribute(ATTR_ERROR_TYPE, outcome)
        span.set_status(Status(StatusCode.ERROR, outcome))
