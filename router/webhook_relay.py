"""Webhooks between replicas: a provider's webhook lands on any replica behind the load
balancer, but only the replica running the job can apply it (the job's lease).

The receiving replica verifies the signature and, when the job is not running there,
publishes the parsed event on the shared-state channel; the owner applies it and the
others ignore it. Without Redis nothing is forwarded and the owner's polling finishes
the job, only later.
"""

from __future__ import annotations

from typing import Any

import msgspec

from router.adapters.base import PollResult, WebhookEvent

__all__ = ["decode", "encode"]


def encode(provider: str, job_id: str, attempt_id: str, event: WebhookEvent) -> dict[str, Any]:
    """The message another replica can apply with :func:`decode`."""
    return {
        "provider": provider,
        "job": job_id,
        "attempt": attempt_id,
        "upstream_id": event.upstream_id,
        "result": msgspec.to_builtins(event.result),
    }


def decode(payload: Any) -> tuple[str, str, str, WebhookEvent]:
    """``(provider, job id, attempt id, event)``; raises ``msgspec.ValidationError``."""
    provider, job_id, attempt_id = (str(payload[k]) for k in ("provider", "job", "attempt"))
    result = msgspec.convert(payload["result"], PollResult)
    return provider, job_id, attempt_id, WebhookEvent(str(payload["upstream_id"]), result)
