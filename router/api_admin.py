"""Operator endpoints (admin scope): drain, breaker control, reload, provider tests."""

from __future__ import annotations

from typing import Any

__all__ = ["ROUTE_HANDLERS"]

#: Litestar route handlers this module contributes to the app.
ROUTE_HANDLERS: list[Any] = []
