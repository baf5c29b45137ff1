"""Helpers every HTTP adapter needs: retry hints, rate-limit headers, tolerant JSON.

Providers say "come back later" in several dialects (``retry-after-ms``,
``Retry-After`` as seconds or an HTTP date, ``x-ratelimit-reset-requests: 6m0s``);
these functions turn each into plain seconds so the guards above the adapters
see one unit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import msgspec

from router.adapters.base import AttemptContext, RateLimitHint
from router.errors import ErrorKind, UpstreamError
from router.ssrf import read_capped

__all__ = [
    "error_fields",
    "fetch_input",
    "parse_duration",
    "parse_rate_limit",
    "parse_retry_after",
    "safe_json",
    "transport_error",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
#: Upper bound on any hint, so a corrupt header cannot park a provider for days.
MAX_HINT_S = 3600.0


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by lower-case name; works for httpx.Headers and plain dicts alike."""
    value = headers.get(name)
    if value is None and not hasattr(headers, "multi_items"):
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration (``20ms``, ``1s``, ``6m0s``, ``1h2m``) or a bare number."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total = 0.0
    pos = 0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    return total if pos == len(text) else None


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date).

    ``now`` is unix seconds, used only for the HTTP-date form. Capped at an hour.
    """
    ms = _header(headers, "retry-after-ms")
    if ms is not None:
        try:
            return min(MAX_HINT_S, max(0.0, float(ms) / 1000.0))
        except ValueError:
            pass
    value = _header(headers, "retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return min(MAX_HINT_S, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return min(MAX_HINT_S, max(0.0, when.timestamp() - now))


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def parse_rate_limit(
    headers: Mapping[str, str], prefix: str = "x-ratelimit-", suffix: str = "-requests"
) -> RateLimitHint | None:
    """``{prefix}limit{suffix}``, ``remaining`` and ``reset`` as a hint; ``None`` when absent."""
    limit = _number(_header(headers, f"{prefix}limit{suffix}"))
    remaining = _number(_header(headers, f"{prefix}remaining{suffix}"))
    reset_s = parse_duration(_header(headers, f"{prefix}reset{suffix}"))
    if limit is None and remaining is None and reset_s is None:
        return None
    return RateLimitHint(remaining=remaining, limit=limit, reset_s=reset_s)


def safe_json(body: bytes) -> Any:
    """``body`` decoded as JSON, or ``None`` when it is not JSON."""
    if not body:
        return None
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None


def error_fields(body: bytes) -> tuple[str | None, str | None, str]:
    """``(code, type, message)`` from an ``{"error": {...}}`` body; blanks when absent."""
    data = safe_json(body)
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return None, None, ""
    code = err.get("code")
    type_ = err.get("type")
    message = err.get("message")
    return (
        code if isinstance(code, str) else None,
        type_ if isinstance(type_, str) else None,
        message if isinstance(message, str) else "",
    )


async def fetch_input(
    ctx: AttemptContext, url: str, *, max_bytes: int, phase_timeouts: httpx.Timeout | float
) -> tuple[bytes, str | None]:
    """GET a caller's ``input_image_url``: its bytes and content type.

    Goes through ``ctx.input_client`` (the connect-time SSRF guard) when the service
    has one, follows no redirect and stops reading past ``max_bytes``; the attempt's own
    total timeout bounds it (``phase_timeouts`` are httpx's per-phase ones). Raises
    ``httpx.HTTPError`` (a refused address included) or ``ValueError`` with a message
    safe to show the caller.
    """
    client = ctx.input_client or ctx.client
    stream = client.stream("GET", url, timeout=phase_timeouts, follow_redirects=False)
    async with stream as response:
        return await read_capped(response, max_bytes), response.headers.get("content-type")


def transport_error(
    provider: str, kind: ErrorKind, exc: Exception, upstream_id: str | None = None
) -> UpstreamError:
    """An :class:`UpstreamError` for a call that got no usable HTTP answer (every adapter)."""
    return UpstreamError(
        kind,
        f"{type(exc).__name__}: {exc}".rstrip(": "),
        provider=provider,
        upstream_id=upstream_id,
    )
