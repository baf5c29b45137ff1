"""The stack's own floor: an empty pass-through on Switchman's server, framework and client.

``python -m tests.bench.passthrough --port P --upstream URL`` serves one route,
``POST /v1/images/generations``, that forwards the body to ``URL`` with the shared
upstream client (:func:`router.http_client.new_client`) and answers with the
upstream's status and bytes. It runs on uvicorn with the options ``switchman
serve`` uses (uvloop, httptools, no access log, the same GC tuning), so the only
difference from the ``switchman`` side is Switchman's own work: auth, validation,
routing, guards, the job record, telemetry. Its added latency is what any service
built on this stack pays before doing anything, on this machine, in the same run.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any, Final

import httpx
import uvicorn
from litestar import Litestar, Request, Response, post

from router.cli import tune_gc
from router.http_client import new_client

__all__ = ["main", "make_app"]

_FORWARDED: Final = ("authorization", "content-type")


def make_app(upstream: str, client: httpx.AsyncClient | None = None) -> Litestar:
    """The pass-through app in front of ``upstream`` (the emulator's generations URL).

    Without ``client`` it makes the shared upstream client on first use (on the
    serving loop) and closes it at shutdown.
    """
    clients: list[httpx.AsyncClient] = [] if client is None else [client]
    owned = client is None

    @post("/v1/images/generations", status_code=200)
    async def forward(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = await request.body()
        headers = {k: v for k in _FORWARDED if (v := request.headers.get(k)) is not None}
        if not clients:
            clients.append(new_client())
        upstream_response = await clients[0].post(upstream, content=body, headers=headers)
        return Response(
            content=upstream_response.content,
            status_code=upstream_response.status_code,
            media_type=upstream_response.headers.get("content-type", "application/json"),
        )

    async def close_client() -> None:
        if owned and clients:
            await clients[0].aclose()

    return Litestar([forward], on_shutdown=[close_client])


def main(argv: list[str] | None = None) -> int:
    """Serve the pass-through on 127.0.0.1 until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the emulator's generations URL")
    args = parser.parse_args(argv)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            tune_gc()

    server = _Server(
        uvicorn.Config(
            make_app(args.upstream),
            host="127.0.0.1",
            port=args.port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_config=None,
            log_level="warning",
            timeout_keep_alive=75,
            lifespan="on",
        )
    )
    server.run()
    return 0 if server.started else 3


if __name__ == "__main__":
    raise SystemExit(main())
