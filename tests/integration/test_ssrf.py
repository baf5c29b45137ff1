"""SSRF over real HTTP: internal callback and input-image URLs are refused 100 %, at
admission and again at connect time, and redirects are never followed."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from router.tenants import Tenancy
from tests.integration.harness import Running, serve
from tests.integration.tenant_support import FakeResolver, tenant_config
from tests.loopback import serve_app

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
INTERNAL = ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "fd00::1", "::ffff:127.0.0.1"]
LITERAL_URLS = [
    "https://127.0.0.1/hook",
    "https://10.0.0.8/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::1]/hook",
    "https://[fd00::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "http://127.0.0.1:9/hook",
    "https://localhost/hook",
]


def tenancy_of(running: Running) -> Tenancy:
    tenancy = running.service.engine.tenancy  # type: ignore[union-attr]
    assert isinstance(tenancy, Tenancy)
    return tenancy


async def background_done(running: Running) -> None:
    """Wait until the engine's callback deliveries have finished."""
    engine = running.service.engine
    assert engine is not None
    while engine._background:
        await asyncio.wait(set(engine._background))


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A loopback HTTP server: ``/redirect`` answers 302 to ``/target``; hits are counted."""
    hits: dict[str, int] = {}

    async def handle(request: web.Request) -> web.Response:
        hits[request.path] = hits.get(request.path, 0) + 1
        if request.path == "/redirect":
            raise web.HTTPFound(f"http://127.0.0.1:{request.url.port}/target")
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, content_type="image/png")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with serve_app(app) as url:
        yield url, hits


def config_for(tmp_path: Path, **security: Any) -> Any:
    return tenant_config(
        tmp_path,
        [{"name": "oa"}],
        security={"callback_secret": SECRET, "callback_max_attempts": 1, **security},
    )


async def test_internal_urls_are_refused_for_callbacks_and_input_images(tmp_path: Path) -> None:
    """Every internal literal and every name resolving inside: 422 on the right field."""
    config = config_for(tmp_path, callback_hosts=["*"])
    async with serve(config) as running:
        tenancy = tenancy_of(running)
        refused = total = 0
        for field in ("callback_url", "input_image_url"):
            for url in LITERAL_URLS:
                total += 1
                r = await running.generate({"kind": "image", "prompt": "x", field: url})
                if r.status_code == 422 and r.json()["errors"][0]["field"] == field:
                    refused += 1
            for address in INTERNAL:
                tenancy.resolver = FakeResolver([address])
                total += 1
                url = "https://innocent.example/hook"
                r = await running.generate({"kind": "image", "prompt": "x", field: url})
                if r.status_code == 422 and r.json()["errors"][0]["field"] == field:
                    refused += 1
        assert refused == total == 28
        emulator = running.emulator("oa")
        assert emulator.stats.total == 0  # nothing was routed


async def test_callbacks_rebound_to_loopback_are_refused_at_connect_time(
    tmp_path: Path, receiver: tuple[str, dict[str, int]]
) -> None:
    """A name public at admission and loopback at delivery is never connected to."""
    config = config_for(tmp_path, callback_hosts=["*"])
    async with serve(config) as running:
        resolver = FakeResolver(["93.184.216.34"], ["127.0.0.1"])
        tenancy_of(running).resolver = resolver
        r = await running.generate(
            {"kind": "image", "prompt": "x", "callback_url": "https://hooks.example/cb"}
        )
        assert r.status_code == 200, r.text
        await background_done(running)
        assert running.service.store is not None
        job = await running.service.store.get_job(None, r.json()["id"])
        assert job is not None
        assert job.callback_state == "failed"
        assert resolver.calls == 2  # checked at admission and again when connecting


async def test_redirects_are_not_followed_by_callbacks_or_input_fetches(
    tmp_path: Path, receiver: tuple[str, dict[str, int]]
) -> None:
    """A 302 from an allow-listed host is a failed delivery / fetch; its target gets nothing."""
    base, hits = receiver
    config = tenant_config(
        tmp_path,
        [
            {"name": "oa"},
            {
                "name": "stab",
                "adapter": "stability",
                "kinds": ["video"],
                "models": {"video": "stable-video-diffusion"},
            },
        ],
        security={
            "callback_secret": SECRET,
            "callback_max_attempts": 1,
            "callback_hosts": ["127.0.0.1"],
            "input_image_hosts": ["127.0.0.1"],
        },
    )
    async with serve(config) as running:
        r = await running.generate(
            {"kind": "image", "prompt": "x", "callback_url": f"{base}/redirect"}
        )
        assert r.status_code == 200
        await background_done(running)
        video = await running.generate(
            {"kind": "video", "prompt": "x", "input_image_url": f"{base}/redirect"}
        )
        assert video.json()["status"] == "failed"
        assert video.json()["error"]["code"] == "invalid_request"
    assert hits.get("/redirect") == 2
    assert "/target" not in hits


async def test_input_images_rebound_to_loopback_are_refused_at_connect_time(
    tmp_path: Path,
) -> None:
    """An input image host public at admission and loopback at fetch time is never reached."""
    config = tenant_config(
        tmp_path,
        [
            {
                "name": "stab",
                "adapter": "stability",
                "kinds": ["video"],
                "models": {"video": "stable-video-diffusion"},
            }
        ],
        security={"input_image_hosts": ["*"]},
    )
    async with serve(config) as running:
        resolver = FakeResolver(["93.184.216.34"], ["127.0.0.1"])
        tenancy_of(running).resolver = resolver
        video = await running.generate(
            {"kind": "video", "prompt": "x", "input_image_url": "https://img.example/cat.png"}
        )
        assert video.json()["status"] == "failed", video.text
        error = video.json()["error"]
        assert error["code"] == "invalid_request"
        # Refused by the guard (not a connection error from trying): never connected.
        assert "BlockedAddress" in error["message"], error
        assert resolver.calls == 2  # checked at admission and again when connecting
        assert running.emulator("stab").stats.total == 0  # nothing was submitted
