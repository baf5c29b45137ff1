"""The in-process ``sim`` adapter: sync images, polled videos, seeded failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from router.adapters.base import AttemptContext
from router.adapters.sim import SimAdapter
from router.config import CapabilitiesConfig, CostConfig, ProviderConfig
from router.errors import ConfigError, UpstreamError
from router.models import GenerationRequest


def sim(**options: Any) -> SimAdapter:
    return SimAdapter(
        ProviderConfig(
            name="sim-a",
            adapter="sim",
            base_url="http://sim.invalid",
            kinds=["image", "video"],
            cost=CostConfig(per_image_usd=0.01, per_video_s_usd=0.1),
            capabilities=CapabilitiesConfig(max_duration_s=10),
            options=options,
        )
    )


@pytest.fixture
async def ctx() -> AsyncIterator[AttemptContext]:
    async with httpx.AsyncClient() as client:
        yield AttemptContext(client=client, job_id="j", attempt_id="a", deadline=0.0)


async def test_image_succeeds_in_submit(ctx: AttemptContext) -> None:
    """An image finishes in submit with ``sim://`` outputs of the requested size and n."""
    result = await sim().submit(
        GenerationRequest(kind="image", prompt="p", n=2, width=512, height=768), ctx
    )
    assert result.status == "succeeded"
    assert [o.url for o in result.outputs] == [
        f"sim://sim-a/{result.upstream_id}/0.png",
        f"sim://sim-a/{result.upstream_id}/1.png",
    ]
    assert (result.outputs[0].width, result.outputs[0].height) == (512, 768)
    assert result.cost_usd == pytest.approx(0.02)


async def test_video_is_polled_to_completion(ctx: AttemptContext) -> None:
    """A video is queued, reports running for ``poll_steps - 1`` polls, then succeeds."""
    adapter = sim(poll_steps=2)
    request = GenerationRequest(kind="video", prompt="p", duration_s=4)
    accepted = await adapter.submit(request, ctx)
    assert accepted.status == "queued"
    assert accepted.upstream_id is not None
    first = await adapter.poll(accepted.upstream_id, ctx)
    assert (first.status, first.progress) == ("running", 50)
    done = await adapter.poll(accepted.upstream_id, ctx)
    assert done.status == "succeeded"
    assert done.outputs[0].content_type == "video/mp4"
    assert done.outputs[0].duration_s == 4
    assert accepted.cost_usd == pytest.approx(0.4)


async def test_cancel_then_poll_reports_canceled(ctx: AttemptContext) -> None:
    """A canceled video polls as canceled; unknown ids cannot be canceled."""
    adapter = sim(poll_steps=3)
    accepted = await adapter.submit(GenerationRequest(kind="video", prompt="p"), ctx)
    assert accepted.upstream_id is not None
    assert await adapter.cancel(accepted.upstream_id, ctx) is True
    assert (await adapter.poll(accepted.upstream_id, ctx)).status == "canceled"
    assert await adapter.cancel("nope", ctx) is False


async def test_poll_unknown_id_is_not_found(ctx: AttemptContext) -> None:
    """Polling an id the sim never issued raises ``not_found``."""
    with pytest.raises(UpstreamError) as info:
        await sim().poll("sim-404", ctx)
    assert info.value.kind == "not_found"


async def test_error_ratio_raises_configured_kind(ctx: AttemptContext) -> None:
    """With ``error_ratio=1`` every submit fails with ``error_kind``."""
    adapter = sim(error_ratio=1.0, error_kind="rate_limited")
    with pytest.raises(UpstreamError) as info:
        await adapter.submit(GenerationRequest(kind="image", prompt="p"), ctx)
    assert info.value.kind == "rate_limited"
    assert info.value.provider == "sim-a"


async def test_seed_makes_failures_reproducible(ctx: AttemptContext) -> None:
    """Two sims with one seed fail on the same calls."""

    async def outcomes(adapter: SimAdapter) -> list[bool]:
        got = []
        for _ in range(20):
            try:
                await adapter.submit(GenerationRequest(kind="image", prompt="p"), ctx)
                got.append(True)
            except UpstreamError:
                got.append(False)
        return got

    first = await outcomes(sim(error_ratio=0.5, seed=7))
    assert first == await outcomes(sim(error_ratio=0.5, seed=7))
    assert True in first
    assert False in first


def test_bad_options_are_config_errors() -> None:
    """Unknown options or an unknown error kind are rejected at construction."""
    with pytest.raises(ConfigError):
        sim(error_kind="kaboom")
    with pytest.raises(ConfigError):
        sim(latency=1)


def test_supports_checks_capabilities() -> None:
    """Over-long videos are refused; plain requests are served."""
    adapter = sim()
    assert adapter.supports(GenerationRequest(kind="video", prompt="p", duration_s=30)) is not None
    assert adapter.supports(GenerationRequest(kind="image", prompt="p")) is None


async def test_probe_and_webhooks(ctx: AttemptContext) -> None:
    """The probe always succeeds; the sim sends no webhooks."""
    assert (await sim().probe(ctx.client, None)).ok
    assert sim().verify_webhook({}, b"", 0.0) is False
    assert sim().parse_webhook({}, b"") is None
