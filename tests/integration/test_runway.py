"""The Runway emulator over real HTTP: through the adapter, then through Switchman.

Adapter-level tests drive the emulator's clock (a FakeClock) so tasks move from
PENDING to RUNNING to SUCCEEDED without sleeping; the Switchman tests run the
real service on loopback with the emulators it starts itself.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from breakers.clock import FakeClock
from router.adapters.base import AttemptContext, PollResult
from router.adapters.runway import RunwayAdapter
from router.config import CostConfig, FaultsConfig, PollConfig, ProviderConfig, TimeoutsConfig
from router.errors import UpstreamError
from router.models import GenerationRequest
from router.sandbox import build_emulator
from router.sandbox.media import png_size
from router.sandbox.mp4 import mp4_info
from router.sandbox.runway import API_VERSION, DEFAULT_API_KEY, RunwayEmulator
from tests.integration.harness import Running, make_config, serve

pytestmark = pytest.mark.integration

IMG = "https://assets.example/first-frame.png"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def emulator(clock: FakeClock) -> AsyncIterator[RunwayEmulator]:
    emu = RunwayEmulator(FaultsConfig(), clock=clock, seed=1)
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def adapter_for(emu: RunwayEmulator, **fields: Any) -> RunwayAdapter:
    base: dict[str, Any] = {
        "name": "runway",
        "adapter": "runway",
        "base_url": emu.base_url,
        "kinds": ["image", "video"],
        "api_key": DEFAULT_API_KEY,
        "cost": CostConfig(per_image_usd=0.08, per_video_s_usd=0.05),
        "timeouts": TimeoutsConfig(connect_s=1, request_s=2),
    }
    return RunwayAdapter(ProviderConfig(**(base | fields)))


def ctx_for(client: httpx.AsyncClient, attempt: str = "att_1") -> AttemptContext:
    return AttemptContext(client=client, job_id="job_1", attempt_id=attempt, deadline=0.0)


def video(**fields: Any) -> GenerationRequest:
    base = {"kind": "video", "prompt": "a red fox runs", "input_image_url": IMG}
    return GenerationRequest(**(base | fields))


async def accepted_id(adapter: RunwayAdapter, request: GenerationRequest, ctx: Any) -> str:
    result = await adapter.submit(request, ctx)
    assert result.status == "queued"
    assert result.upstream_id is not None
    return result.upstream_id


async def settle(
    adapter: RunwayAdapter, task_id: str, ctx: AttemptContext, clock: FakeClock
) -> PollResult:
    """Advance the emulator's clock past the whole timeline, then poll once."""
    clock.advance(10.0)
    return await adapter.poll(task_id, ctx)


# -- adapter ↔ emulator --------------------------------------------------------------------


async def test_task_moves_pending_running_succeeded_with_a_real_mp4(
    emulator: RunwayEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """PENDING → RUNNING (progress grows) → SUCCEEDED; the output URL serves a 5 s MP4."""
    adapter = adapter_for(emulator)
    ctx = ctx_for(client)
    task_id = await accepted_id(adapter, video(aspect_ratio="16:9", seed=7), ctx)
    states = [await adapter.poll(task_id, ctx)]
    for _ in range(2):
        clock.advance(0.1)
        states.append(await adapter.poll(task_id, ctx))
    done = await settle(adapter, task_id, ctx, clock)
    assert [s.status for s in states] == ["queued", "running", "running"]
    assert 0 < (states[1].progress or 0) < (states[2].progress or 0) < 100
    assert done.status == "succeeded"
    assert done.cost_usd == pytest.approx(0.25)
    (out,) = done.outputs
    assert (out.width, out.height, out.duration_s) == (1280, 720, 5.0)
    file = await client.get(out.url)
    assert file.headers["content-type"] == "video/mp4"
    assert mp4_info(file.content) == (1280, 720, 5.0)
    sent = emulator.stats.last("/v1/image_to_video")
    assert sent is not None
    assert sent.headers["Authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert sent.headers["X-Runway-Version"] == API_VERSION
    assert sent.json() == {
        "model": "gen4_turbo",
        "promptText": "a red fox runs",
        "promptImage": IMG,
        "ratio": "1280:720",
        "duration": 5,
        "seed": 7,
    }
    assert emulator.submissions == {"att_1": 1}


async def test_text_to_image_serves_a_png_of_the_ratio(
    emulator: RunwayEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """gen4_image: the task's output is a PNG of the requested ratio's size."""
    adapter = adapter_for(emulator)
    ctx = ctx_for(client)
    request = GenerationRequest(kind="image", prompt="a fox", width=1080, height=1920)
    done = await settle(adapter, await accepted_id(adapter, request, ctx), ctx, clock)
    assert done.status == "succeeded"
    assert done.cost_usd == pytest.approx(0.08)
    file = await client.get(done.outputs[0].url)
    assert png_size(file.content) == (1080, 1920)


async def test_output_urls_expire_and_a_fresh_poll_renews_them(
    emulator: RunwayEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Output URLs stop working after 24 h; fetching the task again gives a working URL."""
    adapter = adapter_for(emulator)
    ctx = ctx_for(client)
    task_id = await accepted_id(adapter, video(), ctx)
    first = await settle(adapter, task_id, ctx, clock)
    clock.advance(2 * 86_400)
    assert (await client.get(first.outputs[0].url)).status_code == 403
    again = await adapter.poll(task_id, ctx)
    assert (await client.get(again.outputs[0].url)).status_code == 200


async def test_over_concurrency_tasks_wait_throttled(
    emulator: RunwayEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """With max_concurrency 1 a second task is THROTTLED (queued) until the first ends."""
    await client.post(f"{emulator.base_url}/_sandbox/job_faults", json={"max_concurrency": 1})
    adapter = adapter_for(emulator)
    ctx = ctx_for(client)
    first = await accepted_id(adapter, video(), ctx)
    second = await accepted_id(adapter, video(), ctx)
    raw = await client.get(
        f"{emulator.base_url}/v1/tasks/{second}",
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}", "X-Runway-Version": API_VERSION},
    )
    assert raw.json()["status"] == "THROTTLED"
    assert (await adapter.poll(second, ctx)).status == "queued"
    assert (await settle(adapter, first, ctx, clock)).status == "succeeded"
    assert (await adapter.poll(second, ctx)).status == "queued"  # PENDING now
    assert (await settle(adapter, second, ctx, clock)).status == "succeeded"


async def test_cancel_live_task_then_delete_finished_one(
    emulator: RunwayEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """DELETE cancels a live task (CANCELLED) and deletes a finished one (then 404)."""
    adapter = adapter_for(emulator)
    ctx = ctx_for(client)
    live = await accepted_id(adapter, video(), ctx)
    assert await adapter.cancel(live, ctx) is True
    assert (await settle(adapter, live, ctx, clock)).status == "canceled"
    finished = await accepted_id(adapter, video(), ctx)
    assert (await settle(adapter, finished, ctx, clock)).status == "succeeded"
    assert await adapter.cancel(finished, ctx) is True
    gone = await adapter.poll(finished, ctx)
    assert (gone.status, gone.error_kind) == ("failed", "not_found")
    assert await adapter.cancel(finished, ctx) is False
    deletes = [r for r in emulator.stats.recent if r.method == "DELETE"]
    assert len(deletes) == 3
    assert all(r.headers["X-Runway-Version"] == API_VERSION for r in deletes)


@pytest.mark.parametrize(
    ("job_faults", "request_", "kind", "code"),
    [
        ({}, video(prompt="something forbidden"), "content_policy", "SAFETY.INPUT.TEXT"),
        (
            {},
            video(input_image_url="data:image/png;base64,AAAA"),
            "invalid_request",
            "ASSET.INVALID",
        ),
        ({"fail_ratio": 1.0}, video(), "upstream_unavailable", "INTERNAL.BAD_OUTPUT.CODE01"),
        ({"filter_ratio": 1.0}, video(), "content_policy", "SAFETY.OUTPUT.VIDEO"),
    ],
    ids=["safety-input", "asset-invalid", "internal", "safety-output"],
)
async def test_failed_tasks_carry_failure_codes(
    emulator: RunwayEmulator,
    client: httpx.AsyncClient,
    clock: FakeClock,
    job_faults: dict[str, Any],
    request_: GenerationRequest,
    kind: str,
    code: str,
) -> None:
    """Accepted tasks that fail report failureCode, mapped to the §8 kind."""
    if job_faults:
        await client.post(f"{emulator.base_url}/_sandbox/job_faults", json=job_faults)
    adapter = adapter_for(emulator)
    ctx = ctx_for(client)
    state = await settle(adapter, await accepted_id(adapter, request_, ctx), ctx, clock)
    assert (state.status, state.error_kind) == ("failed", kind)
    assert code in (state.error_message or "")


async def test_stalled_task_keeps_running_at_a_frozen_progress(
    emulator: RunwayEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """stall_ratio: the task stays RUNNING and its progress stops moving."""
    emulator.job_faults = msgspec.structs.replace(emulator.job_faults, stall_ratio=1.0)
    adapter = adapter_for(emulator)
    ctx = ctx_for(client)
    task_id = await accepted_id(adapter, video(), ctx)
    first = await settle(adapter, task_id, ctx, clock)
    later = await settle(adapter, task_id, ctx, clock)
    assert (first.status, first.progress) == (later.status, later.progress) == ("running", 42)


async def test_requests_are_validated_with_runway_errors(
    emulator: RunwayEmulator, client: httpx.AsyncClient
) -> None:
    """Bad ratio → 400 with issues; no version header → 400; wrong key → 401 (auth)."""
    url = f"{emulator.base_url}/v1/image_to_video"
    auth = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    body = {"model": "gen4_turbo", "promptImage": IMG, "ratio": "1920:1080", "duration": 7}
    bad = await client.post(url, json=body, headers=auth | {"X-Runway-Version": API_VERSION})
    assert bad.status_code == 400
    assert bad.json()["error"] == "Validation of body failed"
    assert {tuple(i["path"]) for i in bad.json()["issues"]} == {("ratio",), ("duration",)}
    unversioned = await client.post(url, json=body, headers=auth)
    assert unversioned.status_code == 400
    assert "X-Runway-Version" in unversioned.json()["error"]
    with pytest.raises(UpstreamError) as info:
        await adapter_for(emulator, api_key="key_wrong").submit(video(), ctx_for(client))
    assert (info.value.kind, info.value.http_status) == ("auth", 401)
    assert emulator.tasks == {}


async def test_daily_limit_is_rate_limited(
    emulator: RunwayEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Past the daily cap creates get 429 (rate_limited) until the 24 h window rolls."""
    await client.post(f"{emulator.base_url}/_sandbox/job_faults", json={"daily_limit": 1})
    adapter = adapter_for(emulator)
    ctx = ctx_for(client)
    await accepted_id(adapter, video(), ctx)
    with pytest.raises(UpstreamError) as info:
        await adapter.submit(video(), ctx)
    assert (info.value.kind, info.value.http_status) == ("rate_limited", 429)
    clock.advance(86_401)
    await accepted_id(adapter, video(), ctx)


@pytest.mark.parametrize(
    ("faults", "kind"),
    [
        ({"error_ratio": 1.0, "error_status": 502}, "upstream_unavailable"),
        ({"rate_limit_per_s": 0.001, "retry_after_s": 3}, "rate_limited"),
        ({"malformed_ratio": 1.0}, "malformed_response"),
    ],
)
async def test_shared_faults_reach_the_adapter_as_kinds(
    emulator: RunwayEmulator, client: httpx.AsyncClient, faults: dict[str, Any], kind: str
) -> None:
    """FaultInjector faults (5xx, 429 + Retry-After, malformed) map to their kinds."""
    adapter = adapter_for(emulator)
    emulator.faults.update(**faults)
    if "rate_limit_per_s" in faults:
        await adapter.submit(video(), ctx_for(client))  # spends the one token
    with pytest.raises(UpstreamError) as info:
        await adapter.submit(video(), ctx_for(client))
    assert info.value.kind == kind
    if kind == "rate_limited":
        assert info.value.retry_after_s == 3.0


async def test_reset_restores_job_faults_and_probe_works(client: httpx.AsyncClient) -> None:
    """build_emulator finds it; /_sandbox/reset restores job faults; the probe passes."""
    emu = build_emulator("runway")
    assert isinstance(emu, RunwayEmulator)
    async with emu:
        await client.post(f"{emu.base_url}/_sandbox/job_faults", json={"fail_ratio": 1.0})
        await client.post(f"{emu.base_url}/_sandbox/reset")
        assert (await client.get(f"{emu.base_url}/_sandbox/job_faults")).json()["fail_ratio"] == 0
        assert (await adapter_for(emu).probe(client, None)).ok
        assert not (await adapter_for(emu).probe(client, "key_nope")).ok


# -- through Switchman --------------------------------------------------------------------


def runway_provider(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "adapter": "runway",
        "api_key": DEFAULT_API_KEY,
        "kinds": ["image", "video"],
        "models": {"image": "gen4_image", "video": "gen4_turbo"},
        "cost": {"per_image_usd": 0.08, "per_video_s_usd": 0.05},
        "poll": msgspec.structs.asdict(PollConfig(interval_s=0.05, max_interval_s=0.1)),
        "rate_limit": {"requests": 1000, "per_s": 1},
        **extra,
    }


def two_providers(tmp_path: Path) -> Any:
    return make_config(
        tmp_path,
        [runway_provider("first", priority=1), runway_provider("second", priority=2)],
        routing={"strategy": "priority"},
    )


async def fetch(running: Running, url: str) -> bytes:
    """An output's bytes, whether Switchman stored it (/v1/assets/…) or passed the URL on."""
    if url.startswith("data:"):
        return base64.b64decode(url.split(",", 1)[1])
    response = await running.client.get(url)
    assert response.status_code == 200, response.text
    return response.content


def runway(running: Running, name: str) -> RunwayEmulator:
    emu = running.emulator(name)
    assert isinstance(emu, RunwayEmulator)
    return emu


async def test_switchman_video_succeeds_with_cost_and_mp4(tmp_path: Path) -> None:
    """POST /v1/generations → succeeded with a valid 10 s 720×1280 MP4 and per-second cost."""
    config = make_config(tmp_path, [runway_provider("rw")])
    async with serve(config) as running:
        response = await running.generate(
            {
                "kind": "video",
                "prompt": "a fox",
                "input_image_url": IMG,
                "aspect_ratio": "9:16",
                "duration_s": 10,
            }
        )
        job = response.json()
        assert job["status"] == "succeeded", job
        data = await fetch(running, job["outputs"][0]["url"])
        emu = runway(running, "rw")
    assert job["cost_usd"] == pytest.approx(0.5)
    assert mp4_info(data) == (720, 1280, 10.0)
    sent = emu.stats.last("/v1/image_to_video")
    assert sent is not None
    assert sent.headers["Authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert sent.headers["X-Runway-Version"] == API_VERSION
    assert sent.headers["X-Client-Request-Id"] == job["attempts"][0]["id"]
    assert sent.json() == {
        "model": "gen4_turbo",
        "promptText": "a fox",
        "promptImage": IMG,
        "ratio": "720:1280",
        "duration": 10,
    }
    assert job["attempts"][0]["upstream_id"] in emu.tasks


async def test_switchman_image_succeeds(tmp_path: Path) -> None:
    """A text-to-image job ends with a PNG of the chosen ratio and the per-image cost."""
    config = make_config(tmp_path, [runway_provider("rw")])
    async with serve(config) as running:
        response = await running.generate(
            {"kind": "image", "prompt": "a fox", "aspect_ratio": "1:1"}
        )
        job = response.json()
        assert job["status"] == "succeeded", job
        data = await fetch(running, job["outputs"][0]["url"])
        emu = runway(running, "rw")
    assert job["cost_usd"] == pytest.approx(0.08)
    sent = emu.stats.last("/v1/text_to_image")
    assert sent is not None
    ratio = sent.json()["ratio"]
    w, h = ratio.split(":")
    assert png_size(data) == (int(w), int(h))
    assert w == h


async def test_switchman_safety_failure_does_not_fail_over(tmp_path: Path) -> None:
    """SAFETY.INPUT.* fails the job with content_policy; the second provider is never called."""
    async with serve(two_providers(tmp_path)) as running:
        response = await running.generate(
            {"kind": "video", "prompt": "a forbidden scene", "input_image_url": IMG}
        )
        first, second = runway(running, "first"), runway(running, "second")
    job = response.json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "content_policy"
    assert [a["provider"] for a in job["attempts"]] == ["first"]
    assert second.stats.total == 0
    assert sum(first.submissions.values()) == 1


async def test_switchman_internal_failure_fails_over_without_duplicates(tmp_path: Path) -> None:
    """An accepted task that fails INTERNAL.* fails over; each attempt was submitted once."""
    async with serve(two_providers(tmp_path)) as running:
        first = runway(running, "first")
        first.job_faults = msgspec.structs.replace(first.job_faults, fail_ratio=1.0)
        response = await running.generate(
            {"kind": "video", "prompt": "a fox", "input_image_url": IMG}
        )
        second = runway(running, "second")
    job = response.json()
    assert job["status"] == "succeeded", job
    assert [a["provider"] for a in job["attempts"]] == ["first", "second"]
    assert job["attempts"][0]["error"]["kind"] == "upstream_unavailable"
    assert job["cost_usd"] == pytest.approx(0.25)
    for emu in (first, second):
        assert emu.duplicate_submissions() == {}
        assert sum(emu.submissions.values()) == 1


async def test_switchman_cancel_deletes_the_runway_task(tmp_path: Path) -> None:
    """POST /v1/generations/{id}/cancel on a running job DELETEs the task; the job is canceled."""
    config = make_config(tmp_path, [runway_provider("rw")])
    async with serve(config) as running:
        emu = runway(running, "rw")
        emu.job_faults = msgspec.structs.replace(emu.job_faults, stall_ratio=1.0)
        body = {"kind": "video", "prompt": "a fox", "input_image_url": IMG}
        started = await running.generate(body, Prefer="wait=1")
        job = started.json()
        assert job["status"] == "running", job
        canceled = await running.client.post(f"/v1/generations/{job['id']}/cancel")
        final = (await running.client.get(f"/v1/generations/{job['id']}")).json()
    assert canceled.status_code in (200, 202)
    assert final["status"] == "canceled"
    (task,) = emu.tasks.values()
    assert task.canceled
    deletes = [r for r in emu.stats.recent if r.method == "DELETE"]
    assert [r.path for r in deletes] == [f"/v1/tasks/{task.id}"]
