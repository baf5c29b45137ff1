"""Replicate over real HTTP: the emulator alone, the adapter against it, and Switchman in front.

Switchman tests run the service on loopback with a Replicate emulator (and a fal one
to fail over to); the emulator records every upstream request, so the tests check
what was actually sent, field by field.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from aiohttp import web

from breakers.clock import FakeClock
from router.adapters.base import AttemptContext
from router.adapters.replicate import ReplicateAdapter
from router.config import FaultsConfig, ProviderConfig
from router.errors import UpstreamError
from router.models import GenerationRequest
from router.sandbox import PNG_SIGNATURE, png_size
from router.sandbox.fal import DEFAULT_API_KEY as FAL_KEY
from router.sandbox.mp4 import mp4_info
from router.sandbox.replicate import DEFAULT_API_KEY, DEFAULT_WEBHOOK_SECRET, ReplicateEmulator
from tests.integration.harness import Running, make_config, serve
from tests.loopback import serve_app
from tests.redis_support import REDIS_URL, purge_prefix, require_redis, unique_prefix

pytestmark = pytest.mark.integration

IMAGE_MODEL = "black-forest-labs/flux-schnell"
VIDEO_MODEL = "minimax/video-01"
AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


def replicate_provider(name: str = "rep", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "adapter": "replicate",
        "api_key": DEFAULT_API_KEY,
        "webhook_secret": DEFAULT_WEBHOOK_SECRET,
        "kinds": ["image", "video"],
        "models": {"image": IMAGE_MODEL, "video": VIDEO_MODEL},
        "cost": {"per_image_usd": 0.003, "per_video_s_usd": 0.05},
        "poll": {"interval_s": 0.05, "max_interval_s": 0.2},
        "priority": 1,
        **extra,
    }


def fal_provider(name: str = "fal", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "adapter": "fal",
        "api_key": FAL_KEY,
        "kinds": ["image", "video"],
        "models": {"image": "fal-ai/flux/dev", "video": "fal-ai/kling-video/v2.1/standard"},
        "cost": {"per_image_usd": 0.025, "per_video_s_usd": 0.07},
        "options": {"jwks_url": "/.well-known/jwks.json"},
        "poll": {"interval_s": 0.05, "max_interval_s": 0.2},
        "priority": 2,
        **extra,
    }


def config_for(tmp_path: Path, *providers: dict[str, Any]) -> Any:
    return make_config(
        tmp_path,
        list(providers) or [replicate_provider(), fal_provider()],
        routing={"strategy": "priority"},
    )


def emulator(running: Running, name: str = "rep") -> ReplicateEmulator:
    emu = running.emulator(name)
    assert isinstance(emu, ReplicateEmulator)
    return emu


async def download(running: Running, url: str) -> bytes:
    response = await running.client.get(url)
    assert response.status_code == 200, response.text
    return response.content


# -- through Switchman ----------------------------------------------------------------


async def test_image_job_succeeds_with_real_pngs_and_cost(tmp_path: Path) -> None:
    """An image job: PNG outputs of the asked size, per-image cost, and the exact upstream call."""
    body = {
        "kind": "image",
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "fog",
        "n": 2,
        "width": 768,
        "height": 512,
        "seed": 5,
    }
    async with serve(config_for(tmp_path)) as running:
        response = await running.generate(body)
        job = response.json()
        assert response.status_code == 200, job
        assert (job["status"], job["provider"]) == ("succeeded", "rep")
        assert job["cost_usd"] == pytest.approx(0.006)
        assert len(job["outputs"]) == 2
        for out in job["outputs"]:
            data = await download(running, out["url"])
            assert data.startswith(PNG_SIGNATURE)
            assert png_size(data) == (768, 512)
        emu = emulator(running)
        sent = emu.stats.last(f"/v1/models/{IMAGE_MODEL}/predictions")
    assert sent is not None
    assert sent.method == "POST"
    assert sent.headers["Authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert "Prefer" not in sent.headers
    assert sent.json() == {
        "input": {
            "prompt": "a lighthouse at dusk",
            "negative_prompt": "fog",
            "width": 768,
            "height": 512,
            "seed": 5,
            "num_outputs": 2,
            "output_format": "png",
        }
    }
    assert dict(emu.submissions) == {job["attempts"][0]["id"]: 1}


async def test_video_job_succeeds_with_a_real_mp4(tmp_path: Path) -> None:
    """A video job: an MP4 of the ratio's size and the asked duration, billed per second."""
    body = {"kind": "video", "prompt": "waves", "duration_s": 4, "aspect_ratio": "16:9"}
    async with serve(config_for(tmp_path)) as running:
        response = await running.generate(body)
        job = response.json()
        assert (job["status"], job["provider"]) == ("succeeded", "rep"), job
        data = await download(running, job["outputs"][0]["url"])
        sent = emulator(running).stats.last(f"/v1/models/{VIDEO_MODEL}/predictions")
    assert mp4_info(data) == (1280, 720, 4.0)
    assert job["outputs"][0]["content_type"] == "video/mp4"
    assert job["cost_usd"] == pytest.approx(0.20)
    assert sent is not None
    assert sent.json()["input"] == {"prompt": "waves", "aspect_ratio": "16:9", "duration": 4}


async def test_content_policy_fails_the_job_without_failover(tmp_path: Path) -> None:
    """Replicate's NSFW refusal is the caller's fault: the job fails, fal is never tried."""
    async with serve(config_for(tmp_path)) as running:
        response = await running.generate({"kind": "image", "prompt": "a forbidden scene"})
        job = response.json()
        fal_requests = running.emulator("fal").stats.total
    assert job["status"] == "failed"
    assert job["error"]["code"] == "content_policy"
    assert "NSFW" in job["error"]["message"]
    assert len(job["attempts"]) == 1
    assert fal_requests == 0


@pytest.mark.parametrize(
    ("faults", "job_faults", "kind"),
    [
        ({}, {"fail_ratio": 1.0}, "upstream_unavailable"),  # accepted, then E1000
        ({"error_ratio": 1.0, "error_status": 503}, {}, "upstream_unavailable"),
        ({"error_ratio": 1.0, "error_status": 429, "retry_after_s": 5}, {}, "rate_limited"),
    ],
)
async def test_retryable_failure_fails_over_to_fal(
    tmp_path: Path, faults: dict[str, Any], job_faults: dict[str, Any], kind: str
) -> None:
    """A retryable Replicate failure moves the job to fal, which completes it."""
    config = config_for(tmp_path, replicate_provider(faults=faults), fal_provider())
    async with serve(config) as running:
        emu = emulator(running)
        for key, value in job_faults.items():
            setattr(emu.job_faults, key, value)
        response = await running.generate({"kind": "image", "prompt": "a harbour"})
        job = response.json()
        submitted = dict(emu.submissions)
    assert (job["status"], job["provider"]) == ("succeeded", "fal"), job
    first, second = job["attempts"]
    assert (first["provider"], first["status"], first["error"]["kind"]) == ("rep", "failed", kind)
    assert (second["provider"], second["status"]) == ("fal", "succeeded")
    assert job["cost_usd"] == pytest.approx(0.025)
    assert all(n == 1 for n in submitted.values())  # never submitted twice


async def test_cancel_through_the_http_api_cancels_upstream(tmp_path: Path) -> None:
    """``POST /v1/generations/{id}/cancel`` cancels the running prediction upstream."""
    async with serve(config_for(tmp_path)) as running:
        emu = emulator(running)
        emu.job_faults.stall_ratio = 1.0
        created = await running.client.post(
            "/v1/generations", json={"kind": "image", "prompt": "slow"}
        )
        assert created.status_code == 202, created.text
        await emu.wait_accepted()
        (pid,) = emu.jobs
        response = await running.client.post(f"/v1/generations/{created.json()['id']}/cancel")
        job = response.json()
        cancels = emu.stats.by_path.get(f"/v1/predictions/{pid}/cancel", 0)
        status = emu.prediction(emu.jobs[pid])["status"]
    assert response.status_code in (200, 202)
    assert job["status"] == "canceled"
    assert cancels == 1
    assert status == "canceled"


# -- webhooks -------------------------------------------------------------------------


async def test_signed_webhook_completes_the_job_long_before_the_next_poll(tmp_path: Path) -> None:
    """With a 20 s poll interval, the completion webhook finishes the job in well under it."""
    config = config_for(tmp_path, replicate_provider(poll={"interval_s": 20, "max_interval_s": 20}))
    async with serve(config, webhooks=True) as running:
        started = time.monotonic()
        response = await running.generate({"kind": "image", "prompt": "a quay"})
        elapsed = time.monotonic() - started
        job = response.json()
        emu = emulator(running)
        sent = emu.stats.last(f"/v1/models/{IMAGE_MODEL}/predictions")
        polls = sum(n for p, n in emu.stats.by_path.items() if p.startswith("/v1/predictions/"))
        deliveries = list(emu.webhook_deliveries)
    assert job["status"] == "succeeded", job
    assert elapsed < 5.0, f"took {elapsed:.2f}s"
    assert polls == 0  # only the webhook could have finished it
    assert sent is not None
    hook = sent.json()["webhook"]
    attempt = job["attempts"][0]["id"]
    assert hook == f"{running.url}/v1/webhooks/rep?job={job['id']}&attempt={attempt}"
    assert sent.json()["webhook_events_filter"] == ["completed"]
    assert [d.status for d in deliveries] == [202]


async def test_bad_stale_and_replayed_webhooks_leave_the_job_alone(tmp_path: Path) -> None:
    """A forged signature and a stale timestamp get 401, a replayed id ``duplicate``."""
    config = config_for(tmp_path, replicate_provider(poll={"interval_s": 20, "max_interval_s": 20}))
    async with serve(config, webhooks=True) as running:
        emu = emulator(running)
        emu.job_faults.stall_ratio = 1.0  # only our hand-made webhooks can finish it
        created = (
            await running.client.post("/v1/generations", json={"kind": "image", "prompt": "x"})
        ).json()
        job_id, attempt_id = created["id"], created["attempts"][0]["id"]
        await emu.wait_accepted()
        (pid,) = emu.jobs
        url = f"/v1/webhooks/rep?job={job_id}&attempt={attempt_id}"
        done = msgspec.json.encode(
            {
                "id": pid,
                "status": "succeeded",
                "input": {"prompt": "x"},
                "output": [f"{emu.base_url}/files/{pid}-0-64x48.png"],
            }
        )
        now = int(time.time())

        async def post(headers: dict[str, str], body: bytes = done) -> httpx.Response:
            return await running.client.post(url, content=body, headers=headers)

        forged = emu.webhook_headers("msg_a", done, now) | {
            "webhook-signature": "v1," + base64.b64encode(b"\0" * 32).decode()
        }
        assert (await post(forged)).status_code == 401
        assert (await post(emu.webhook_headers("msg_b", done, now - 400))).status_code == 401
        still = (await running.client.get(f"/v1/generations/{job_id}")).json()
        assert (still["status"], still["outputs"]) == ("running", [])
        assert still["attempts"][0]["status"] == "running"

        good = await post(emu.webhook_headers("msg_c", done, now))
        assert good.status_code == 202
        assert good.json() == {"status": "accepted", "applied": True, "forwarded": False}
        assert running.service.engine is not None
        await running.service.engine.wait(job_id, 10)
        finished = (await running.client.get(f"/v1/generations/{job_id}")).json()

        failed = msgspec.json.encode({"id": pid, "status": "failed", "error": "E1000"})
        replay = await post(emu.webhook_headers("msg_c", failed, now), failed)
        after = (await running.client.get(f"/v1/generations/{job_id}")).json()
    assert finished["status"] == "succeeded"
    assert finished["cost_usd"] == pytest.approx(0.003)
    assert (replay.status_code, replay.json()) == (200, {"status": "duplicate"})
    assert after["status"] == "succeeded"
    assert after["attempts"] == finished["attempts"]


async def test_a_webhook_landing_on_another_replica_reaches_the_one_running_the_job(
    tmp_path: Path,
) -> None:
    """Behind a load balancer the webhook hits any replica: B forwards it (Redis pub/sub)
    and A, which runs the job, finishes it long before its next poll (20 s away)."""
    require_redis()
    prefix = unique_prefix()
    slow_polls = replicate_provider(poll={"interval_s": 20, "max_interval_s": 20})

    def replica(name: str) -> Any:
        config = make_config(tmp_path / name, [slow_polls], routing={"strategy": "priority"})
        storage = msgspec.structs.replace(config.storage, redis_url=REDIS_URL, redis_prefix=prefix)
        return msgspec.structs.replace(config, storage=storage)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        async with serve(replica("a")) as a, serve(replica("b")) as b:
            emu = emulator(a)
            emu.job_faults.stall_ratio = 1.0  # only the webhook can finish it
            created = (
                await a.client.post("/v1/generations", json={"kind": "image", "prompt": "x"})
            ).json()
            job_id, attempt_id = created["id"], created["attempts"][0]["id"]
            await emu.wait_accepted()
            (pid,) = emu.jobs
            done = msgspec.json.encode(
                {
                    "id": pid,
                    "status": "succeeded",
                    "input": {"prompt": "x"},
                    "output": [f"{emu.base_url}/files/{pid}-0-64x48.png"],
                }
            )
            sent = time.monotonic()
            answer = await b.client.post(
                f"/v1/webhooks/rep?job={job_id}&attempt={attempt_id}",
                content=done,
                headers=emu.webhook_headers("msg_fwd", done, int(time.time())),
            )
            assert answer.status_code == 202, answer.text
            assert answer.json()["forwarded"] is True
            assert a.service.engine is not None
            await a.service.engine.wait(job_id, 10)
            took = time.monotonic() - sent
            finished = (await a.client.get(f"/v1/generations/{job_id}")).json()
            polls = sum(n for p, n in emu.stats.by_path.items() if p.startswith("/v1/predictions/"))
    finally:
        purge_prefix(prefix)
    print(f"\nforwarded webhook: job finished on A {took * 1000:.0f} ms after B received it")
    assert finished["status"] == "succeeded", finished
    assert took < 5.0
    assert polls == 0  # A did not poll: the forwarded webhook finished it


async def test_webhook_delivery_retries_with_a_stable_id() -> None:
    """A failed delivery is retried, re-signed, with the same ``webhook-id``."""
    received: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(dict(request.headers))
        await request.read()
        return web.Response(status=500 if len(received) < 3 else 204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    emu = ReplicateEmulator()
    emu.webhook_backoff_s = 0.01
    emu.job_faults.queue_s = emu.job_faults.run_s = 0.0
    async with serve_app(app) as receiver, emu, httpx.AsyncClient() as client:
        response = await client.post(
            f"{emu.base_url}/v1/models/{IMAGE_MODEL}/predictions",
            json={"input": {"prompt": "p"}, "webhook": f"{receiver}/hook"},
            headers=AUTH,
        )
        assert response.status_code == 201
        async with asyncio.timeout(5):
            await emu.drain()
    assert [d.status for d in emu.webhook_deliveries] == [500, 500, 204]
    assert len({h["webhook-id"] for h in received}) == 1
    assert all(h["webhook-signature"].startswith("v1,") for h in received)


# -- the adapter against the emulator -------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def adapter_for(emu: ReplicateEmulator, **fields: Any) -> ReplicateAdapter:
    base: dict[str, Any] = {
        "name": "rep",
        "adapter": "replicate",
        "base_url": emu.base_url,
        "kinds": ["image", "video"],
        "api_key": DEFAULT_API_KEY,
        "models": {"image": IMAGE_MODEL, "video": VIDEO_MODEL},
    }
    return ReplicateAdapter(ProviderConfig(**(base | fields)))


def ctx(client: httpx.AsyncClient) -> AttemptContext:
    return AttemptContext(client=client, job_id="job_t", attempt_id="att_t", deadline=0.0)


async def test_adapter_cancels_a_running_prediction(client: httpx.AsyncClient) -> None:
    """Cancel a running prediction: ``True``, and it then polls as ``canceled``."""
    emu = ReplicateEmulator()
    async with emu:
        emu.job_faults.run_s = 60.0
        adapter = adapter_for(emu)
        submitted = await adapter.submit(GenerationRequest(kind="image", prompt="p"), ctx(client))
        assert submitted.upstream_id is not None
        assert await adapter.cancel(submitted.upstream_id, ctx(client)) is True
        polled = await adapter.poll(submitted.upstream_id, ctx(client))
        with pytest.raises(UpstreamError) as info:
            await adapter.poll("nope", ctx(client))
    assert polled.status == "canceled"
    assert info.value.kind == "not_found"


async def test_adapter_cannot_cancel_a_finished_prediction(client: httpx.AsyncClient) -> None:
    """Canceling a succeeded prediction returns ``False`` and changes nothing."""
    clock = FakeClock()
    emu = ReplicateEmulator(clock=clock)
    async with emu:
        adapter = adapter_for(emu)
        submitted = await adapter.submit(GenerationRequest(kind="image", prompt="p"), ctx(client))
        assert submitted.upstream_id is not None
        clock.advance(1.0)
        assert await adapter.cancel(submitted.upstream_id, ctx(client)) is False
        assert (await adapter.poll(submitted.upstream_id, ctx(client))).status == "succeeded"


async def test_status_progression_follows_the_clock(client: httpx.AsyncClient) -> None:
    """``starting`` → ``processing`` (progress from logs) → ``succeeded`` as time passes."""
    clock = FakeClock()
    emu = ReplicateEmulator(clock=clock)
    async with emu:
        emu.job_faults.queue_s, emu.job_faults.run_s = 1.0, 4.0
        adapter = adapter_for(emu)
        submitted = await adapter.submit(GenerationRequest(kind="image", prompt="p"), ctx(client))
        assert submitted.upstream_id is not None
        seen = []
        for step in (0.5, 1.5, 2.0, 2.0):
            clock.advance(step)
            polled = await adapter.poll(submitted.upstream_id, ctx(client))
            seen.append((polled.status, polled.progress))
    assert seen == [("queued", 0), ("running", 25), ("running", 75), ("succeeded", 100)]


async def test_stall_set_over_http_never_progresses(client: httpx.AsyncClient) -> None:
    """``POST /_sandbox/job_faults`` stalls accepted jobs: they stay processing forever."""
    clock = FakeClock()
    emu = ReplicateEmulator(clock=clock)
    async with emu:
        answer = await client.post(f"{emu.base_url}/_sandbox/job_faults", json={"stall_ratio": 1})
        assert answer.json()["stall_ratio"] == 1.0
        bad = await client.post(f"{emu.base_url}/_sandbox/job_faults", json={"fail_ratio": 2})
        adapter = adapter_for(emu)
        submitted = await adapter.submit(GenerationRequest(kind="image", prompt="p"), ctx(client))
        assert submitted.upstream_id is not None
        clock.advance(3600)
        polled = await adapter.poll(submitted.upstream_id, ctx(client))
    assert bad.status_code == 400
    assert polled.status == "running"


async def test_throttled_create_reports_retry_after(client: httpx.AsyncClient) -> None:
    """Over the emulator's rate limit: 429 with ``retry-after`` and ``ratelimit-*`` headers."""
    emu = ReplicateEmulator(FaultsConfig(rate_limit_per_s=1, retry_after_s=3))
    async with emu:
        url = f"{emu.base_url}/v1/models/{IMAGE_MODEL}/predictions"
        first = await client.post(url, json={"input": {"prompt": "p"}}, headers=AUTH)
        second = await client.post(url, json={"input": {"prompt": "p"}}, headers=AUTH)
        adapter = adapter_for(emu)
        with pytest.raises(UpstreamError) as info:
            await adapter.submit(GenerationRequest(kind="image", prompt="p"), ctx(client))
    assert first.status_code == 201
    assert second.status_code == 429
    assert second.headers["retry-after"] == "3"
    assert second.headers["ratelimit-remaining"] == "0"
    assert "throttled" in second.json()["detail"]
    assert (info.value.kind, info.value.retry_after_s) == ("rate_limited", 3)


# -- the emulator's own validation ----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "check"),
    [
        (f"/v1/models/{IMAGE_MODEL}/predictions", {"input": {}}, {}, 401, "Unauthenticated"),
        (f"/v1/models/{IMAGE_MODEL}/predictions", {"input": {}}, AUTH, 422, "prompt is required"),
        (
            f"/v1/models/{IMAGE_MODEL}/predictions",
            {"input": {"prompt": "p", "num_outputs": 9}},
            AUTH,
            422,
            "less than or equal to 4",
        ),
        (
            f"/v1/models/{IMAGE_MODEL}/predictions",
            {"input": {"prompt": "p", "aspect_ratio": "7:1"}},
            AUTH,
            422,
            "aspect_ratio must be one of",
        ),
        ("/v1/predictions", {"version": "nope", "input": {"prompt": "p"}}, AUTH, 422, "version"),
        (
            f"/v1/models/{IMAGE_MODEL}/predictions",
            {"input": {"prompt": "p"}, "webhook_events_filter": ["done"]},
            AUTH,
            422,
            "webhook_events_filter",
        ),
    ],
)
async def test_emulator_rejects_bad_requests_like_replicate(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
    check: str,
) -> None:
    """Auth and input errors come back as Replicate's problem+json bodies."""
    emu = ReplicateEmulator()
    async with emu:
        response = await client.post(emu.base_url + path, json=body, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert check in problem.get("title", "") + problem["detail"]
    if status == 422 and "invalid_fields" in problem:
        assert problem["invalid_fields"][0]["field"].startswith(("input", "webhook"))
