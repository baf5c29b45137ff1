"""Outputs kept by Switchman over real HTTP (issue 4, acceptance 6)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from aiohttp import web

from router.sandbox.async_jobs import AsyncJobEmulator, EmulatedJob
from router.sandbox.media import png_bytes
from tests.integration.harness import ADMIN_KEY, make_config, serve
from tests.loopback import serve_app

BIG = png_bytes(64, 64) + b"\0" * 10_000


@pytest.fixture
async def files() -> AsyncIterator[str]:
    """A file host standing in for a provider's CDN: HTML where a PNG should be, a huge PNG."""

    async def html(_request: web.Request) -> web.Response:
        return web.Response(body=b"<html>AccessDenied</html>", content_type="image/png")

    async def huge(_request: web.Request) -> web.Response:
        return web.Response(body=BIG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/not-an-image.png", html)
    app.router.add_get("/huge.png", huge)
    async with serve_app(app) as url:
        yield url


def providers() -> list[dict[str, Any]]:
    return [
        {
            "name": "rep",
            "adapter": "replicate",
            "api_key": "r8_sandbox",
            "models": {"image": "black-forest-labs/flux-schnell"},
            "priority": 1,
            "poll": {"interval_s": 0.05, "max_interval_s": 0.1},
        },
        {
            "name": "fal",
            "adapter": "fal",
            "api_key": "fal-sandbox-key",
            "models": {"image": "fal-ai/flux/schnell"},
            "priority": 2,
            "poll": {"interval_s": 0.05, "max_interval_s": 0.1},
        },
    ]


def config(tmp_path: Path) -> Any:
    cfg = make_config(tmp_path, providers(), routing={"strategy": "priority"})
    assets = msgspec.structs.replace(cfg.storage.assets, max_bytes=5_000)
    return msgspec.structs.replace(cfg, storage=msgspec.structs.replace(cfg.storage, assets=assets))


def serve_outputs_from(emulator: Any, url: str) -> None:
    """Make the Replicate emulator's predictions point their output at ``url``."""
    assert isinstance(emulator, AsyncJobEmulator)

    def outputs(_job: EmulatedJob) -> list[str]:
        return [url]

    emulator._outputs = outputs  # type: ignore[attr-defined]  # the fake's own hook


@pytest.mark.parametrize(
    ("path", "reason"), [("not-an-image.png", "not a PNG"), ("huge.png", "larger than")]
)
async def test_a_bad_output_fails_the_attempt_and_fails_over(
    tmp_path: Path, files: str, path: str, reason: str
) -> None:
    """Wrong bytes or over the cap: the Replicate attempt fails, fal's output is kept."""
    async with serve(config(tmp_path)) as running:
        serve_outputs_from(running.emulator("rep"), f"{files}/{path}")
        job = (await running.generate()).json()

    assert job["status"] == "succeeded", job
    first, second = job["attempts"]
    assert (first["provider"], first["status"]) == ("rep", "failed")
    assert first["error"]["kind"] == "malformed_response"
    assert reason in first["error"]["message"]
    assert second["provider"] == "fal"
    assert job["outputs"][0]["url"].startswith("/v1/assets/ast_")


async def test_a_kept_output_is_served_after_the_provider_deleted_it(tmp_path: Path) -> None:
    """The provider's file is gone; Switchman's copy is served, checked, tenant-scoped."""
    async with serve(config(tmp_path)) as running:
        job = (await running.generate()).json()
        output = job["outputs"][0]
        await running.emulator("rep").stop()  # every provider URL is dead now
        await running.emulator("fal").stop()
        got = await running.client.get(output["url"])
        async with httpx.AsyncClient(
            base_url=running.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as other_tenant:
            foreign = await other_tenant.get(output["url"])
        missing = await running.client.get("/v1/assets/ast_0000")

    assert job["status"] == "succeeded"
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/png"
    assert got.content.startswith(b"\x89PNG")
    assert hashlib.sha256(got.content).hexdigest() == output["sha256"]
    assert (output["content_type"], output["bytes"]) == ("image/png", len(got.content))
    assert output["width"] > 0
    assert output["height"] > 0
    assert foreign.status_code == 404
    assert missing.status_code == 404
