"""structlog configuration: JSON lines with request context, and secrets masked.

Every event carries what was bound for the request in contextvars (``request_id``,
``trace_id``, ``tenant``, ``job_id``, ``provider``, ``attempt``, ``outcome``), a level
and an ISO-8601 UTC timestamp. Records from the standard library (uvicorn, litestar,
SQLAlchemy) go through the same processors so the output is one format.

Secrets never reach the output (DESIGN §7). :func:`redact_secrets` masks, anywhere
in an event, nested or not: values under secret-sounding keys (``api_key``,
``authorization``, ``password``, ``secret``, ``token``, ``key``, ``x-api-key``, …),
``key=value`` pairs with such keys inside strings, and strings shaped like
credentials (``Bearer …``, ``sk-…``, ``r8_…``, ``whsec_…``, …). The configured
provider keys themselves can be registered with :func:`register_secrets` so that
they are masked whatever their shape.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from metrics.tracing import current_trace_id

__all__ = [
    "REDACTED",
    "add_trace_id",
    "configure_logging",
    "redact_secrets",
    "register_secrets",
    "scrub",
]

REDACTED: Final = "[REDACTED]"

# A key is secret when it is one of these words or its last `_`/`-` part is.
_SECRET_WORDS: Final = frozenset(
    {
        "authorization",
        "password",
        "passwd",
        "passwords",
        "secret",
        "secrets",
        "token",
        "key",
        "keys",
        "apikey",
        "cookie",
        "credential",
        "credentials",
        "signature",
    }
)
# Caller-chosen and useful when debugging duplicate requests; not a credential.
_NOT_SECRET: Final = frozenset({"idempotency_key"})
# Keys structlog's stdlib bridge puts in the event dict; never ours to rewrite.
_PASSTHROUGH: Final = frozenset({"_record", "_from_structlog"})
_MAX_DEPTH: Final = 8

# Credential shapes, anywhere inside a string.
_TOKEN_RE: Final = re.compile(
    r"(?i:\bbearer\s+[A-Za-z0-9\-._~+/]+=*)"
    r"|(?i:\bbasic\s+[A-Za-z0-9+/]{8,}=*)"
    r"|\bsk-[A-Za-z0-9_\-]{4,}"  # OpenAI, Stability
    r"|\br8_[A-Za-z0-9]{6,}"  # Replicate
    r"|\bwhsec_[A-Za-z0-9+/=]{6,}"  # Standard Webhooks secrets
    r"|\bkey_[A-Za-z0-9]{16,}"  # Runway
    r"|\bAIza[0-9A-Za-z_\-]{30,}"  # Google
    r"|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:[0-9a-f]{16,}"  # fal
)
# `api_key=…`, `"password": "…"`, `Authorization: …` inside a message or a repr.
_PAIR_RE: Final = re.compile(
    r"(?i)([\w-]*(?:api[_-]?key|password|passwd|secret|token|authorization))"
    r"(\s*[\"']?\s*[=:]\s*[\"']?)"
    r"([^\"'\s,;)}\]]+)"
)
_literals: set[str] = set()
_literal_re: re.Pattern[str] | None = None


def register_secrets(values: Iterable[str]) -> None:
    """Mask these exact strings (e.g. the configured provider API keys) wherever they appear.

    Strings shorter than 8 characters are ignored: masking them would mangle
    ordinary words. Calls accumulate; pass the keys again after a config reload.
    """
    global _literal_re  # one process-wide set, like the logging configuration itself
    _literals.update(v for v in values if len(v) >= 8)
    if _literals:
        # Longest first so a key that contains another is masked whole.
        ordered = sorted(_literals, key=len, reverse=True)
        _literal_re = re.compile("|".join(re.escape(v) for v in ordered))


def scrub(text: str) -> str:
    """``text`` with every credential-shaped substring replaced by ``[REDACTED]``."""
    if _literal_re is not None:
        text = _literal_re.sub(REDACTED, text)
    text = _TOKEN_RE.sub(REDACTED, text)
    return _PAIR_RE.sub(_mask_pair, text)


def _mask_pair(match: re.Match[str]) -> str:
    return f"{match.group(1)}{match.group(2)}{REDACTED}"


@lru_cache(maxsize=2048)
def _is_secret_key(key: str) -> bool:
    k = key.lower().replace("-", "_")
    if k in _NOT_SECRET:
        return False
    return k in _SECRET_WORDS or k.rpartition("_")[2] in _SECRET_WORDS


def _redact(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, int | float):
        return value
    if depth >= _MAX_DEPTH:
        return REDACTED
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and _is_secret_key(k) else _redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(v, depth + 1) for v in value]
    # Structs, exceptions, anything else: the renderer would print its repr, which
    # may hold a secret field, so scrub the repr instead.
    return scrub(repr(value))


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets anywhere in the event (see the module docstring)."""
    for k, v in event_dict.items():
        if k in _PASSTHROUGH:
            continue
        if _is_secret_key(k):
            event_dict[k] = REDACTED
        else:
            event_dict[k] = _redact(v, 0)
    return event_dict


def add_trace_id(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: add the current OpenTelemetry trace id unless one is bound."""
    if "trace_id" not in event_dict:
        trace_id = current_trace_id()
        if trace_id is not None:
            event_dict["trace_id"] = trace_id
    return event_dict


class _SwitchmanHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler this module installs; marked so reconfiguring replaces it."""


def configure_logging(
    level: str = "INFO",
    *,
    json: bool = True,
    stream: TextIO | None = None,
    cache_loggers: bool = False,
) -> None:
    """Configure structlog and the standard library's root logger. Safe to call again.

    Args:
        level: the lowest level written (``DEBUG`` … ``CRITICAL``).
        json: one JSON object per line (production); ``False`` for a console format.
        stream: where to write; standard output by default.
        cache_loggers: cache bound loggers on first use. Faster, but cached loggers
            ignore later reconfiguration, including ``structlog.testing.capture_logs``,
            so leave it off in tests.
    """
    numeric = logging.getLevelNamesMapping()[level.upper()]
    out = stream if stream is not None else sys.stdout
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,  # first, so request context is there
        structlog.processors.add_log_level,
        add_trace_id,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_secrets,  # last before rendering: sees formatted tracebacks too
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=cache_loggers,
    )

    handler = _SwitchmanHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _SwitchmanHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # httpx logs every request at INFO; that is a per-request cost and noise.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
