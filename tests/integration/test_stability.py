"""The Stability emulator over real HTTP: through the adapter, then through Switchman.

Adapter-level tests drive the emulator's clock (a FakeClock) so generations
progress without sleeping; the Switchman tests run the real service on loopback
with the emulators it starts itself.
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
from router.adapters.base import AttemptContext
from router.adapters.stability import I2V_DURATION_S, StabilityAdapter
from router.config import (
    Config,
    CostConfig,
    FaultsConfig,
    PollConfig,
    ProviderConfig,
    TimeoutsConfig,
)
from router.errors import UpstreamError
from router.models import GenerationRequest
from router.sandbox import OpenAIEmulator, build_emulator
from router.sandbox.media import png_bytes, png_size
from router.sandbox.mp4 import mp4_info
from router.sandbox.stability import DEFAULT_API_KEY, StabilityEmulator, parse_multipart
from tests.integration.harness import Running, make_config, serve

pytestmark = pytest.mark.integration

VIDEO_INPUT = png_bytes(1024, 576)
VIDEO_INPUT_URL = "data:image/png;base64," + base64.b64encode(VIDEO_INPUT).decode()
GENERATE = "/v2beta/stable-image/generate/core"
I2V = "/v2beta/image-to-video"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def emulator(clock: FakeClock) -> AsyncIterator[StabilityEmulator]:
    emu = StabilityEmulator(FaultsConfig(), clock=clock, seed=1)
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def adapter_for(emu: StabilityEmulator, **fields: Any) -> StabilityAdapter:
    base: dict[str, Any] = {
        "name": "stability",
        "adapter": "stability",
        "base_url": emu.base_url,
        "kinds": ["image", "video"],
        "api_key": DEFAULT_API_KEY,
        "cost": CostConfig(per_image_usd=0.03, per_video_s_usd=0.05),
        "timeouts": TimeoutsConfig(connect_s=1, request_s=2),
    }
    return StabilityAdapter(ProviderConfig(**(base | fields)))


def ctx_for(client: httpx.AsyncClient, attempt: str = "att_1") -> AttemptContext:
    return AttemptContext(client=client, job_id="job_1", attempt_id=attempt, deadline=0.0)


def image(**fields: Any) -> GenerationRequest:
    return GenerationRequest(**({"kind": "image", "prompt": "a lighthouse at dusk"} | fields))


def video(**fields: Any) -> GenerationRequest:
    base = {"kind": "video", "prompt": "waves", "input_image_url": VIDEO_INPUT_URL}
    return GenerationRequest(**(base | fields))


def decode_data_url(url: str) -> bytes:
    assert url.startswith("data:")
    return base64.b64decode(url.split(",", 1)[1])


async def output_bytes(running: Running, url: str) -> bytes:
    """An output's bytes: a data URL decoded, or Switchman's stored asset fetched."""
    if url.startswith("data:"):
        return decode_data_url(url)
    fetched = await running.client.get(url)
    assert fetched.status_code == 200, fetched.text
    return fetched.content


# -- adapter ↔ emulator --------------------------------------------------------------------


async def test_image_round_trip_records_the_multipart_request(
    emulator: StabilityEmulator, client: httpx.AsyncClient
) -> None:
    """A core 16:9 image is a real ~1.5 MP PNG; the emulator saw the auth and form fields."""
    result = await adapter_for(emulator).submit(image(aspect_ratio="16:9", seed=9), ctx_for(client))
    (out,) = result.outputs
    assert png_size(decode_data_url(out.url)) == (out.width, out.height) == (1664, 960)
    assert result.cost_usd == pytest.approx(0.03)
    sent = emulator.stats.last(GENERATE)
    assert sent is not None
    assert sent.headers["authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert sent.headers["accept"] == "image/*"
    form = {k: p.text for k, p in parse_multipart(sent.headers["content-type"], sent.body).items()}
    assert form == {
        "prompt": "a lighthouse at dusk",
        "seed": "9",
        "aspect_ratio": "16:9",
        "output_format": "png",
    }
    assert emulator.submissions == {"att_1": 1}


async def test_moderation_and_filtering_are_content_policy(
    emulator: StabilityEmulator, client: httpx.AsyncClient
) -> None:
    """``forbidden`` gets 403 content_moderation; ``borderline`` a 200 CONTENT_FILTERED."""
    adapter = adapter_for(emulator)
    for prompt, status in (("a forbidden thing", 403), ("a borderline thing", 200)):
        with pytest.raises(UpstreamError) as info:
            await adapter.submit(image(prompt=prompt), ctx_for(client))
        assert (info.value.kind, info.value.http_status) == ("content_policy", status)


async def test_bad_key_and_bad_fields_are_refused_with_stability_bodies(
    emulator: StabilityEmulator, client: httpx.AsyncClient
) -> None:
    """Wrong key → auth; a wrong-size video input → 400 bad_request → invalid_request."""
    with pytest.raises(UpstreamError) as info:
        await adapter_for(emulator, api_key="sk-wrong").submit(image(), ctx_for(client))
    assert (info.value.kind, info.value.http_status) == ("auth", 401)
    square = "data:image/png;base64," + base64.b64encode(png_bytes(512, 512)).decode()
    with pytest.raises(UpstreamError) as info:
        await adapter_for(emulator).submit(video(input_image_url=square), ctx_for(client))
    assert (info.value.kind, info.value.http_status) == ("invalid_request", 400)
    assert "dimensions" in info.value.message
    raw = await client.post(
        f"{emulator.base_url}{GENERATE}",
        headers={"authorization": f"Bearer {DEFAULT_API_KEY}"},
        files={"aspect_ratio": (None, "7:3")},
    )
    body = raw.json()
    assert (raw.status_code, body["name"]) == (400, "bad_request")
    assert set(body["errors"]) == {"prompt: is required", body["errors"][1]}
    assert body["errors"][1].startswith("aspect_ratio:")


async def test_video_is_in_progress_then_an_mp4(
    emulator: StabilityEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """image-to-video: 202 running until run_s passes, then a 1024×576 MP4 and its cost."""
    adapter = adapter_for(emulator)
    ctx = ctx_for(client)
    accepted = await adapter.submit(video(seed=5, motion_intensity=1), ctx)
    assert accepted.status == "queued"
    assert accepted.upstream_id is not None
    assert (await adapter.poll(accepted.upstream_id, ctx)).status == "running"
    clock.advance(emulator.job_faults.run_s + 0.01)
    done = await adapter.poll(accepted.upstream_id, ctx)
    assert done.status == "succeeded"
    assert done.cost_usd == pytest.approx(0.05 * I2V_DURATION_S)
    assert mp4_info(decode_data_url(done.outputs[0].url)) == (1024, 576, 4.0)
    sent = emulator.stats.last(I2V)
    assert sent is not None
    form = parse_multipart(sent.headers["content-type"], sent.body)
    assert form["image"].data == VIDEO_INPUT
    assert (form["seed"].text, form["motion_bucket_id"].text) == ("5", "1")


async def test_job_faults_fail_stall_and_filter(
    emulator: StabilityEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Post-acceptance faults: fail → 500 (raises, retryable), stall → 202 forever, filter."""
    adapter = adapter_for(emulator)
    ctx = ctx_for(client)
    outcomes: dict[str, Any] = {}
    for fault in ("fail_ratio", "stall_ratio", "filter_ratio"):
        set_to = await client.post(f"{emulator.base_url}/_sandbox/job_faults", json={fault: 1.0})
        assert set_to.json()[fault] == 1.0
        accepted = await adapter.submit(video(), ctx)
        assert accepted.upstream_id is not None
        clock.advance(3600)
        try:
            outcomes[fault] = await adapter.poll(accepted.upstream_id, ctx)
        except UpstreamError as exc:
            outcomes[fault] = exc
        await client.post(f"{emulator.base_url}/_sandbox/job_faults", json={fault: 0.0})
    assert isinstance(outcomes["fail_ratio"], UpstreamError)
    assert outcomes["fail_ratio"].kind == "upstream_unavailable"
    assert outcomes["stall_ratio"].status == "running"
    assert (outcomes["filter_ratio"].status, outcomes["filter_ratio"].error_kind) == (
        "failed",
        "content_policy",
    )


async def test_results_expire_after_a_day(
    emulator: StabilityEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """A result 24 h old is gone: 404 → failed not_found."""
    adapter = adapter_for(emulator)
    ctx = ctx_for(client)
    accepted = await adapter.submit(video(), ctx)
    assert accepted.upstream_id is not None
    clock.advance(86_401)
    gone = await adapter.poll(accepted.upstream_id, ctx)
    assert (gone.status, gone.error_kind) == ("failed", "not_found")


async def test_native_rate_limit_locks_out_for_60s(
    emulator: StabilityEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Over the request limit → 429 rate_limited with a 60 s hint; fine again after 60 s."""
    await client.post(f"{emulator.base_url}/_sandbox/job_faults", json={"rate_limit_requests": 2})
    adapter = adapter_for(emulator)
    ctx = ctx_for(client)
    await adapter.submit(image(), ctx)
    await adapter.submit(image(), ctx)
    with pytest.raises(UpstreamError) as info:
        await adapter.submit(image(), ctx)
    assert (info.value.kind, info.value.retry_after_s) == ("rate_limited", 60.0)
    clock.advance(30)
    with pytest.raises(UpstreamError):
        await adapter.submit(image(), ctx)
    clock.advance(31)
    assert (await adapter.submit(image(), ctx)).status == "succeeded"


@pytest.mark.parametrize(
    ("faults", "kind"),
    [
        ({"error_ratio": 1.0, "error_status": 503}, "upstream_unavailable"),
        ({"rate_limit_per_s": 0.001, "retry_after_s": 2}, "rate_limited"),
        ({"malformed_ratio": 1.0}, "malformed_response"),
        ({"reset_ratio": 1.0}, "upstream_unavailable"),
    ],
)
async def test_shared_faults_reach_the_adapter_as_kinds(
    emulator: StabilityEmulator, client: httpx.AsyncClient, faults: dict[str, Any], kind: str
) -> None:
    """FaultInjector faults (5xx, 429 + Retry-After, malformed, reset) map to their kinds."""
    adapter = adapter_for(emulator)
    if "rate_limit_per_s" in faults:
        emulator.faults.update(**faults)
        await adapter.submit(image(), ctx_for(client))  # spends the one token
    else:
        emulator.faults.update(**faults)
    with pytest.raises(UpstreamError) as info:
        await adapter.submit(image(), ctx_for(client))
    assert info.value.kind == kind
    if kind == "rate_limited":
        assert info.value.retry_after_s == 2.0


async def test_probe_and_build_emulator(client: httpx.AsyncClient) -> None:
    """``build_emulator('stability')`` finds it; the adapter's probe passes with the key."""
    emu = build_emulator("stability")
    assert isinstance(emu, StabilityEmulator)
    async with emu:
        assert (await adapter_for(emu).probe(client, None)).ok
        assert not (await adapter_for(emu).probe(client, "sk-nope")).ok


# -- through Switchman --------------------------------------------------------------------


def trust_loopback_images(config: Config) -> Config:
    """The test serves input images on loopback: allow-list it (``router.ssrf``)."""
    security = msgspec.structs.replace(config.security, input_image_hosts=["127.0.0.1"])
    return msgspec.structs.replace(config, security=security)


def stability_provider(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "adapter": "stability",
        "api_key": DEFAULT_API_KEY,
        "kinds": ["image", "video"],
        "models": {"image": "core", "video": "stable-video-diffusion"},
        "cost": {"per_image_usd": 0.03, "per_video_s_usd": 0.05},
        "poll": msgspec.structs.asdict(PollConfig(interval_s=0.05, max_interval_s=0.1)),
        "rate_limit": {"requests": 1000, "per_s": 1},
        **extra,
    }


@pytest.fixture
async def files() -> AsyncIterator[OpenAIEmulator]:
    """An http server for input images (the OpenAI emulator's /files route serves PNGs)."""
    emu = OpenAIEmulator()
    async with emu:
        yield emu


def submissions(emu: Any) -> int:
    return sum(emu.submissions.values())


async def test_switchman_image_succeeds_with_cost_and_png(tmp_path: Path) -> None:
    """POST /v1/generations → succeeded, a decodable PNG data URL, cost from config."""
    config = make_config(tmp_path, [stability_provider("stab")])
    async with serve(config) as running:
        response = await running.generate(
            {"kind": "image", "prompt": "a fox", "aspect_ratio": "1:1", "negative_prompt": "fog"}
        )
        emu = running.emulator("stab")
        job = response.json()
        assert job["status"] == "succeeded", job
        (out,) = job["outputs"]
        data = await output_bytes(running, out["url"])
    assert job["cost_usd"] == pytest.approx(0.03)
    assert png_size(data) == (1280, 1280)
    sent = emu.stats.last(GENERATE)
    assert sent is not None
    assert sent.headers["authorization"] == f"Bearer {DEFAULT_API_KEY}"
    form = {k: p.text for k, p in parse_multipart(sent.headers["content-type"], sent.body).items()}
    assert form == {
        "prompt": "a fox",
        "negative_prompt": "fog",
        "aspect_ratio": "1:1",
        "output_format": "png",
    }
    assert sent.headers["X-Client-Request-Id"] == job["attempts"][0]["id"]


async def test_switchman_video_fetches_the_input_and_returns_an_mp4(
    tmp_path: Path, files: OpenAIEmulator
) -> None:
    """A video job uploads the fetched input, polls 202→200 and ends with a valid MP4."""
    input_url = f"{files.base_url}/files/img-ab-576x1024.png"
    config = make_config(tmp_path, [stability_provider("stab")])
    async with serve(trust_loopback_images(config)) as running:
        response = await running.generate(
            {"kind": "video", "prompt": "waves", "input_image_url": input_url}
        )
        emu = running.emulator("stab")
        job = response.json()
        assert job["status"] == "succeeded", job
        data = await output_bytes(running, job["outputs"][0]["url"])
    assert job["cost_usd"] == pytest.approx(0.05 * I2V_DURATION_S)
    assert mp4_info(data) == (576, 1024, 4.0)
    sent = emu.stats.last(I2V)
    assert sent is not None
    form = parse_multipart(sent.headers["content-type"], sent.body)
    assert png_size(form["image"].data) == (576, 1024)
    assert emu.stats.by_path.get(I2V) == 1
    assert emu.stats.by_status.get(202, 0) >= 1


async def test_switchman_content_policy_fails_without_failover(tmp_path: Path) -> None:
    """A moderated prompt fails the job with content_policy; the second provider is untouched."""
    config = make_config(
        tmp_path,
        [
            stability_provider("first", priority=1),
            stability_provider("second", priority=2),
        ],
        routing={"strategy": "priority"},
    )
    async with serve(config) as running:
        response = await running.generate({"kind": "image", "prompt": "something forbidden"})
        first, second = running.emulator("first"), running.emulator("second")
    job = response.json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "content_policy"
    assert [a["provider"] for a in job["attempts"]] == ["first"]
    assert second.stats.total == 0
    assert submissions(first) == 1


async def test_switchman_video_fails_over_when_the_generation_fails(
    tmp_path: Path, files: OpenAIEmulator
) -> None:
    """An accepted video whose result keeps failing (500) fails over; no attempt is sent twice."""
    input_url = f"{files.base_url}/files/img-cd-1024x576.png"
    config = make_config(
        tmp_path,
        [
            stability_provider("first", priority=1),
            stability_provider("second", priority=2),
        ],
        routing={"strategy": "priority"},
    )
    async with serve(trust_loopback_images(config)) as running:
        first = running.emulator("first")
        assert isinstance(first, StabilityEmulator)
        first.job_faults = msgspec.structs.replace(first.job_faults, fail_ratio=1.0)
        response = await running.generate(
            {"kind": "video", "prompt": "waves", "input_image_url": input_url}
        )
        second = running.emulator("second")
    job = response.json()
    assert job["status"] == "succeeded", job
    assert [a["provider"] for a in job["attempts"]] == ["first", "second"]
    assert job["attempts"][0]["error"]["kind"] == "upstream_unavailable"
    assert job["provider"] == "second"
    assert job["cost_usd"] == pytest.approx(0.05 * I2V_DURATION_S)
    for emu in (first, second):
        assert isinstance(emu, StabilityEmulator)
        assert emu.duplicate_submissions() == {}
        assert submissions(emu) == 1
