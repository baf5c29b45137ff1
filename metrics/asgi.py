"""A pure-ASGI middleware that records ``switchman_http_*`` for every request.

It wraps the whole application, outside litestar, so that requests litestar never
routes (404, 405) are counted too; litestar's own ``middleware=[...]`` runs per route
handler, after routing, and would miss them. The route label is the matched path
*template*, read from the scope after the app returns: litestar's router writes
``scope["path_template"]`` (``/v1/generations/{id}``) into the same scope dict when a
route matches, and leaves it unset otherwise, which becomes ``"unmatched"``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Protocol

from metrics.prometheus import Metrics

__all__ = ["UNMATCHED", "HttpMetricsMiddleware", "MonotonicClock", "route_template"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: frameworks type scopes and messages as their own TypedDicts.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

#: Route label of requests that matched no route.
UNMATCHED: Final = "unmatched"


class MonotonicClock(Protocol):
    """What the middleware needs of a clock; ``breakers.clock.FakeClock`` fits.

    Declared here rather than imported: importing ``breakers`` loads its whole
    package, and ``metrics`` must stay below everything else.
    """

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...


class _SystemMonotonic:
    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()


def route_template(scope: Scope) -> str:
    """The matched route template litestar left in the scope, or ``"unmatched"``."""
    template = scope.get("path_template")
    return template if isinstance(template, str) and template else UNMATCHED


class HttpMetricsMiddleware:
    """Count and time HTTP requests by templated route, method and status.

    Args:
        app: the ASGI application to wrap (the litestar app).
        metrics: where to record.
        route_of: maps the scope, after the app has run, to a route label; it must
            return a template from a closed set, never the raw path.
        clock: the monotonic clock durations are read from.
    """

    __slots__ = ("_app", "_clock", "_metrics", "_route_of")

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        route_of: Callable[[Scope], str] = route_template,
        *,
        clock: MonotonicClock | None = None,
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._route_of = route_of
        self._clock = clock if clock is not None else _SystemMonotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = self._clock.monotonic()
        # 500 unless the app gets as far as starting a response.
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, send_with_status)
        finally:
            self._metrics.observe_http(
                self._route_of(scope),
                scope["method"],
                status,
                self._clock.monotonic() - started,
            )

    def __repr__(self) -> str:
        return f"HttpMetricsMiddleware({self._app!r})"
