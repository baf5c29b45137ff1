"""The on-call status page: ``GET /ui`` and its live feed ``GET /ui/events``.

One self-contained HTML page (inline CSS and JS, no build step, no external
assets) showing every provider's breaker, drain, score and its components,
rate-limit headroom, in-flight, latency, success ratio and cost, plus recent
failovers. It updates over Server-Sent Events: a JSON snapshot every
:data:`TICK_S` and at once when a breaker moves or an operator acts.

No auth: the page shows what the unauthenticated ``/metrics`` shows (no tenant
data, no secrets, no upstream URLs); ``server.ui_enabled: false`` turns it off.
A Content-Security-Policy pins the inline script and style by hash.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.response import Stream

from router.api_admin import provider_state
from router.api_common import service_of
from router.errors import ApiError, NotFound
from router.service import Service
from router.ui_page import HTML, SCRIPT, STYLE

__all__ = ["ROUTE_HANDLERS", "TICK_S", "status_snapshot"]

#: Seconds between snapshots when nothing happens.
TICK_S = 0.75
#: A stream ends after this long and the browser reconnects (``retry``), so no
#: connection lives forever behind a proxy or outlasts a deploy by much.
STREAM_LIFETIME_S = 300.0
#: Failovers the page lists, newest first.
MAX_FAILOVERS = 25
#: Open feeds at most; the page needs no key, so this bounds what strangers can hold open.
MAX_STREAMS = 64

_encode = msgspec.json.Encoder().encode


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


def _load_page() -> tuple[str, str]:
    """The page template and its Content-Security-Policy (inline code pinned by hash)."""
    page = HTML.replace("/*STYLE*/", STYLE).replace("/*SCRIPT*/", SCRIPT)
    csp = (
        "default-src 'none'; "
        f"script-src {_csp_hash(SCRIPT)}; "
        f"style-src {_csp_hash(STYLE)}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )
    return page, csp


_PAGE, _CSP = _load_page()


def status_snapshot(service: Service) -> dict[str, Any]:
    """What the page shows, as one JSON-able value."""
    providers = [provider_state(rt) for rt in service.registry] if service.registry else []
    failovers: list[dict[str, object]] = []
    if service.engine is not None:
        recent = list(service.engine.recent_failovers)
        failovers = recent[-MAX_FAILOVERS:][::-1]
    routable = sum(1 for p in providers if not p["drained"] and p["breaker"] != "open")
    return {
        "at": service.clock.time(),
        "ready": service.ready,
        "routable": routable,
        "providers": providers,
        "failovers": failovers,
    }


def _enabled(request: Request[Any, Any, Any]) -> Service:
    service = service_of(request)
    if not service.config.server.ui_enabled:
        raise NotFound("the status page is disabled (server.ui_enabled)")
    return service


_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@get("/ui", include_in_schema=False)
async def status_page(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The status page, with the current snapshot inlined so it paints at once."""
    service = _enabled(request)
    # "</" cannot appear inside the data block, so it cannot close the script element.
    initial = _encode(status_snapshot(service)).decode().replace("</", "<\\/")
    body = _PAGE.replace("/*INITIAL*/", initial)
    return Response(
        content=body.encode(), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS
    )


def _event(payload: bytes) -> bytes:
    return b"event: snapshot\ndata: " + payload + b"\n\n"


class TooManyStreams(ApiError):
    """Raised when :data:`MAX_STREAMS` status feeds are already open."""

    status = 503
    type_slug = "too-many-streams"
    title = "Too many status streams"


async def _snapshots(service: Service, open_streams: list[int]) -> AsyncIterator[bytes]:
    """Snapshots until the client goes (litestar cancels us), the service shuts down,
    or :data:`STREAM_LIFETIME_S` passes (the browser then reconnects)."""
    open_streams[0] += 1
    try:
        yield b"retry: 1000\n\n"
        ends = service.clock.monotonic() + STREAM_LIFETIME_S
        while not service.shutting_down and service.clock.monotonic() < ends:
            yield _event(_encode(status_snapshot(service)))
            await service.wait_status_change(TICK_S)
    finally:
        open_streams[0] -= 1


@get("/ui/events", include_in_schema=False)
async def status_events(request: Request[Any, Any, Any]) -> Stream:
    """Server-Sent Events: ``snapshot`` events carrying :func:`status_snapshot`."""
    service = _enabled(request)
    state = request.app.state
    open_streams: list[int] = state.setdefault("ui_open_streams", [0])
    if open_streams[0] >= MAX_STREAMS:
        raise TooManyStreams(
            f"{MAX_STREAMS} status streams are open; try again shortly", retry_after_s=5
        )
    return Stream(
        _snapshots(service, open_streams),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


#: Litestar route handlers this module contributes to the app.
ROUTE_HANDLERS: list[Any] = [status_page, status_events]
