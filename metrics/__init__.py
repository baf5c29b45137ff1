"""Telemetry: Prometheus metrics, OpenTelemetry tracing, structlog logging (DESIGN §7)."""

from metrics.asgi import HttpMetricsMiddleware, route_template
from metrics.logging import (
    REDACTED,
    add_trace_id,
    configure_logging,
    redact_secrets,
    register_secrets,
    scrub,
)
from metrics.prometheus import Metrics
from metrics.tracing import (
    attempt_span,
    current_trace_id,
    extract_context,
    inject_headers,
    record_outcome,
    server_span,
    set_http_request,
    setup_tracing,
    shutdown_tracing,
)

__all__ = [
    "REDACTED",
    "HttpMetricsMiddleware",
    "Metrics",
    "add_trace_id",
    "attempt_span",
    "configure_logging",
    "current_trace_id",
    "extract_context",
    "inject_headers",
    "record_outcome",
    "redact_secrets",
    "register_secrets",
    "route_template",
    "scrub",
    "server_span",
    "set_http_request",
    "setup_tracing",
    "shutdown_tracing",
]
