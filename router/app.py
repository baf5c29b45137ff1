"""The HTTP API (DESIGN §3) on litestar.

Handlers take the raw request and answer with pre-encoded bytes: msgspec does
the decoding (which *is* validation, see :mod:`router.models`) and encoding, so
the hot path pays for no framework serialization.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from time import perf_counter
from typing import Any

import msgspec
import structlog
from litestar import Litestar, Request, Response, get, post
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.params import FromPath, FromQuery
from litestar.response import Stream
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from opentelemetry.trace import NoOpTracer, SpanKind

from metrics.tracing import extract_context
from router import api_admin, api_assets, api_credentials, api_usage, api_webhooks, tenants, ui
from router.api_common import json_response, principal_of, service_of
from router.api_schema import SwitchmanSchemaPlugin
from router.callbacks import check_callback_url
from router.errors import Conflict, FieldError, NotFound, ValidationFailed
from router.events import parse_last_event_id, stream_events
from router.idempotency import Answer, fingerprint, validate_key
from router.models import FINAL_STATUSES, GenerationRequest, Job, JobList
from router.problems import field_errors_from_msgspec, handle_exception
from router.request_checks import check_request
from router.service import Service
from router.store import JobRecord, to_api_job

__all__ = ["RequestContextMiddleware", "asgi_app", "create_app"]

_log = structlog.get_logger("switchman.api")
_decode_request = msgspec.json.Decoder(GenerationRequest).decode
_encode = msgspec.json.Encoder().encode
_JSON = "application/json"


class _Head(msgspec.Struct):
    """The parts of a stored job answer its response headers need."""

    id: str
    provider: str | None = None
    attempts: list[Any] = msgspec.field(default_factory=list)


_decode_head = msgspec.json.Decoder(_Head).decode
#: How long an idempotency lock outlives a replica that died holding it.
_IDEMPOTENCY_LOCK_TTL_S = 30.0
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
#: The longest a caller may hold a request open with ``Prefer: wait``.
_MAX_WAIT_S = 300.0


def _prefer_wait(value: str | None) -> float | None:
    if not value:
        return None
    m = _PREFER_WAIT.search(value)
    if m is None:
        return None
    return min(float(m.group(1)), _MAX_WAIT_S)


def _request_timeout(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0 or seconds > 86_400:
        raise ValidationFailed(
            [FieldError("X-Request-Timeout", "expected seconds, a number in (0, 86400]")],
            status=400,
        )
    return seconds


def _job_response(job: JobRecord, status: int) -> Response[bytes]:
    api_job: Job = to_api_job(job)
    headers = {"Location": f"/v1/generations/{job.id}"}
    if job.provider:
        headers["X-Switchman-Provider"] = job.provider
    headers["X-Switchman-Attempts"] = str(len(job.attempts))
    return json_response(api_job, status, headers)


def _answer_response(answer: Answer, wait_s: float | None) -> Response[bytes]:
    """The HTTP response of a (possibly replayed) create answer."""
    head = _decode_head(answer.body)
    headers = {"Location": f"/v1/generations/{head.id}"}
    if head.provider:
        headers["X-Switchman-Provider"] = head.provider
    headers["X-Switchman-Attempts"] = str(len(head.attempts))
    if answer.status == 200 and wait_s:
        headers["Preference-Applied"] = f"wait={wait_s:g}"
    if answer.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        content=answer.body, status_code=answer.status, media_type=_JSON, headers=headers
    )


def _idempotency_lock(
    service: Service, tenant: str, key: str | None
) -> AbstractAsyncContextManager[None]:
    """The shared lock on a new ``Idempotency-Key`` while its job is admitted.

    Only with ``storage.redis_url``, and only for a key not seen before (a replay never
    gets here). It fails closed: Redis unreachable is 503 with ``Retry-After``
    (``SharedStateUnavailable``) rather than a risk of a duplicate, and a key held by a
    request on another replica is 409 (``IdempotencyLockBusy``). A request without a
    key never touches it, so it is served while Redis is down.
    """
    if key is None or service.shared_state is None:
        return nullcontext()
    return service.shared_state.idempotency_lock(tenant, key, _IDEMPOTENCY_LOCK_TTL_S)


@post("/v1/generations", status_code=202, summary="Create a generation job")
async def create_generation(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Route a generation to the best provider; ``Prefer: wait=N`` holds the response.

    With an ``Idempotency-Key`` the first answer under the key is replayed for the
    same body (422 for another body, 409 while the first is still being answered on
    another replica; see :mod:`router.idempotency`).
    """
    principal = principal_of(request, "generate")
    body = await request.body()
    try:
        gen = _decode_request(body)
    except msgspec.ValidationError as exc:  # well-formed JSON, wrong shape or range
        raise ValidationFailed([field_errors_from_msgspec(exc)]) from None
    except msgspec.DecodeError:
        raise ValidationFailed([FieldError("body", "malformed JSON")], status=400) from None
    service = service_of(request)
    check_request(gen, service.config)
    if gen.callback_url is not None:
        check_callback_url(gen.callback_url, service.config.security)
    await tenants.check_admission(service, principal.tenant, gen)  # rate limit, SSRF
    headers = request.headers
    timeout_s = _request_timeout(headers.get("x-request-timeout"))
    wait_s = _prefer_wait(headers.get("prefer"))
    engine = service.engine
    assert engine is not None
    trace = {k: v for k in ("traceparent", "tracestate") if (v := headers.get(k))}

    async def create(key: str | None = None, fp: str | None = None) -> Answer:
        async with (
            _idempotency_lock(service, principal.tenant, key),
            tenants.admission(service, principal.tenant, gen) as created,
        ):
            job = await engine.submit(
                principal.tenant,
                gen,
                timeout_s=timeout_s,
                trace_headers=trace,
                idempotency_key=key,
                fingerprint=fp,
            )
            created(job.id)
        if wait_s:
            await engine.wait(job.id, wait_s)
        status = 200 if job.status in FINAL_STATUSES else 202
        return Answer(status, _encode(to_api_job(job)), job.id)

    key = headers.get("idempotency-key")
    if key is None or service.idempotency is None:
        answer = await create()
    else:
        answer = await service.idempotency.run(
            principal.tenant, validate_key(key), fingerprint(body), create
        )
    return _answer_response(answer, wait_s)


@get("/v1/generations/{job_id:str}", summary="Get a generation job")
async def get_generation(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[bytes]:
    """A job of the caller's tenant; another tenant's id is 404."""
    principal = principal_of(request, "read")
    service = service_of(request)
    assert service.engine is not None
    assert service.store is not None
    live = service.engine.live_job(job_id)
    if live is not None and live.tenant == principal.tenant:
        return _job_response(live, 200)
    job = await service.store.get_job(principal.tenant, job_id)
    if job is None:
        raise NotFound(f"no generation {job_id!r}")
    return _job_response(job, 200)


@get("/v1/generations", summary="List the tenant's generation jobs")
async def list_generations(
    request: Request[Any, Any, Any],
    status: FromQuery[str | None] = None,
    limit: FromQuery[int] = 20,
    cursor: FromQuery[str | None] = None,
) -> Response[bytes]:
    """Newest first, with an opaque cursor."""
    principal = principal_of(request, "read")
    errors = []
    if status is not None and status not in ("queued", "running", *FINAL_STATUSES):
        errors.append(FieldError("status", "expected queued|running|succeeded|failed|canceled"))
    if not 1 <= limit <= 100:
        errors.append(FieldError("limit", "expected 1..100"))
    if errors:
        raise ValidationFailed(errors, status=400)
    service = service_of(request)
    assert service.store is not None
    try:
        jobs, next_cursor = await service.store.list_jobs(
            principal.tenant, status=status, limit=limit, cursor=cursor
        )
    except ValueError:
        raise ValidationFailed([FieldError("cursor", "invalid cursor")], status=400) from None
    return json_response(JobList([to_api_job(j) for j in jobs], next_cursor))


@post("/v1/generations/{job_id:str}/cancel", status_code=200, summary="Cancel a generation")
async def cancel_generation(
    request: Request[Any, Any, Any], job_id: FromPath[str]
) -> Response[bytes]:
    """Cancel upstream where the provider allows; the job ends ``canceled`` either way.

    A job that is already final is not changed: 409 with the job's status.
    """
    principal = principal_of(request, "generate")
    service = service_of(request)
    assert service.engine is not None
    assert service.store is not None
    current = service.engine.live_job(job_id) or await service.store.get_job(
        principal.tenant, job_id
    )
    if current is None or current.tenant != principal.tenant:
        raise NotFound(f"no generation {job_id!r}")
    if current.status in FINAL_STATUSES:
        raise Conflict(f"generation {job_id!r} is already {current.status}")
    job = await service.engine.cancel_job(principal.tenant, job_id)
    if job is None:
        raise NotFound(f"no generation {job_id!r}")
    return _job_response(job, 200 if job.status in FINAL_STATUSES else 202)


@get("/v1/generations/{job_id:str}/events", summary="A generation's events (SSE)")
async def generation_events(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Stream:
    """Server-Sent Events: ``status``, ``progress``, ``attempt``, ``output``, then ``final``.

    Event ids count from 1 per job; reconnect with ``Last-Event-ID`` to get the rest.
    The stream ends after the ``final`` event.
    """
    principal = principal_of(request, "read")
    service = service_of(request)
    assert service.engine is not None
    assert service.store is not None
    live = service.engine.live_job(job_id)
    mine = live is not None and live.tenant == principal.tenant
    if not mine and await service.store.get_job(principal.tenant, job_id) is None:
        raise NotFound(f"no generation {job_id!r}")
    after = parse_last_event_id(request.headers.get("last-event-id"))
    events = stream_events(
        service.store,
        service.engine.events,
        job_id,
        after=after,
        clock=service.clock,
        stop=lambda: service.shutting_down,
    )
    return Stream(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@get("/v1/providers", summary="Every provider's live state")
async def list_providers(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Breaker, headroom, latency, success ratio, cost and score per provider."""
    principal_of(request, "read")
    service = service_of(request)
    assert service.registry is not None
    return json_response({"providers": [rt.describe() for rt in service.registry]})


@get("/v1/providers/{name:str}", summary="One provider's live state")
async def get_provider(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    """One provider, as in the list."""
    principal_of(request, "read")
    service = service_of(request)
    assert service.registry is not None
    rt = service.registry.get(name)
    if rt is None:
        raise NotFound(f"no provider {name!r}")
    return json_response(rt.describe())


@get("/healthz", summary="Liveness")
async def healthz() -> Response[bytes]:
    """The process is alive."""
    return json_response({"status": "ok"})


@get("/readyz", summary="Readiness")
async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Config loaded, store reachable, at least one provider routable."""
    service = service_of(request)
    checks = service.readiness()
    store_ok = service.store is not None and await service.store.ping()
    checks["store"] = store_ok
    ok = service.ready and store_ok and checks["routable_providers"] > 0
    return json_response(
        {"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503
    )


@get("/metrics", summary="Prometheus metrics", include_in_schema=True)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The Prometheus exposition."""
    service = service_of(request)
    service.refresh_gauges()
    body, content_type = service.metrics.render()
    return Response(content=body, media_type=content_type)


class RequestContextMiddleware:
    """Request id, server span and HTTP metrics for every request.

    Pure ASGI (no framework middleware machinery) to keep the per-request cost low.
    """

    __slots__ = ("app", "service")

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        http: HTTPScope = scope
        service = self.service
        started = perf_counter()
        request_id = None
        traceparent = None
        for key, value in http["headers"]:
            if key == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
            elif key == b"traceparent":
                traceparent = value.decode("latin-1")
        if request_id is None:
            request_id = "req_" + os.urandom(12).hex()
        rid = request_id.encode("latin-1")
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", rid), _NOSNIFF]
                # API answers are per caller: no shared cache keeps them unless a route says so.
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append(_NO_STORE)
                message["headers"] = headers
            await send(message)

        tracer = service.tracer
        assert tracer is not None
        method = http["method"]
        if isinstance(tracer, NoOpTracer):  # tracing off: no span bookkeeping per request
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                route = http.get("path_template") or "unmatched"
                service.metrics.observe_http(route, method, status, perf_counter() - started)
            return
        # Only parse a caller's trace context when there is one: most calls have none.
        ctx = extract_context({"traceparent": traceparent}) if traceparent else None
        with tracer.start_as_current_span(method, context=ctx, kind=SpanKind.SERVER) as span:
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                route = http.get("path_template") or "unmatched"
                if span.is_recording():
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                    span.set_attribute("http.request.method", method)
                    span.set_attribute("http.response.status_code", status)
                service.metrics.observe_http(route, method, status, perf_counter() - started)


def create_app(service: Service, *, manage_lifecycle: bool = True) -> Litestar:
    """The litestar app for ``service``; it starts and stops the service with the app."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if manage_lifecycle:
            await service.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await service.stop(service.config.server.shutdown_grace_s)

    app = Litestar(
        route_handlers=[
            *api_admin.ROUTE_HANDLERS,
            *api_webhooks.ROUTE_HANDLERS,
            *ui.ROUTE_HANDLERS,
            *api_assets.ROUTE_HANDLERS,
            *api_credentials.ROUTE_HANDLERS,
            *api_usage.ROUTE_HANDLERS,
            create_generation,
            cancel_generation,
            generation_events,
            get_generation,
            list_generations,
            list_providers,
            get_provider,
            healthz,
            readyz,
            metrics_endpoint,
        ],
        lifespan=[lifespan],
        exception_handlers={Exception: handle_exception},
        request_max_body_size=service.config.server.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Switchman",
            version="1",
            path="/schema",
            render_plugins=[SwitchmanSchemaPlugin()],
        ),
        debug=False,
        logging_config=None,
    )
    app.state.service = service
    return app


def asgi_app(service: Service) -> ASGIApp:
    """The whole service as one ASGI app: the request-context layer around litestar.

    The layer sits outside litestar so that even unrouted requests carry an
    ``X-Request-Id`` and are counted (as route ``unmatched``).
    """
    return RequestContextMiddleware(create_app(service), service)
