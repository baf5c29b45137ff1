"""The audit trail of operator actions: who did what, to which provider, and why.

Every admin action is one structlog event named ``admin.<verb>`` carrying the
acting tenant (``actor``), the request id and the operator's stated ``reason``, so
"who drained fal at 03:12 and why" is one log query. Audit events go to a logger
of their own (``switchman.audit``) so they can be routed or retained separately,
at WARNING so that a service running at WARNING still keeps its audit trail.
"""

from __future__ import annotations

from typing import Any

import structlog

from router.auth import Principal

__all__ = ["audit"]

_log = structlog.get_logger("switchman.audit")


def audit(event: str, principal: Principal, **fields: Any) -> None:
    """Record one operator action (``event`` like ``admin.provider_drained``).

    The request id is the one the request-context middleware bound for this request.
    """
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    _log.warning(event, actor=principal.tenant, request_id=request_id, audit=True, **fields)
