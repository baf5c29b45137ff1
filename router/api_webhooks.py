"""Upstream completion webhooks: ``POST /v1/webhooks/{provider}``.

A provider's webhook is verified by its adapter (signature and freshness), then
de-duplicated by its delivery id, then handed to the job engine, which completes
the attempt without waiting for its next poll. The URL Switchman gives a
provider carries the job and attempt ids, so even an attempt whose submit
response was lost can be matched.
"""

from __future__ import annotations

import hashlib
from typing import Any

import structlog
from litestar import Request, Response, post
from litestar.params import FromPath, FromQuery

from router import webhook_relay
from router.api_common import json_response, service_of
from router.errors import NotFound, Unauthorized

__all__ = ["ROUTE_HANDLERS"]

_log = structlog.get_logger("switchman.webhooks")


@post("/v1/webhooks/{provider:str}", status_code=202, summary="Upstream completion webhook")
async def upstream_webhook(
    request: Request[Any, Any, Any],
    provider: FromPath[str],
    job: FromQuery[str | None] = None,
    attempt: FromQuery[str | None] = None,
) -> Response[bytes]:
    """Verify, de-duplicate and apply a provider's webhook."""
    service = service_of(request)
    assert service.registry is not None
    assert service.engine is not None
    rt = service.registry.get(provider)
    if rt is None:
        raise NotFound(f"no provider {provider!r}")
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    if not rt.adapter.verify_webhook(headers, body, service.clock.time()):
        _log.warning("webhook.rejected", provider=provider)
        raise Unauthorized("invalid or stale webhook signature")
    delivery = headers.get("webhook-id") or hashlib.sha256(body).hexdigest()
    if not service.webhook_replay.first_time(f"{provider}:{delivery}"):
        _log.info("webhook.replayed", provider=provider)
        return json_response({"status": "duplicate"}, 200)
    event = rt.adapter.parse_webhook(headers, body)
    if event is None:
        return json_response({"status": "ignored"}, 202)
    running_here = job is not None and service.engine.live_job(job) is not None
    applied = service.engine.deliver_webhook(provider, job, attempt, event)
    forwarded = False
    if not running_here and job and attempt and service.shared_state is not None:
        # Another replica may be running the job: let it apply the event now.
        forwarded = await service.shared_state.forward_webhook(
            webhook_relay.encode(provider, job, attempt, event)
        )
    _log.info("webhook.received", provider=provider, applied=applied, forwarded=forwarded)
    return json_response({"status": "accepted", "applied": applied, "forwarded": forwarded}, 202)


#: Litestar route handlers this module contributes to the app.
ROUTE_HANDLERS: list[Any] = [upstream_webhook]
