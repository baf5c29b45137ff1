"""The OpenAI emulator on loopback, called through the ``openai`` adapter over real HTTP."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from breakers.clock import FakeClock
from router.adapters.base import AttemptContext, SubmitResult
from router.adapters.openai import OpenAIAdapter
from router.config import FaultsConfig, ProviderConfig, TimeoutsConfig
from router.errors import UpstreamError
from router.models import GenerationRequest
from router.sandbox import PNG_SIGNATURE, OpenAIEmulator, build_emulator, png_size

pytestmark = pytest.mark.integration

KEY = "sk-sandbox"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def emulator(clock: FakeClock) -> AsyncIterator[OpenAIEmulator]:
    emu = OpenAIEmulator(FaultsConfig(), clock=clock, seed=1)
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def adapter_for(emu: OpenAIEmulator, **fields: Any) -> OpenAIAdapter:
    base: dict[str, Any] = {
        "name": "openai",
        "adapter": "openai",
        "base_url": emu.base_url,
        "kinds": ["image"],
        "api_key": KEY,
        "timeouts": TimeoutsConfig(connect_s=1, request_s=2),
    }
    return OpenAIAdapter(ProviderConfig(**(base | fields)))


async def submit(
    emu: OpenAIEmulator,
    client: httpx.AsyncClient,
    request: GenerationRequest | None = None,
    **fields: Any,
) -> SubmitResult:
    ctx = AttemptContext(client=client, job_id="j", attempt_id="a", deadline=0.0)
    req = request or GenerationRequest(kind="image", prompt="a lighthouse", aspect_ratio="16:9")
    return await adapter_for(emu, **fields).submit(req, ctx)


async def failure(emu: OpenAIEmulator, client: httpx.AsyncClient, **fields: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await submit(emu, client, **fields)
    return info.value


async def test_success_serves_a_real_png_of_the_chosen_size(
    emulator: OpenAIEmulator, client: httpx.AsyncClient
) -> None:
    """A dall-e-3 16:9 request yields a URL whose file is a valid 1792×1024 PNG."""
    result = await submit(emulator, client)
    assert result.status == "succeeded"
    out = result.outputs[0]
    assert (out.width, out.height) == (1792, 1024)
    assert result.rate_limit is not None
    assert result.rate_limit.limit == 10000
    assert result.upstream_id is not None
    assert result.upstream_id.startswith("req_")
    file = await client.get(out.url)
    assert file.status_code == 200
    assert file.headers["content-type"] == "image/png"
    assert file.content.startswith(PNG_SIGNATURE)
    assert png_size(file.content) == (1792, 1024)
    sent = emulator.stats.last("/v1/images/generations")
    assert sent is not None
    assert sent.json()["size"] == "1792x1024"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"


async def test_gpt_image_returns_b64_png(
    emulator: OpenAIEmulator, client: httpx.AsyncClient
) -> None:
    """A gpt-image-1 request comes back as a data URL holding a PNG of the chosen size."""
    result = await submit(emulator, client, models={"image": "gpt-image-1"})
    url = result.outputs[0].url
    assert url.startswith("data:image/png;base64,")
    assert png_size(base64.b64decode(url.split(",", 1)[1])) == (1536, 1024)


async def test_bad_key_is_auth(emulator: OpenAIEmulator, client: httpx.AsyncClient) -> None:
    """A wrong key gets OpenAI's 401 body, which the adapter classifies as ``auth``."""
    error = await failure(emulator, client, api_key="sk-wrong-key-123")
    assert (error.kind, error.http_status) == ("auth", 401)
    raw = await client.post(f"{emulator.base_url}/v1/images/generations", json={"prompt": "x"})
    assert raw.status_code == 401
    assert raw.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": "x", "model": "dall-e-9"}, "model"),
        ({"prompt": "x", "model": "dall-e-3", "n": 2}, "n"),
        ({"prompt": "x", "model": "dall-e-3", "size": "512x512"}, "size"),
        ({"prompt": "x", "model": "dall-e-2", "style": "vivid"}, "style"),
        ({"prompt": "x", "model": "dall-e-3", "quality": "ultra"}, "quality"),
        ({"prompt": "x", "model": "gpt-image-1", "response_format": "url"}, "response_format"),
        ({"prompt": "x", "model": "dall-e-3", "response_format": "gif"}, "response_format"),
        ({"prompt": "x", "seed": 4}, "seed"),
    ],
)
async def test_validation_errors_name_the_param(
    emulator: OpenAIEmulator, client: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    """Invalid bodies get a 400 ``invalid_request_error`` naming the offending param."""
    response = await client.post(
        f"{emulator.base_url}/v1/images/generations", json=body, headers=AUTH
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("model", "code"),
    [("dall-e-3", "content_policy_violation"), ("gpt-image-1", "moderation_blocked")],
)
async def test_forbidden_prompt_is_content_policy(
    emulator: OpenAIEmulator, client: httpx.AsyncClient, model: str, code: str
) -> None:
    """The word ``forbidden`` trips the model family's content filter → ``content_policy``."""
    request = GenerationRequest(kind="image", prompt="something Forbidden here")
    with pytest.raises(UpstreamError) as info:
        await submit(emulator, client, request, models={"image": model})
    assert info.value.kind == "content_policy"
    assert code in info.value.message


async def test_every_api_response_carries_request_and_rate_limit_headers(
    emulator: OpenAIEmulator, client: httpx.AsyncClient
) -> None:
    """``x-request-id`` and ``x-ratelimit-*-requests`` are on successes and errors alike."""
    ok = await client.get(f"{emulator.base_url}/v1/models", headers=AUTH)
    denied = await client.get(f"{emulator.base_url}/v1/models")
    assert ok.status_code == 200
    assert denied.status_code == 401
    for response in (ok, denied):
        for header in (
            "x-request-id",
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ):
            assert header in response.headers
    assert ok.headers["x-request-id"] != denied.headers["x-request-id"]


async def test_rate_limit_429_with_retry_after(
    emulator: OpenAIEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Above the configured rate the emulator sends 429 + Retry-After → ``rate_limited``."""
    emulator.faults.update(rate_limit_per_s=1, retry_after_s=2)
    first = await submit(emulator, client)
    assert first.rate_limit is not None
    assert (first.rate_limit.limit, first.rate_limit.remaining) == (1, 0)
    error = await failure(emulator, client)
    assert (error.kind, error.http_status, error.retry_after_s) == ("rate_limited", 429, 2.0)
    clock.advance(1)
    assert (await submit(emulator, client)).status == "succeeded"


async def test_error_ratio_serves_configured_status(
    emulator: OpenAIEmulator, client: httpx.AsyncClient
) -> None:
    """``error_ratio=1`` with status 502 makes every call ``upstream_unavailable``."""
    emulator.faults.update(error_ratio=1.0, error_status=502)
    error = await failure(emulator, client)
    assert (error.kind, error.http_status) == ("upstream_unavailable", 502)
    assert emulator.stats.faults == {"error": 1}


async def test_partial_error_ratio_is_reproducible(
    emulator: OpenAIEmulator, client: httpx.AsyncClient
) -> None:
    """With a seed, a 50 % error ratio fails the same calls after a reset."""

    async def run() -> list[bool]:
        outcomes = []
        for _ in range(10):
            response = await client.get(f"{emulator.base_url}/v1/models", headers=AUTH)
            outcomes.append(response.status_code == 200)
        return outcomes

    emulator.faults.update(error_ratio=0.5)
    first = await run()
    emulator.faults.restart()
    emulator.faults.update(error_ratio=0.5)
    assert await run() == first
    assert True in first
    assert False in first


async def test_connection_reset_is_upstream_unavailable(
    emulator: OpenAIEmulator, client: httpx.AsyncClient
) -> None:
    """An abruptly closed connection surfaces as ``upstream_unavailable`` without a status."""
    emulator.faults.update(reset_ratio=1.0)
    error = await failure(emulator, client)
    assert (error.kind, error.http_status) == ("upstream_unavailable", None)


async def test_malformed_body_is_malformed_response(
    emulator: OpenAIEmulator, client: httpx.AsyncClient
) -> None:
    """A truncated JSON 200 is ``malformed_response``."""
    emulator.faults.update(malformed_ratio=1.0)
    error = await failure(emulator, client)
    assert (error.kind, error.http_status) == ("malformed_response", 200)


async def test_hang_times_out_with_a_small_client_timeout(
    emulator: OpenAIEmulator, client: httpx.AsyncClient
) -> None:
    """A hung upstream ends in ``timeout`` once the per-request timeout passes."""
    emulator.faults.update(hang_ratio=1.0)
    error = await failure(emulator, client, timeouts=TimeoutsConfig(connect_s=1, request_s=0.2))
    assert error.kind == "timeout"


async def test_outage_window_serves_503(
    emulator: OpenAIEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Inside a scheduled outage every call is 503; before and after it, calls succeed."""
    emulator.faults.update(outages=[(5, 10)])
    assert (await submit(emulator, client)).status == "succeeded"
    clock.advance(5)
    error = await failure(emulator, client)
    assert (error.kind, error.http_status) == ("upstream_unavailable", 503)
    clock.advance(5)
    assert (await submit(emulator, client)).status == "succeeded"


async def test_admin_endpoints_drive_faults_and_stats(
    emulator: OpenAIEmulator, client: httpx.AsyncClient
) -> None:
    """Faults are replaced over HTTP; stats count by path and status; reset zeroes them."""
    base = emulator.base_url
    set_faults = await client.post(f"{base}/_sandbox/faults", json={"error_ratio": 1.0})
    assert set_faults.status_code == 200
    assert emulator.faults.config.error_ratio == 1.0
    await client.get(f"{base}/v1/models", headers=AUTH)
    stats = (await client.get(f"{base}/_sandbox/stats")).json()
    assert stats["total"] == 1
    assert stats["by_path"] == {"/v1/models": 1}
    assert stats["by_status"] == {"503": 1}
    assert stats["recent"][0]["path"] == "/v1/models"
    bad = await client.post(f"{base}/_sandbox/faults", json={"error_ratio": 3})
    assert bad.status_code == 400
    await client.post(f"{base}/_sandbox/reset")
    assert emulator.stats.total == 0
    assert emulator.faults.config == FaultsConfig()


async def test_upstream_sees_nothing_when_adapter_refuses(
    emulator: OpenAIEmulator, client: httpx.AsyncClient
) -> None:
    """A request rejected before the call (no key) never reaches the emulator."""
    with pytest.raises(UpstreamError):
        await submit(emulator, client, api_key=None)
    assert emulator.stats.total == 0


async def test_probe_against_emulator(emulator: OpenAIEmulator, client: httpx.AsyncClient) -> None:
    """The adapter's probe lists the emulator's models with the right key only."""
    adapter = adapter_for(emulator)
    assert (await adapter.probe(client, None)).ok
    assert not (await adapter.probe(client, "sk-other")).ok


async def test_build_emulator_and_unknown_provider() -> None:
    """``build_emulator`` builds the OpenAI emulator with a custom key; others are not there yet."""
    emu = build_emulator("openai", FaultsConfig(), api_key="sk-custom")
    async with emu:
        async with httpx.AsyncClient() as c:
            ok = await c.get(
                f"{emu.base_url}/v1/models", headers={"Authorization": "Bearer sk-custom"}
            )
        assert ok.status_code == 200
        assert msgspec.json.decode(ok.content)["object"] == "list"
    with pytest.raises(NotImplementedError, match="midjourney"):
        build_emulator("midjourney", FaultsConfig())
