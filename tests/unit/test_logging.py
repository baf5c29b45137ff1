"""Logging: JSON lines with request context, and secrets that never reach the output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from structlog.testing import capture_logs

from metrics import logging as switchman_logging
from metrics.logging import REDACTED, configure_logging, redact_secrets, register_secrets, scrub
from metrics.tracing import attempt_span, setup_tracing

CANARY = "sk-canary-123"


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Configure logging into a buffer; restore structlog and the root logger afterwards."""
    root = logging.getLogger()
    saved_level = root.level
    saved_handlers = list(root.handlers)
    saved_httpx = logging.getLogger("httpx").level
    monkeypatch.setattr(switchman_logging, "_literals", set())
    monkeypatch.setattr(switchman_logging, "_literal_re", None)
    buffer = io.StringIO()
    configure_logging("DEBUG", stream=buffer)
    yield buffer
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    logging.getLogger("httpx").setLevel(saved_httpx)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_events_are_json_with_level_timestamp_and_bound_context(stream: io.StringIO) -> None:
    """Context bound for a request appears on every event, with level and ISO time."""
    structlog.contextvars.bind_contextvars(request_id="req_1", tenant="acme", job_id="gen_1")
    structlog.get_logger().info("attempt.failed", provider="fal", attempt=2, outcome="timeout")
    (event,) = lines(stream)
    assert event["event"] == "attempt.failed"
    assert event["level"] == "info"
    assert event["timestamp"].endswith("Z")
    assert "T" in event["timestamp"]
    assert {k: event[k] for k in ("request_id", "tenant", "job_id", "provider", "attempt")} == {
        "request_id": "req_1",
        "tenant": "acme",
        "job_id": "gen_1",
        "provider": "fal",
        "attempt": 2,
    }


def test_canary_secret_is_masked_in_nested_fields_and_messages(stream: io.StringIO) -> None:
    """Secret keys (any case, any depth) and credential-shaped strings become [REDACTED]."""
    structlog.get_logger().warning(
        f"provider.rejected key {CANARY}",
        request={
            "headers": {"Authorization": f"Bearer {CANARY}", "X-Api-Key": "plain-value"},
            "attempts": [{"note": f"used {CANARY} here"}, {"PASSWORD": "hunter2"}],
        },
        api_key=CANARY,
        detail=f'upstream said {{"api_key": "abc123"}} and token=xyz789 for {CANARY}',
        webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        replicate="r8_abcdefghijklmnop",
    )
    raw = stream.getvalue()
    for secret in (CANARY, "plain-value", "hunter2", "abc123", "xyz789", "whsec_", "r8_abc"):
        assert secret not in raw, secret
    (event,) = lines(stream)
    assert event["event"] == f"provider.rejected key {REDACTED}"
    assert event["api_key"] == REDACTED
    assert event["request"]["headers"] == {"Authorization": REDACTED, "X-Api-Key": REDACTED}
    assert event["request"]["attempts"] == [
        {"note": f"used {REDACTED} here"},
        {"PASSWORD": REDACTED},
    ]


def test_ordinary_fields_that_merely_sound_secret_are_kept(stream: io.StringIO) -> None:
    """Token counts and idempotency keys are not credentials and stay readable."""
    structlog.get_logger().info(
        "bucket.checked", tokens_available=4, max_tokens=10, idempotency_key="order-17", task="a-1"
    )
    (event,) = lines(stream)
    assert event["tokens_available"] == 4
    assert event["max_tokens"] == 10
    assert event["idempotency_key"] == "order-17"
    assert event["task"] == "a-1"


def test_exception_tracebacks_are_formatted_and_scrubbed(stream: io.StringIO) -> None:
    """A logged exception is rendered as text with the secret in its message masked."""
    try:
        raise RuntimeError(f"auth failed with {CANARY}")
    except RuntimeError:
        structlog.get_logger().exception("attempt.crashed")
    (event,) = lines(stream)
    assert "RuntimeError: auth failed with [REDACTED]" in event["exception"]
    assert CANARY not in stream.getvalue()


def test_objects_are_scrubbed_through_their_repr(stream: io.StringIO) -> None:
    """A config object logged whole does not leak its api_key field."""

    class ProviderConfig:
        def __repr__(self) -> str:
            return "ProviderConfig(name='fal', api_key='0123456789abcdef')"

    structlog.get_logger().info("config.loaded", provider=ProviderConfig())
    (event,) = lines(stream)
    assert event["provider"] == f"ProviderConfig(name='fal', api_key='{REDACTED}')"


def test_registered_secrets_are_masked_whatever_their_shape(stream: io.StringIO) -> None:
    """Configured keys with no recognisable prefix are masked once registered."""
    register_secrets(["f00dfeedcafe-odd-shape", "short"])
    structlog.get_logger().info("odd.key", note="x f00dfeedcafe-odd-shape y", other="short")
    (event,) = lines(stream)
    assert event["note"] == f"x {REDACTED} y"
    assert event["other"] == "short"


def test_stdlib_records_share_the_json_format_and_redaction(stream: io.StringIO) -> None:
    """uvicorn/litestar-style stdlib log records come out as redacted JSON lines too."""
    logging.getLogger("uvicorn.error").warning("client sent %s", f"Bearer {CANARY}")
    (event,) = lines(stream)
    assert event["event"] == f"client sent {REDACTED}"
    assert event["level"] == "warning"
    assert event["logger"] == "uvicorn.error"


def test_httpx_request_logs_are_silenced(stream: io.StringIO) -> None:
    """httpx and httpcore log only warnings and above, even at DEBUG."""
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("httpcore").getEffectiveLevel() == logging.WARNING
    logging.getLogger("httpx").info("HTTP Request: GET https://x")
    assert stream.getvalue() == ""


def test_configure_logging_is_idempotent(stream: io.StringIO) -> None:
    """Configuring again replaces our handler instead of stacking a second one."""
    configure_logging("INFO", stream=stream)
    configure_logging("INFO", stream=stream)
    logging.getLogger("switchman.startup").warning("once")
    structlog.get_logger().debug("filtered.out")
    assert [e["event"] for e in lines(stream)] == ["once"]


def test_trace_id_is_added_inside_a_span(stream: io.StringIO) -> None:
    """Events logged under an active span carry its trace id."""
    tracer = setup_tracing(provider=TracerProvider())
    with attempt_span(tracer, "fal", "image", 1) as span:
        structlog.get_logger().info("attempt.started")
        expected = format(span.get_span_context().trace_id, "032x")
    structlog.get_logger().info("outside")
    inside, outside = lines(stream)
    assert inside["trace_id"] == expected
    assert "trace_id" not in outside


def test_redaction_processor_works_under_capture_logs() -> None:
    """The processor can be used with structlog's capture_logs in other modules' tests."""
    with capture_logs(processors=[redact_secrets]) as logs:
        structlog.get_logger().info("x.y", nested={"token": CANARY}, text=CANARY)
    assert logs[0]["nested"] == {"token": REDACTED}
    assert logs[0]["text"] == REDACTED


def test_scrub_recognises_provider_key_shapes() -> None:
    """Each provider's credential shape is recognised in free text."""
    samples = [
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc",
        "Basic dXNlcjpwYXNzd29yZA==",
        "AIzaSyA1234567890abcdefghijklmnopqrstu",
        "key_0123456789abcdef0123456789abcdef",
        "6f1c2d3e-1a2b-4c3d-8e9f-0a1b2c3d4e5f:0123456789abcdef0123456789abcdef",
    ]
    for sample in samples:
        assert scrub(f"<{sample}>") == f"<{REDACTED}>", sample
