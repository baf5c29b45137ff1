"""Shared emulator plumbing: an aiohttp app on loopback, fault injection, counters.

A provider emulator subclasses :class:`Emulator`, lists its API routes (which
get faults) and its plain routes (file downloads, which do not), and says how
its provider writes an error body and its response headers. The base class
owns the server's life cycle, the admin endpoints tests and benchmarks drive
over HTTP, and the counters.

Admin endpoints (never faulted, no auth; the emulator only binds to loopback):

- ``GET /_sandbox/faults`` and ``POST /_sandbox/faults`` (a JSON ``FaultsConfig``
  that *replaces* the one in force);
- ``GET /_sandbox/stats``: the counters as JSON;
- ``POST /_sandbox/reset``: zero the counters and restore the initial faults.

The hot path does no logging and no per-request allocation beyond the request
record, because the emulator is the upstream the router's overhead is measured
against.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
from aiohttp import web

from breakers.clock import Clock
from router.config import FaultsConfig
from router.sandbox.faults import Decision, FaultAction, FaultInjector

__all__ = ["Emulator", "EmulatorStats", "Handler", "RecordedRequest"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the emulator received it (for tests to inspect)."""

    method: str
    path: str
    #: Case-insensitive, as received (aiohttp's read-only multidict, kept without copying).
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON."""
        return msgspec.json.decode(self.body)


class EmulatorStats:
    """Counters: requests in total, per path, per response status, per injected fault."""

    __slots__ = ("by_path", "by_status", "faults", "recent", "total")

    def __init__(self, recent: int = 50) -> None:
        self.total = 0
        self.by_path: dict[str, int] = {}
        self.by_status: dict[int, int] = {}
        self.faults: dict[str, int] = {}
        #: The last requests received, oldest first.
        self.recent: deque[RecordedRequest] = deque(maxlen=recent)

    def record(self, request: web.Request, body: bytes) -> None:
        """Count a request and keep its headers and body."""
        self.total += 1
        path = request.path
        self.by_path[path] = self.by_path.get(path, 0) + 1
        self.recent.append(RecordedRequest(request.method, path, request.headers, body))

    def count_status(self, status: int) -> None:
        """Count a response status."""
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def count_fault(self, action: FaultAction) -> None:
        """Count an injected fault."""
        self.faults[action.value] = self.faults.get(action.value, 0) + 1

    def last(self, path: str | None = None) -> RecordedRequest | None:
        """The most recent request (to ``path``, when given)."""
        for rec in reversed(self.recent):
            if path is None or rec.path == path:
                return rec
        return None

    def reset(self) -> None:
        """Zero every counter and forget the recorded requests."""
        self.total = 0
        self.by_path.clear()
        self.by_status.clear()
        self.faults.clear()
        self.recent.clear()

    def to_dict(self) -> dict[str, Any]:
        """The counters as JSON-ready data (bodies as text, truncated)."""
        return {
            "total": self.total,
            "by_path": dict(self.by_path),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "faults": dict(self.faults),
            "recent": [
                {
                    "method": r.method,
                    "path": r.path,
                    "headers": dict(r.headers),
                    "body": r.body[:4096].decode("utf-8", "replace"),
                }
                for r in self.recent
            ],
        }


_LINGER_RST = struct.pack("ii", 1, 0)


class Emulator:
    """Base of every provider emulator: start on loopback, inject faults, count.

    Subclasses implement :meth:`api_routes`, :meth:`fault_response`,
    :meth:`malformed_response` and :meth:`decorate`, and may add :meth:`plain_routes`.
    """

    #: The adapter name this emulator stands in for.
    provider: ClassVar[str] = "emulator"

    def __init__(
        self,
        faults: FaultsConfig | None = None,
        *,
        clock: Clock | None = None,
        seed: int = 0,
        recent: int = 50,
    ) -> None:
        self.faults = FaultInjector(faults, clock=clock, seed=seed)
        self.stats = EmulatorStats(recent)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._base_url: str | None = None
        self._stopping = asyncio.Event()

    # -- subclass hooks ---------------------------------------------------------------

    def api_routes(self) -> list[tuple[str, str, Handler]]:
        """``(method, path, handler)`` of the provider's API; these get faults."""
        raise NotImplementedError

    def plain_routes(self) -> list[tuple[str, str, Handler]]:
        """Routes served without faults (file downloads)."""
        return []

    def fault_response(self, decision: Decision) -> web.Response:
        """The provider's error response for an injected outage, 429 or error status."""
        raise NotImplementedError

    def malformed_response(self) -> web.Response:
        """A 200 whose body the provider's clients cannot parse."""
        return web.Response(
            status=200, body=b'{"created": 1, "data": [{"url": ', content_type="application/json"
        )

    def decorate(self, response: web.StreamResponse, decision: Decision) -> None:
        """Add the provider's per-response headers (request id, rate-limit state)."""

    # -- life cycle -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("emulator not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running emulator, without a trailing slash."""
        if self._base_url is None:
            raise RuntimeError("emulator not started")
        return self._base_url

    def build_app(self) -> web.Application:
        """The aiohttp application: faulted API routes, plain routes, admin routes."""
        app = web.Application()
        for method, path, handler in self.api_routes():
            app.router.add_route(method, path, self._faulted(handler))
        for method, path, handler in self.plain_routes():
            app.router.add_route(method, path, handler)
        app.router.add_get("/_sandbox/faults", self._get_faults)
        app.router.add_post("/_sandbox/faults", self._set_faults)
        app.router.add_get("/_sandbox/stats", self._get_stats)
        app.router.add_post("/_sandbox/reset", self._reset)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve on ``host:port``; port 0 picks a free one (see :attr:`port`)."""
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        self._stopping.clear()
        # handler_cancellation: a hung handler ends when its client gives up.
        runner = web.AppRunner(
            self.build_app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        netloc = f"[{host}]" if ":" in host else host  # IPv6 literals need brackets
        self._base_url = f"http://{netloc}:{self._port}"
        self.faults.restart()

    async def stop(self) -> None:
        """Release hung requests, close connections and stop serving."""
        if self._runner is None:
            return
        self._stopping.set()
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the faulted path -------------------------------------------------------------

    def _faulted(self, handler: Handler) -> Handler:
        stats = self.stats
        faults = self.faults

        async def faulted(request: web.Request) -> web.StreamResponse:
            stats.record(request, await request.read())
            decision = faults.decide()
            if decision.latency_s > 0:
                await asyncio.sleep(decision.latency_s)
            action = decision.action
            response: web.StreamResponse
            if action is FaultAction.NONE:
                response = await handler(request)
            else:
                stats.count_fault(action)
                if action is FaultAction.HANG:
                    await self._stopping.wait()
                    self._abort(request)
                    raise asyncio.CancelledError
                if action is FaultAction.RESET:
                    self._abort(request)
                    raise asyncio.CancelledError
                if action is FaultAction.MALFORMED:
                    response = self.malformed_response()
                else:
                    response = self.fault_response(decision)
            self.decorate(response, decision)
            stats.count_status(response.status)
            return response

        return faulted

    @staticmethod
    def _abort(request: web.Request) -> None:
        """Close the connection with a TCP RST, the way a crashed upstream does."""
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        transport.abort()

    # -- admin ------------------------------------------------------------------------

    async def _get_faults(self, _request: web.Request) -> web.Response:
        return web.json_response(body=msgspec.json.encode(self.faults.config))

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            config = msgspec.json.decode(await request.read(), type=FaultsConfig)
        except msgspec.DecodeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.faults.config = config
        return web.json_response(body=msgspec.json.encode(config))

    async def _get_stats(self, _request: web.Request) -> web.Response:
        return web.json_response(body=msgspec.json.encode(self.stats.to_dict()))

    async def _reset(self, _request: web.Request) -> web.Response:
        self.stats.reset()
        self.faults.restart()
        return web.json_response({"ok": True})
