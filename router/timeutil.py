"""Timestamps as the API shows them."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["rfc3339"]


def rfc3339(ts: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC with milliseconds (``2026-11-23T11:00:00.123Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
