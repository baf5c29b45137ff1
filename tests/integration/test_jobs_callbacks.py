"""Caller callbacks over real HTTP, verified by an independent Standard Webhooks library.

Issue 4, acceptance 5.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from router.config import Config
from tests.integration.harness import make_config, serve
from tests.loopback import serve_app

SECRET = "whsec_" + base64.b64encode(b"callback-secret-for-tests-32byte").decode()


@dataclass
class Receiver:
    """A caller's callback endpoint that fails its first ``failures`` deliveries."""

    failures: int = 0
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    succeeded: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.deliveries.append((dict(request.headers), await request.read()))
        if len(self.deliveries) <= self.failures:
            return web.Response(status=503)
        self.succeeded.set()
        return web.Response(status=204)

    async def redirect(self, _request: web.Request) -> web.Response:
        raise web.HTTPFound("/hook")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """The receiver on 127.0.0.1 (a free port)."""
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    app.router.add_post("/moved", rec.redirect)
    async with serve_app(app) as url:
        rec.url = url
        yield rec


def callback_config(tmp_path: Path, *, max_attempts: int = 5) -> Config:
    config = make_config(tmp_path, [{"name": "p"}])
    security = msgspec.structs.replace(
        config.security,
        callback_secret=SECRET,
        callback_hosts=["127.0.0.1", "*.svc.internal"],
        callback_backoff_s=0.02,
        callback_max_attempts=max_attempts,
    )
    return msgspec.structs.replace(config, security=security)


async def test_a_callback_is_signed_and_retried_with_a_stable_id(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Two failures, then the third try lands; every try verifies, with the same webhook-id."""
    receiver.failures = 2
    async with serve(callback_config(tmp_path)) as running:
        body = {"kind": "image", "prompt": "a lighthouse", "callback_url": f"{receiver.url}/hook"}
        job = (await running.generate(body)).json()
        async with asyncio.timeout(30):
            await receiver.succeeded.wait()
        stored = (await running.client.get(f"/v1/generations/{job['id']}")).json()

    assert len(receiver.deliveries) == 3
    verifier = Webhook(SECRET)
    ids = set()
    for headers, raw in receiver.deliveries:
        payload = verifier.verify(raw, headers)  # raises on a bad signature or timestamp
        assert payload["id"] == job["id"]
        assert payload["status"] == "succeeded"
        ids.add(headers["webhook-id"])
    assert ids == {f"msg_{job['id']}"}
    assert stored["status"] == "succeeded"


async def test_a_callback_host_outside_the_allow_list_is_refused_at_creation(
    tmp_path: Path,
) -> None:
    """422 naming callback_url, and no job is created."""
    async with serve(callback_config(tmp_path)) as running:
        response = await running.generate(
            {"kind": "image", "prompt": "x", "callback_url": "https://evil.example.com/hook"}
        )
        listed = (await running.client.get("/v1/generations")).json()["data"]

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "callback_url"
    assert listed == []


async def test_redirects_are_not_followed(tmp_path: Path, receiver: Receiver) -> None:
    """A 302 counts as a failed delivery; the redirect target is never called."""
    async with serve(callback_config(tmp_path, max_attempts=2)) as running:
        body = {"kind": "image", "prompt": "x", "callback_url": f"{receiver.url}/moved"}
        job = (await running.generate(body)).json()
        store = running.service.store
        assert store is not None
        async with asyncio.timeout(30):
            while (stored := await store.get_job(None, job["id"])) is not None and (
                stored.callback_state == "pending"
            ):
                await asyncio.sleep(0.02)

    assert receiver.deliveries == []
    assert stored is not None
    assert stored.callback_state == "failed"
