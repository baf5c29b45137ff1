"""The benchmark's pass-through floor forwards the request and the upstream's answer as is."""

from __future__ import annotations

from typing import Any

import httpx
from aiohttp import web

from router.http_client import new_client
from tests.bench.passthrough import make_app
from tests.loopback import serve_app


async def test_the_pass_through_forwards_body_and_key_and_returns_the_upstream_answer() -> None:
    seen: list[tuple[str, bytes]] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append((request.headers.get("authorization", ""), await request.read()))
        status = 429 if len(seen) > 1 else 200
        return web.json_response({"n": len(seen)}, status=status)

    app = web.Application()
    app.router.add_post("/v1/images/generations", upstream)
    headers = {"authorization": "Bearer sk-sandbox", "content-type": "application/json"}
    async with serve_app(app) as base, new_client() as upstream_client:
        passthrough = make_app(f"{base}/v1/images/generations", upstream_client)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=_asgi(passthrough)),
            base_url="http://passthrough.test",
        ) as client:
            first = await client.post("/v1/images/generations", content=b'{"p":1}', headers=headers)
            second = await client.post("/v1/images/generations", content=b"{}", headers=headers)
    assert (first.status_code, first.json()) == (200, {"n": 1})
    assert (second.status_code, second.json()) == (429, {"n": 2})
    assert seen == [("Bearer sk-sandbox", b'{"p":1}'), ("Bearer sk-sandbox", b"{}")]


def _asgi(app: Any) -> Any:
    """httpx types its ASGI app more narrowly than litestar's ``__call__``; both are ASGI."""
    return app
