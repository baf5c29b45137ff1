"""Run a real Switchman (uvicorn on loopback) with sandbox emulators, inside a test.

The service, its emulators and the test's HTTP client share one event loop;
every byte still crosses a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import uvicorn

from router.app import asgi_app
from router.auth import hash_key
from router.config import Config, parse_config
from router.sandbox import Emulator
from router.service import Service

__all__ = ["ADMIN_KEY", "KEY", "Running", "make_config", "serve"]

KEY = "sk_sw_test_generate_and_read"
ADMIN_KEY = "sk_sw_test_admin"


@dataclass
class Running:
    """A live service: its URL, a client that talks to it, and its parts."""

    url: str
    client: httpx.AsyncClient
    service: Service

    def emulator(self, name: str) -> Emulator:
        return self.service.emulators[name]

    async def generate(self, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
        payload = body or {"kind": "image", "prompt": "a lighthouse at dusk"}
        hdrs = {"Prefer": "wait=30", **{k.replace("_", "-"): v for k, v in headers.items()}}
        return await self.client.post("/v1/generations", json=payload, headers=hdrs)


def make_config(
    tmp_path: Path,
    providers: Sequence[dict[str, Any]],
    *,
    routing: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    database_url: str | None = None,
) -> Config:
    """A config with one sandbox emulator per provider (``faults`` and ``emulator`` keys)."""
    emulators = []
    provider_cfgs = []
    for p in providers:
        p = dict(p)
        faults = p.pop("faults", {})
        adapter = p.get("adapter", "openai")
        emulators.append({"name": p["name"], "adapter": adapter, "faults": faults})
        provider_cfgs.append(
            {
                "adapter": adapter,
                "base_url": f"sandbox:{p['name']}",
                "api_key": "sk-sandbox",
                "kinds": ["image"],
                "models": {"image": "dall-e-3"},
                **p,
            }
        )
    raw = {
        "server": {"port": 0, **(server or {})},
        "routing": routing or {},
        "storage": {
            "database_url": database_url or f"sqlite+aiosqlite:///{tmp_path}/sw.db",
            "assets": {"path": str(tmp_path / "assets")},
        },
        "tenants": [
            {"id": "team-a", "api_keys": [hash_key(KEY)], "scopes": ["generate", "read"]},
            {
                "id": "ops",
                "api_keys": [hash_key(ADMIN_KEY)],
                "scopes": ["generate", "read", "admin"],
            },
        ],
        "sandbox": {"emulators": emulators},
        "providers": provider_cfgs,
    }
    return parse_config(msgspec.json.decode(msgspec.json.encode(raw)))


@contextlib.asynccontextmanager
async def serve(
    config: Config, *, webhooks: bool = False, **service_args: Any
) -> AsyncIterator[Running]:
    """Start Switchman on 127.0.0.1 (a free port) and yield a client for it.

    With ``webhooks=True`` providers are handed webhook URLs pointing at it.
    """
    service = Service(config, **service_args)
    server = uvicorn.Server(
        uvicorn.Config(
            asgi_app(service),
            host="127.0.0.1",
            port=0,
            lifespan="on",
            log_level="warning",
            access_log=False,
            log_config=None,  # logging is ours (metrics.logging), not uvicorn's
            timeout_keep_alive=75,  # as `switchman serve`: clients close idle connections first
        )
    )
    # The test runner owns SIGINT/SIGTERM; uvicorn must not take them over.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("server did not start")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert service.engine is not None
    if webhooks:
        service.engine.webhook_base_url = url  # the port is known only now
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
        limits=limits,
    ) as client:
        try:
            yield Running(url, client, service)
        finally:
            service.begin_shutdown()  # ends long-lived streams (status page SSE) first
            server.should_exit = True
            await task
