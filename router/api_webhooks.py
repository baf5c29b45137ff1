"""Upstream completion webhooks: ``POST /v1/webhooks/{provider}``."""

from __future__ import annotations

from typing import Any

__all__ = ["ROUTE_HANDLERS"]

#: Litestar route handlers this module contributes to the app.
ROUTE_HANDLERS: list[Any] = []
