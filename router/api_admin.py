"""Operator endpoints (admin scope, DESIGN §3): drain, breaker control, reload, provider tests.

Every action is audited (:mod:`router.audit`) with the acting tenant, the request
id and the operator's reason, and wakes the status page so it shows at once.
The job views here span every tenant, unlike ``GET /v1/generations``: an
on-call engineer chasing a stuck job does not know whose it is.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery

from router.api_common import json_response, principal_of, service_of
from router.audit import audit
from router.errors import ConfigError, FieldError, NotFound, ValidationFailed
from router.models import FINAL_STATUSES
from router.problems import field_errors_from_msgspec
from router.registry import ProviderRuntime
from router.service import Service
from router.store import JobRecord, to_api_job

__all__ = ["ROUTE_HANDLERS", "provider_state"]

_ADMIN = "admin"
_JOB_STATUSES = ("queued", "running", *FINAL_STATUSES)
#: How long a credentials test may take before it is reported as failed.
_PROBE_TIMEOUT_S = 30.0

_T = TypeVar("_T")
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class DrainBody(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/providers/{name}/drain``: why the provider is taken out of rotation."""

    reason: Reason


class UndrainBody(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/providers/{name}/undrain``: the body and its reason are optional."""

    reason: Reason | None = None


class BreakerBody(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/providers/{name}/breaker``: hold the breaker open, or close it."""

    state: Literal["open", "closed"]
    reason: Reason | None = None


async def _body(request: Request[Any, Any, Any], typ: type[_T]) -> _T:
    """Decode the JSON body as ``typ``; an empty body counts as ``{}``."""
    raw = (await request.body()).strip() or b"{}"
    try:
        value = msgspec.json.decode(raw, type=typ)
    except msgspec.ValidationError as exc:
        raise ValidationFailed([field_errors_from_msgspec(exc)]) from None
    except msgspec.DecodeError:
        raise ValidationFailed([FieldError("body", "malformed JSON")], status=400) from None
    reason = getattr(value, "reason", None)
    if reason is not None and not reason.strip():
        raise ValidationFailed([FieldError("reason", "expected some text, not only spaces")])
    return value


def _provider(service: Service, name: str) -> ProviderRuntime:
    assert service.registry is not None
    rt = service.registry.get(name)
    if rt is None:
        raise NotFound(f"no provider {name!r}")
    return rt


def provider_state(rt: ProviderRuntime) -> dict[str, Any]:
    """``GET /v1/providers``'s view of one provider plus the operator's holds."""
    breaker = rt.guard.breaker
    remaining = breaker.open_remaining_s
    return {
        **rt.describe(),
        "breaker_forced_open": breaker.forced_open,
        # inf (forced open) is not JSON; the forced flag says it instead.
        "breaker_open_remaining_s": round(remaining, 3) if remaining != float("inf") else None,
        "breaker_failures": breaker.failure_count,
    }


@post("/v1/providers/{name:str}/drain", status_code=200, summary="Drain a provider")
async def drain_provider(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    """Take the provider out of routing (in-flight attempts finish); ``reason`` is required."""
    principal = principal_of(request, _ADMIN)
    service = service_of(request)
    rt = _provider(service, name)
    body = await _body(request, DrainBody)
    was_drained = rt.drained
    reason = body.reason.strip()
    rt.guard.set_drained(True, reason)  # one write, which shared state carries to replicas
    service.metrics.provider_gauges(rt.name, drained=True)
    audit(
        "admin.provider_drained",
        principal,
        provider=rt.name,
        reason=reason,
        already_drained=was_drained,
    )
    service.status_changed()
    return json_response(provider_state(rt))


@post("/v1/providers/{name:str}/undrain", status_code=200, summary="Undrain a provider")
async def undrain_provider(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    """Put a drained provider back into routing."""
    principal = principal_of(request, _ADMIN)
    service = service_of(request)
    rt = _provider(service, name)
    body = await _body(request, UndrainBody)
    previous = rt.drain_reason
    was_drained = rt.drained
    rt.guard.set_drained(False)
    service.metrics.provider_gauges(rt.name, drained=False)
    audit(
        "admin.provider_undrained",
        principal,
        provider=rt.name,
        reason=body.reason,
        drain_reason=previous,
        was_drained=was_drained,
    )
    service.status_changed()
    return json_response(provider_state(rt))


@post("/v1/providers/{name:str}/breaker", status_code=200, summary="Force a provider's breaker")
async def force_breaker(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    """``open`` holds the breaker open (no half-open probes) until ``closed`` releases it."""
    principal = principal_of(request, _ADMIN)
    service = service_of(request)
    rt = _provider(service, name)
    body = await _body(request, BreakerBody)
    breaker = rt.guard.breaker
    previous = breaker.state
    if body.state == "open":
        breaker.force_open()
    else:
        breaker.force_closed()
    # A forced close from closed fires no transition; keep the gauge exact either way.
    service.metrics.set_breaker_state(rt.name, breaker.state)
    audit(
        "admin.breaker_forced_open" if body.state == "open" else "admin.breaker_forced_closed",
        principal,
        provider=rt.name,
        reason=body.reason,
        previous=previous,
    )
    service.status_changed()
    return json_response(provider_state(rt))


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


@post("/v1/providers/{name:str}/test", status_code=200, summary="Test a provider's credentials")
async def test_provider(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    """A live, cheap authenticated call to the provider: ``{ok, latency_s, detail}``."""
    principal = principal_of(request, _ADMIN)
    service = service_of(request)
    rt = _provider(service, name)
    assert service.client is not None
    api_key = rt.config.api_key
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            result = await rt.adapter.probe(service.client, api_key)
        ok, latency, detail = result.ok, result.latency_s, _redact(result.detail, api_key)
    except TimeoutError:
        ok, latency, detail = False, _PROBE_TIMEOUT_S, "timeout"
    audit("admin.provider_tested", principal, provider=rt.name, ok=ok, detail=detail)
    return json_response(
        {"provider": rt.name, "ok": ok, "latency_s": round(latency, 4), "detail": detail}
    )


def _config_field_errors(exc: ConfigError) -> list[FieldError]:
    errors = []
    for line in exc.errors:
        field, sep, message = line.partition(": ")
        errors.append(FieldError(field, message) if sep else FieldError("$", line))
    return errors


@post("/v1/admin/reload", status_code=200, summary="Reload the config file")
async def reload_config(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Re-read the config file without dropping requests; an invalid file changes nothing."""
    principal = principal_of(request, _ADMIN)
    service = service_of(request)
    try:
        result = await service.reload()
    except ConfigError as exc:
        errors = _config_field_errors(exc)
        audit("admin.config_reload_rejected", principal, errors=[e.field for e in errors])
        raise ValidationFailed(errors) from None
    audit(
        "admin.config_reloaded",
        principal,
        added=list(result.added),
        removed=list(result.removed),
        changed=list(result.changed),
    )
    return json_response(
        {
            "reloaded": True,
            "providers": list(result.providers),
            "added": list(result.added),
            "removed": list(result.removed),
            "changed": list(result.changed),
            "restart_required": list(result.restart_required),
        }
    )


def _admin_job(job: JobRecord, now: float) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.to_builtins(to_api_job(job))
    body["tenant"] = job.tenant
    body["age_s"] = round(max(0.0, now - job.created_at), 3)
    return body


@get("/v1/admin/jobs", summary="Jobs of every tenant (admin)")
async def list_all_jobs(
    request: Request[Any, Any, Any],
    status: FromQuery[str | None] = None,
    limit: FromQuery[int] = 20,
    tenant: FromQuery[str | None] = None,
) -> Response[bytes]:
    """Newest first across every configured tenant (or one, with ``tenant``)."""
    principal_of(request, _ADMIN)
    errors = []
    if status is not None and status not in _JOB_STATUSES:
        errors.append(FieldError("status", "expected " + "|".join(_JOB_STATUSES)))
    if not 1 <= limit <= 100:
        errors.append(FieldError("limit", "expected 1..100"))
    if errors:
        raise ValidationFailed(errors, status=400)
    service = service_of(request)
    assert service.store is not None
    assert service.engine is not None
    tenants = [tenant] if tenant is not None else [t.id for t in service.config.tenants]
    pages = []
    for t in tenants:
        page, _ = await service.store.list_jobs(t, status=status, limit=limit, cursor=None)
        pages.append(page)
    merged = heapq.nsmallest(
        limit, (j for page in pages for j in page), key=lambda j: (-j.created_at, j.id)
    )
    now = service.clock.time()
    # A job in flight is fresher in memory than in the store.
    jobs = [service.engine.live_job(j.id) or j for j in merged]
    return json_response({"data": [_admin_job(j, now) for j in jobs], "next_cursor": None})


@get("/v1/admin/jobs/{job_id:str}", summary="Any tenant's job (admin)")
async def get_any_job(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[bytes]:
    """One job of any tenant, with its tenant and age."""
    principal_of(request, _ADMIN)
    service = service_of(request)
    assert service.store is not None
    assert service.engine is not None
    job = service.engine.live_job(job_id) or await service.store.get_job(None, job_id)
    if job is None:
        raise NotFound(f"no generation {job_id!r}")
    return json_response(_admin_job(job, service.clock.time()))


#: Litestar route handlers this module contributes to the app.
ROUTE_HANDLERS: list[Any] = [
    drain_provider,
    undrain_provider,
    force_breaker,
    test_provider,
    reload_config,
    list_all_jobs,
    get_any_job,
]
