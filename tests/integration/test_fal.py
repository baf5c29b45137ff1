"""fal.ai's queue over real HTTP: the emulator alone, the adapter against it, and Switchman.

Switchman tests run the service on loopback with a fal emulator (and a Replicate
one to fail over to); the emulator records every upstream request, so the tests
check what was actually sent, field by field.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from breakers.clock import FakeClock
from router.adapters.base import AttemptContext
from router.adapters.fal import FalAdapter
from router.adapters.webhook_sigs import ed25519_keys_from_jwks, verify_fal
from router.config import FaultsConfig, ProviderConfig
from router.errors import UpstreamError
from router.models import GenerationRequest
from router.sandbox import PNG_SIGNATURE, png_size
from router.sandbox.fal import DEFAULT_API_KEY, JWKS_PATH, FalEmulator, sandbox_signing_key
from router.sandbox.mp4 import mp4_info
from router.sandbox.replicate import DEFAULT_API_KEY as REPLICATE_KEY
from router.sandbox.replicate import DEFAULT_WEBHOOK_SECRET
from tests.integration.harness import Running, make_config, serve

pytestmark = pytest.mark.integration

IMAGE_MODEL = "fal-ai/flux/dev"
VIDEO_MODEL = "fal-ai/kling-video/v2.1/standard/text-to-video"
AUTH = {"Authorization": f"Key {DEFAULT_API_KEY}"}


def fal_provider(name: str = "fal", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "adapter": "fal",
        "api_key": DEFAULT_API_KEY,
        "kinds": ["image", "video"],
        "models": {"image": IMAGE_MODEL, "video": VIDEO_MODEL},
        "cost": {"per_image_usd": 0.025, "per_video_s_usd": 0.07},
        "options": {"jwks_url": JWKS_PATH},
        "poll": {"interval_s": 0.05, "max_interval_s": 0.2},
        "priority": 1,
        **extra,
    }


def replicate_provider(name: str = "rep", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "adapter": "replicate",
        "api_key": REPLICATE_KEY,
        "webhook_secret": DEFAULT_WEBHOOK_SECRET,
        "kinds": ["image", "video"],
        "models": {"image": "black-forest-labs/flux-schnell", "video": "minimax/video-01"},
        "cost": {"per_image_usd": 0.003, "per_video_s_usd": 0.05},
        "poll": {"interval_s": 0.05, "max_interval_s": 0.2},
        "priority": 2,
        **extra,
    }


def config_for(tmp_path: Path, *providers: dict[str, Any]) -> Any:
    return make_config(
        tmp_path,
        list(providers) or [fal_provider(), replicate_provider()],
        routing={"strategy": "priority"},
    )


def emulator(running: Running, name: str = "fal") -> FalEmulator:
    emu = running.emulator(name)
    assert isinstance(emu, FalEmulator)
    return emu


async def download(running: Running, url: str) -> bytes:
    response = await running.client.get(url)
    assert response.status_code == 200, response.text
    return response.content


# -- through Switchman ----------------------------------------------------------------


async def test_image_job_succeeds_with_real_pngs_and_cost(tmp_path: Path) -> None:
    """An image job: PNGs in the preset's size, per-image cost, and the exact queue submit."""
    body = {
        "kind": "image",
        "prompt": "a lighthouse",
        "negative_prompt": "fog",
        "n": 3,
        "aspect_ratio": "16:9",
        "seed": 11,
    }
    async with serve(config_for(tmp_path)) as running:
        response = await running.generate(body)
        job = response.json()
        assert response.status_code == 200, job
        assert (job["status"], job["provider"]) == ("succeeded", "fal")
        assert job["cost_usd"] == pytest.approx(0.075)
        assert len(job["outputs"]) == 3
        for out in job["outputs"]:
            data = await download(running, out["url"])
            assert data.startswith(PNG_SIGNATURE)
            assert png_size(data) == (1024, 576)
        emu = emulator(running)
        sent = emu.stats.last(f"/{IMAGE_MODEL}")
        paths = dict(emu.stats.by_path)
    assert sent is not None
    assert sent.method == "POST"
    assert sent.headers["Authorization"] == f"Key {DEFAULT_API_KEY}"
    assert sent.json() == {
        "prompt": "a lighthouse",
        "negative_prompt": "fog",
        "seed": 11,
        "image_size": "landscape_16_9",
        "num_images": 3,
        "output_format": "png",
    }
    # Status and result went to the owner/app URLs fal handed back, not the subpath.
    assert any(p.startswith("/fal-ai/flux/requests/") and p.endswith("/status") for p in paths)
    assert not any(p.startswith("/fal-ai/flux/dev/requests/") for p in paths)
    assert dict(emu.submissions) == {job["attempts"][0]["id"]: 1}


async def test_video_job_succeeds_with_a_real_mp4(tmp_path: Path) -> None:
    """A video job: an MP4 of the ratio's size and the asked duration, billed per second."""
    body = {"kind": "video", "prompt": "waves", "duration_s": 5, "aspect_ratio": "9:16"}
    async with serve(config_for(tmp_path)) as running:
        job = (await running.generate(body)).json()
        assert (job["status"], job["provider"]) == ("succeeded", "fal"), job
        data = await download(running, job["outputs"][0]["url"])
        sent = emulator(running).stats.last(f"/{VIDEO_MODEL}")
    assert mp4_info(data) == (720, 1280, 5.0)
    assert job["outputs"][0]["content_type"] == "video/mp4"
    assert job["cost_usd"] == pytest.approx(0.35)
    assert sent is not None
    assert sent.json() == {"prompt": "waves", "duration": "5", "aspect_ratio": "9:16"}


async def test_content_policy_fails_the_job_without_failover(tmp_path: Path) -> None:
    """fal's ``content_policy_violation`` (a 422 result after COMPLETED) fails the job outright."""
    async with serve(config_for(tmp_path)) as running:
        job = (await running.generate({"kind": "image", "prompt": "forbidden art"})).json()
        replicate_requests = running.emulator("rep").stats.total
    assert job["status"] == "failed"
    assert job["error"]["code"] == "content_policy"
    assert "content_policy_violation" in job["error"]["message"]
    assert len(job["attempts"]) == 1
    assert replicate_requests == 0


@pytest.mark.parametrize(
    ("faults", "job_faults", "kind"),
    [
        ({}, {"fail_ratio": 1.0}, "upstream_unavailable"),  # COMPLETED with runner error
        ({"error_ratio": 1.0, "error_status": 503}, {}, "upstream_unavailable"),
        ({"error_ratio": 1.0, "error_status": 504}, {}, "timeout"),
        ({"error_ratio": 1.0, "error_status": 429}, {}, "rate_limited"),
    ],
)
async def test_retryable_failure_fails_over_to_replicate(
    tmp_path: Path, faults: dict[str, Any], job_faults: dict[str, Any], kind: str
) -> None:
    """A retryable fal failure moves the job to Replicate, which completes it."""
    config = config_for(tmp_path, fal_provider(faults=faults), replicate_provider())
    async with serve(config) as running:
        emu = emulator(running)
        for key, value in job_faults.items():
            setattr(emu.job_faults, key, value)
        job = (await running.generate({"kind": "image", "prompt": "a harbour"})).json()
        submitted = dict(emu.submissions)
    assert (job["status"], job["provider"]) == ("succeeded", "rep"), job
    first, second = job["attempts"]
    assert (first["provider"], first["status"], first["error"]["kind"]) == ("fal", "failed", kind)
    assert (second["provider"], second["status"]) == ("rep", "succeeded")
    assert all(n == 1 for n in submitted.values())


async def test_cancel_through_the_http_api_cancels_upstream(tmp_path: Path) -> None:
    """``POST /v1/generations/{id}/cancel`` sends fal's cancel; the job ends canceled."""
    async with serve(config_for(tmp_path)) as running:
        emu = emulator(running)
        emu.job_faults.stall_ratio = 1.0
        created = await running.client.post(
            "/v1/generations", json={"kind": "image", "prompt": "slow"}
        )
        assert created.status_code == 202, created.text
        await emu.wait_accepted()
        (rid,) = emu.jobs
        response = await running.client.post(f"/v1/generations/{created.json()['id']}/cancel")
        job = response.json()
        cancels = emu.stats.by_path.get(f"/fal-ai/flux/requests/{rid}/cancel", 0)
        canceled = emu.jobs[rid].canceled_at is not None
    assert response.status_code in (200, 202)
    assert job["status"] == "canceled"
    assert cancels == 1
    assert canceled


# -- webhooks -------------------------------------------------------------------------


async def test_signed_webhook_completes_the_job_long_before_the_next_poll(tmp_path: Path) -> None:
    """With a 20 s poll interval, fal's Ed25519-signed webhook finishes the job at once."""
    config = config_for(tmp_path, fal_provider(poll={"interval_s": 20, "max_interval_s": 20}))
    async with serve(config, webhooks=True) as running:
        started = time.monotonic()
        job = (await running.generate({"kind": "image", "prompt": "a quay"})).json()
        elapsed = time.monotonic() - started
        emu = emulator(running)
        sent = emu.stats.last(f"/{IMAGE_MODEL}")
        polls = sum(n for p, n in emu.stats.by_path.items() if "/requests/" in p)
        deliveries = list(emu.webhook_deliveries)
        hooks = [j.webhook for j in emu.jobs.values()]
        api_calls = emu.stats.total  # the JWKS and the files are not API routes
    assert job["status"] == "succeeded", job
    assert job["cost_usd"] == pytest.approx(0.025)
    assert elapsed < 5.0, f"took {elapsed:.2f}s"
    assert polls == 0
    assert sent is not None
    attempt = job["attempts"][0]["id"]
    assert hooks == [f"{running.url}/v1/webhooks/fal?job={job['id']}&attempt={attempt}"]
    assert emu.job_submissions == {job["id"]: 1}
    assert dict(emu.submissions) == {attempt: 1}
    assert [d.status for d in deliveries] == [202]
    assert api_calls == 1  # the submit, and nothing else


async def test_bad_stale_and_replayed_webhooks_leave_the_job_alone(tmp_path: Path) -> None:
    """A forged or stale fal signature gets 401; the same body again is a ``duplicate``."""
    config = config_for(tmp_path, fal_provider(poll={"interval_s": 20, "max_interval_s": 20}))
    async with serve(config, webhooks=True) as running:
        emu = emulator(running)
        emu.job_faults.stall_ratio = 1.0
        created = (
            await running.client.post("/v1/generations", json={"kind": "image", "prompt": "x"})
        ).json()
        job_id, attempt_id = created["id"], created["attempts"][0]["id"]
        await emu.wait_accepted()
        (rid,) = emu.jobs
        emu.jobs[rid].params.update(width=80, height=60)
        done = msgspec.json.encode(
            {
                "request_id": rid,
                "gateway_request_id": rid,
                "status": "OK",
                "payload": emu.result(emu.jobs[rid]),
            }
        )
        url = f"/v1/webhooks/fal?job={job_id}&attempt={attempt_id}"
        now = int(time.time())

        async def post(headers: dict[str, str]) -> httpx.Response:
            return await running.client.post(url, content=done, headers=headers)

        forged = emu.webhook_headers(rid, done, now) | {"X-Fal-Webhook-Signature": "00" * 64}
        assert (await post(forged)).status_code == 401
        assert (await post(emu.webhook_headers(rid, done, now - 400))).status_code == 401
        still = (await running.client.get(f"/v1/generations/{job_id}")).json()
        assert (still["status"], still["outputs"]) == ("running", [])

        good = await post(emu.webhook_headers(rid, done, now))
        assert good.status_code == 202
        assert good.json() == {"status": "accepted", "applied": True, "forwarded": False}
        assert running.service.engine is not None
        await running.service.engine.wait(job_id, 10)
        finished = (await running.client.get(f"/v1/generations/{job_id}")).json()
        replay = await post(emu.webhook_headers(rid, done, now + 1))
        after = (await running.client.get(f"/v1/generations/{job_id}")).json()
    assert finished["status"] == "succeeded"
    assert finished["outputs"][0]["width"] == 80
    assert (replay.status_code, replay.json()) == (200, {"status": "duplicate"})
    assert after["attempts"] == finished["attempts"]


# -- the adapter against the emulator -------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def adapter_for(emu: FalEmulator, clock: FakeClock | None = None, **fields: Any) -> FalAdapter:
    base: dict[str, Any] = {
        "name": "fal",
        "adapter": "fal",
        "base_url": emu.base_url,
        "kinds": ["image", "video"],
        "api_key": DEFAULT_API_KEY,
        "models": {"image": IMAGE_MODEL, "video": VIDEO_MODEL},
        "options": {"jwks_url": JWKS_PATH},
    }
    return FalAdapter(ProviderConfig(**(base | fields)), clock=clock)


def ctx(client: httpx.AsyncClient, webhook_url: str | None = None) -> AttemptContext:
    return AttemptContext(
        client=client, job_id="job_t", attempt_id="att_t", deadline=0.0, webhook_url=webhook_url
    )


async def test_adapter_cancels_a_queued_request(client: httpx.AsyncClient) -> None:
    """Cancel answers ``CANCELLATION_REQUESTED``; the request then polls as canceled."""
    emu = FalEmulator()
    async with emu:
        emu.job_faults.queue_s = 60.0
        adapter = adapter_for(emu)
        submitted = await adapter.submit(GenerationRequest(kind="image", prompt="p"), ctx(client))
        assert submitted.upstream_id is not None
        assert await adapter.cancel(submitted.upstream_id, ctx(client)) is True
        polled = await adapter.poll(submitted.upstream_id, ctx(client))
        again = await adapter.cancel(submitted.upstream_id, ctx(client))
    assert polled.status == "canceled"
    assert again is False  # removed from the queue: NOT_FOUND


async def test_adapter_cannot_cancel_a_completed_request(client: httpx.AsyncClient) -> None:
    """A completed request answers ``ALREADY_COMPLETED``: ``False``, result unchanged."""
    clock = FakeClock()
    emu = FalEmulator(clock=clock)
    async with emu:
        adapter = adapter_for(emu)
        submitted = await adapter.submit(GenerationRequest(kind="image", prompt="p"), ctx(client))
        assert submitted.upstream_id is not None
        clock.advance(1.0)
        assert await adapter.cancel(submitted.upstream_id, ctx(client)) is False
        assert (await adapter.poll(submitted.upstream_id, ctx(client))).status == "succeeded"


async def test_queue_position_then_progress_then_result(client: httpx.AsyncClient) -> None:
    """Three queued requests see positions 2/1/0; then IN_PROGRESS, then COMPLETED with images."""
    clock = FakeClock()
    emu = FalEmulator(clock=clock)
    async with emu:
        emu.job_faults.queue_s, emu.job_faults.run_s = 1.0, 1.0
        adapter = adapter_for(emu)
        ids = []
        for _ in range(3):
            submitted = await adapter.submit(
                GenerationRequest(kind="image", prompt="p"), ctx(client)
            )
            assert submitted.upstream_id is not None
            ids.append(submitted.upstream_id)
            clock.advance(0.1)
        queued = [(await adapter.poll(i, ctx(client))).progress for i in ids]
        clock.advance(1.0)
        running = await adapter.poll(ids[2], ctx(client))
        clock.advance(1.0)
        done = await adapter.poll(ids[2], ctx(client))
    assert queued == [9, 8, 7]
    assert (running.status, running.progress) == ("running", 10)
    assert done.status == "succeeded"
    assert done.outputs[0].width == 1024  # fal's default landscape_4_3


async def test_stall_set_over_http_never_progresses(client: httpx.AsyncClient) -> None:
    """``POST /_sandbox/job_faults`` stalls accepted jobs: IN_PROGRESS forever."""
    clock = FakeClock()
    emu = FalEmulator(clock=clock)
    async with emu:
        answer = await client.post(f"{emu.base_url}/_sandbox/job_faults", json={"stall_ratio": 1})
        adapter = adapter_for(emu)
        submitted = await adapter.submit(GenerationRequest(kind="image", prompt="p"), ctx(client))
        assert submitted.upstream_id is not None
        clock.advance(3600)
        polled = await adapter.poll(submitted.upstream_id, ctx(client))
    assert answer.json()["stall_ratio"] == 1.0
    assert polled.status == "running"


async def test_jwks_is_served_and_verifies_the_emulators_signatures(
    client: httpx.AsyncClient,
) -> None:
    """The emulator's JWKS holds the key its webhooks are signed with; the adapter fetches it."""
    clock = FakeClock(wall=1_800_000_000.0)
    emu = FalEmulator(seed=3)
    async with emu:
        jwks = (await client.get(emu.base_url + JWKS_PATH)).json()
        adapter = adapter_for(emu, clock=clock)
        await adapter.submit(
            GenerationRequest(kind="image", prompt="p"), ctx(client, "http://127.0.0.1:9/h")
        )
    body = b'{"request_id":"r","status":"OK","payload":{}}'
    headers = emu.webhook_headers("r", body, 1_800_000_000)
    assert verify_fal(ed25519_keys_from_jwks(jwks), headers, body, 1_800_000_000)
    assert adapter.verify_webhook(headers, body, 1_800_000_000)
    other = FalEmulator(seed=4)
    bad = other.webhook_headers("r", body, 1_800_000_000)
    assert not adapter.verify_webhook(bad, body, 1_800_000_000)
    assert emu.signing_key.public_key().public_bytes_raw() == (
        sandbox_signing_key(3).public_key().public_bytes_raw()
    )


async def test_throttled_submit_reports_retry_after(client: httpx.AsyncClient) -> None:
    """Over the emulator's rate limit: 429 with ``Retry-After``, seen by the adapter."""
    emu = FalEmulator(FaultsConfig(rate_limit_per_s=1, retry_after_s=2))
    async with emu:
        url = f"{emu.base_url}/{IMAGE_MODEL}"
        first = await client.post(url, json={"prompt": "p"}, headers=AUTH)
        adapter = adapter_for(emu)
        with pytest.raises(UpstreamError) as info:
            await adapter.submit(GenerationRequest(kind="image", prompt="p"), ctx(client))
    assert first.status_code == 200
    assert (info.value.kind, info.value.http_status, info.value.retry_after_s) == (
        "rate_limited",
        429,
        2,
    )


# -- the emulator's own validation ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "status", "type_"),
    [
        ({"prompt": "p"}, {}, 401, None),
        ({"prompt": "p"}, {"Authorization": "Key wrong"}, 401, None),
        ({}, AUTH, 422, "value_error.missing"),
        ({"prompt": "p", "num_images": 9}, AUTH, 422, "value_error.number.not_le"),
        ({"prompt": "p", "image_size": "huge"}, AUTH, 422, "type_error.enum"),
        ({"prompt": "p", "output_format": "gif"}, AUTH, 422, "type_error.enum"),
    ],
)
async def test_emulator_rejects_bad_requests_like_fal(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
    type_: str | None,
) -> None:
    """Auth and validation errors use fal's bodies: ``detail`` items with ``loc`` and ``type``."""
    emu = FalEmulator()
    async with emu:
        response = await client.post(f"{emu.base_url}/{IMAGE_MODEL}", json=body, headers=headers)
        unknown = await client.get(f"{emu.base_url}/fal-ai/flux/requests/0000/status", headers=AUTH)
    assert response.status_code == status
    detail = response.json()["detail"]
    if type_ is not None:
        assert detail[0]["type"] == type_
        assert detail[0]["loc"][0] == "body"
    assert unknown.status_code == 404
