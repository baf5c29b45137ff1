"""The ``runway`` adapter against ``httpx.MockTransport``: task bodies, task states, §8 table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from breakers.clock import FakeClock
from router.adapters.base import AttemptContext, PollResult, SubmitResult
from router.adapters.registry import build_adapter
from router.adapters.runway import (
    API_VERSION,
    IMAGE_RATIOS,
    VIDEO_MODELS,
    RunwayAdapter,
    choose_ratio,
    failure_kind,
)
from router.config import CapabilitiesConfig, CostConfig, ProviderConfig, load_config
from router.errors import UpstreamError
from router.models import GenerationRequest

Handler = Callable[[httpx.Request], httpx.Response]

BASE = "https://api.runway.test"
TASK = "17f20503-6c24-4c16-946b-35dbbce2af2f"
IMG = "https://assets.test/first.png"
ROOT = Path(__file__).resolve().parents[2]


def provider(**overrides: Any) -> ProviderConfig:
    fields: dict[str, Any] = {
        "name": "runway",
        "adapter": "runway",
        "base_url": BASE,
        "kinds": ["image", "video"],
        "api_key": "key_config",
        "cost": CostConfig(per_image_usd=0.08, per_video_s_usd=0.05),
    }
    return ProviderConfig(**(fields | overrides))


def video(**overrides: Any) -> GenerationRequest:
    fields = {"kind": "video", "prompt": "a red fox runs", "input_image_url": IMG}
    return GenerationRequest(**(fields | overrides))


def image(**overrides: Any) -> GenerationRequest:
    return GenerationRequest(**({"kind": "image", "prompt": "a red fox"} | overrides))


def task(status: str, **fields: Any) -> httpx.Response:
    body = {"id": TASK, "createdAt": "2026-01-01T00:00:00.000Z", "status": status, **fields}
    return httpx.Response(200, json=body)


def err(status: int, message: str = "nope", **extra: Any) -> httpx.Response:
    headers = {k: str(v) for k, v in extra.pop("headers", {}).items()}
    body = {"error": message, **extra}
    return httpx.Response(status, content=msgspec.json.encode(body), headers=headers)


class Upstream:
    """A fake Runway that answers in order (repeating the last) and records requests."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]


async def run(
    handler: Handler,
    action: Callable[[RunwayAdapter, AttemptContext], Any],
    adapter: RunwayAdapter | None = None,
) -> Any:
    adapter = adapter or RunwayAdapter(provider(), clock=FakeClock())
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ctx = AttemptContext(client=client, job_id="job_1", attempt_id="att_1", deadline=0.0)
        return await action(adapter, ctx)


async def submit(
    handler: Handler, request: GenerationRequest, adapter: RunwayAdapter | None = None
) -> SubmitResult:
    result: SubmitResult = await run(handler, lambda a, c: a.submit(request, c), adapter)
    return result


async def poll(handler: Handler, adapter: RunwayAdapter | None = None) -> PollResult:
    result: PollResult = await run(handler, lambda a, c: a.poll(TASK, c), adapter)
    return result


# -- request mapping --------------------------------------------------------------------


async def test_image_to_video_body_headers_and_path() -> None:
    """gen4_turbo: POST /v1/image_to_video with exact JSON, bearer key and X-Runway-Version."""
    upstream = Upstream(httpx.Response(200, json={"id": TASK}))
    result = await submit(upstream, video(aspect_ratio="16:9", duration_s=10, seed=42))
    request = upstream.seen[0]
    assert (request.method, str(request.url)) == ("POST", f"{BASE}/v1/image_to_video")
    assert request.headers["Authorization"] == "Bearer key_config"
    assert request.headers["X-Runway-Version"] == API_VERSION == "2024-11-06"
    assert request.headers["X-Client-Request-Id"] == "att_1"
    assert request.headers["Content-Type"] == "application/json"
    assert msgspec.json.decode(request.content) == {
        "model": "gen4_turbo",
        "promptText": "a red fox runs",
        "promptImage": IMG,
        "ratio": "1280:720",
        "duration": 10,
        "seed": 42,
    }
    assert result == SubmitResult(status="queued", upstream_id=TASK, progress=0)


async def test_text_to_video_for_a_text_model() -> None:
    """gen4.5 without an image: /v1/text_to_video, the model's default 5 s, portrait ratio."""
    upstream = Upstream(httpx.Response(200, json={"id": TASK}))
    adapter = RunwayAdapter(provider(models={"video": "gen4.5"}))
    await submit(upstream, video(input_image_url=None, aspect_ratio="9:16"), adapter)
    assert upstream.seen[0].url.path == "/v1/text_to_video"
    assert msgspec.json.decode(upstream.seen[0].content) == {
        "model": "gen4.5",
        "promptText": "a red fox runs",
        "ratio": "720:1280",
        "duration": 5,
    }


async def test_text_to_image_with_reference_and_moderation_option() -> None:
    """gen4_image: /v1/text_to_image, ratio from W×H, referenceImages, contentModeration."""
    upstream = Upstream(httpx.Response(200, json={"id": TASK}))
    adapter = RunwayAdapter(provider(options={"public_figure_threshold": "low"}))
    await submit(upstream, image(width=1920, height=1080, input_image_url=IMG), adapter)
    assert upstream.seen[0].url.path == "/v1/text_to_image"
    assert msgspec.json.decode(upstream.seen[0].content) == {
        "model": "gen4_image",
        "promptText": "a red fox",
        "ratio": "1920:1080",
        "referenceImages": [{"uri": IMG}],
        "contentModeration": {"publicFigureThreshold": "low"},
    }


@pytest.mark.parametrize(
    ("model", "shape", "expected"),
    [
        ("gen4_turbo", {"aspect_ratio": "16:9"}, "1280:720"),
        ("gen4_turbo", {"aspect_ratio": "9:16"}, "720:1280"),
        ("gen4_turbo", {"aspect_ratio": "4:3"}, "1104:832"),
        ("gen4_turbo", {"aspect_ratio": "3:4"}, "832:1104"),
        ("gen4_turbo", {"aspect_ratio": "1:1"}, "960:960"),
        ("gen4_turbo", {"aspect_ratio": "21:9"}, "1584:672"),
        ("gen4_turbo", {"aspect_ratio": "3:2"}, None),
        ("gen4_turbo", {}, "1280:720"),
        ("veo3.1", {"width": 1920, "height": 1080}, "1920:1080"),
        ("veo3.1", {"width": 1280, "height": 720}, "1280:720"),
        ("veo3.1", {"aspect_ratio": "1:1"}, None),
    ],
)
def test_choose_ratio(model: str, shape: dict[str, Any], expected: str | None) -> None:
    """Closest shape within 3 %, then closest area; ``None`` when nothing fits."""
    assert choose_ratio(VIDEO_MODELS[model].ratios, video(**shape)) == expected


def test_image_ratio_defaults_and_matches() -> None:
    """Image ratios: square asks get a square ratio; no shape gets the first (1920:1080)."""
    assert choose_ratio(IMAGE_RATIOS, image(aspect_ratio="1:1")) in {
        "1024:1024",
        "1080:1080",
        "720:720",
    }
    assert choose_ratio(IMAGE_RATIOS, image(width=1024, height=1024)) == "1024:1024"
    assert choose_ratio(IMAGE_RATIOS, image()) == "1920:1080"


# -- task states (§8 row) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "status", "progress"),
    [
        (task("PENDING"), "queued", 0),
        (task("THROTTLED"), "queued", 0),
        (task("RUNNING"), "running", None),
        (task("RUNNING", progress=0.5), "running", 50),
        (task("RUNNING", progress=1.0), "running", 99),
    ],
)
async def test_live_statuses(response: httpx.Response, status: str, progress: int | None) -> None:
    """PENDING/THROTTLED are queued, RUNNING is running with progress as a percentage."""
    state = await poll(Upstream(response))
    assert (state.status, state.progress) == (status, progress)


async def test_poll_request_path_and_headers() -> None:
    """Polling is GET /v1/tasks/{id} with the key and the version header."""
    upstream = Upstream(task("RUNNING", progress=0.1))
    await poll(upstream)
    request = upstream.seen[0]
    assert (request.method, str(request.url)) == ("GET", f"{BASE}/v1/tasks/{TASK}")
    assert request.headers["X-Runway-Version"] == API_VERSION
    assert request.headers["Authorization"] == "Bearer key_config"


async def test_succeeded_video_outputs_and_cost_follow_the_submitted_duration() -> None:
    """SUCCEEDED: output URLs with the asked size and duration; cost = per second × duration."""
    url = "https://cdn.test/out.mp4?_jwt=abc"
    upstream = Upstream(httpx.Response(200, json={"id": TASK}), task("SUCCEEDED", output=[url]))
    adapter = RunwayAdapter(provider())
    await submit(upstream, video(duration_s=10, aspect_ratio="9:16"), adapter)
    state = await poll(upstream, adapter)
    assert state.status == "succeeded"
    (out,) = state.outputs
    assert (out.url, out.content_type) == (url, "video/mp4")
    assert (out.width, out.height, out.duration_s) == (720, 1280, 10.0)
    assert state.cost_usd == pytest.approx(0.5)


async def test_succeeded_after_restart_assumes_the_models_default_duration() -> None:
    """Without the submit's memory (a restart) the configured model's default duration prices it."""
    state = await poll(Upstream(task("SUCCEEDED", output=["https://cdn.test/o.mp4"])))
    assert state.outputs[0].duration_s == 5.0
    assert state.cost_usd == pytest.approx(0.25)


async def test_succeeded_image_costs_per_image() -> None:
    """An image task's outputs are PNGs priced per image."""
    upstream = Upstream(
        httpx.Response(200, json={"id": TASK}),
        task("SUCCEEDED", output=["https://cdn.test/o.png"]),
    )
    adapter = RunwayAdapter(provider())
    await submit(upstream, image(aspect_ratio="16:9"), adapter)
    state = await poll(upstream, adapter)
    assert (state.outputs[0].content_type, state.outputs[0].duration_s) == ("image/png", None)
    assert state.cost_usd == pytest.approx(0.08)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("SAFETY.INPUT.TEXT", "content_policy"),
        ("SAFETY.INPUT.IMAGE", "content_policy"),
        ("SAFETY.OUTPUT.VIDEO", "content_policy"),
        ("INTERNAL.BAD_OUTPUT.CODE01", "upstream_unavailable"),
        ("INTERNAL", "upstream_unavailable"),
        ("ASSET.INVALID", "invalid_request"),
        (None, "upstream_unavailable"),
        ("SOMETHING.NEW", "upstream_unavailable"),
    ],
)
async def test_failed_task_kind_follows_failure_code(code: str | None, kind: str) -> None:
    """FAILED maps failureCode: SAFETY.* content_policy, INTERNAL* retryable, ASSET.* caller."""
    fields = {"failure": "it broke"} | ({"failureCode": code} if code else {})
    state = await poll(Upstream(task("FAILED", **fields)))
    assert (state.status, state.error_kind) == ("failed", kind)
    assert failure_kind(code) == kind
    assert "it broke" in (state.error_message or "")


async def test_cancelled_task_is_canceled() -> None:
    """CANCELLED maps to canceled."""
    assert (await poll(Upstream(task("CANCELLED")))).status == "canceled"


async def test_deleted_task_is_failed_not_found() -> None:
    """A 404 on poll (deleted or unknown task) ends the attempt as not_found."""
    state = await poll(Upstream(err(404, "Task not found.")))
    assert (state.status, state.error_kind) == ("failed", "not_found")


@pytest.mark.parametrize(
    "response",
    [
        task("EXPLODED"),
        httpx.Response(200, content=b'{"id": "'),
        task("SUCCEEDED", output=[]),
    ],
    ids=["unknown-status", "truncated", "no-output"],
)
async def test_unusable_task_is_malformed(response: httpx.Response) -> None:
    """An unknown status, an unparseable body or a success without output is malformed."""
    with pytest.raises(UpstreamError) as info:
        await poll(Upstream(response))
    assert info.value.kind == "malformed_response"


# -- the §8 error table (HTTP) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request"),
        (401, "auth"),
        (403, "auth"),
        (404, "not_found"),
        (405, "invalid_request"),
        (429, "rate_limited"),
        (500, "upstream_unavailable"),
        (502, "upstream_unavailable"),
        (503, "upstream_unavailable"),
        (504, "upstream_unavailable"),
    ],
)
async def test_submit_error_status_table(status: int, kind: str) -> None:
    """Each documented HTTP status maps to its §8 error kind."""
    with pytest.raises(UpstreamError) as info:
        await submit(Upstream(err(status)), video())
    assert (info.value.kind, info.value.http_status, info.value.provider) == (
        kind,
        status,
        "runway",
    )


async def test_validation_issues_are_in_the_message() -> None:
    """A 400's issues (path: message) are kept in the error message."""
    issue = {"path": ["ratio"], "message": "Invalid enum value"}
    with pytest.raises(UpstreamError) as info:
        await submit(Upstream(err(400, "Validation of body failed", issues=[issue])), video())
    assert "ratio: Invalid enum value" in info.value.message


async def test_429_carries_retry_after_when_sent() -> None:
    """A 429 with Retry-After gives retry_after_s; without one there is no hint."""
    with pytest.raises(UpstreamError) as info:
        await submit(Upstream(err(429, headers={"Retry-After": "7"})), video())
    assert info.value.retry_after_s == 7.0
    with pytest.raises(UpstreamError) as info:
        await submit(Upstream(err(429)), video())
    assert info.value.retry_after_s is None


async def test_poll_http_failures_raise_for_the_engine_to_retry() -> None:
    """A 502 while polling raises (the engine retries polls), tagged with the task id."""
    with pytest.raises(UpstreamError) as info:
        await poll(Upstream(err(502)))
    assert (info.value.kind, info.value.upstream_id) == ("upstream_unavailable", TASK)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), "upstream_unavailable"),
        (httpx.ConnectTimeout("slow"), "timeout"),
        (httpx.ReadError("reset"), "upstream_unavailable"),
    ],
)
async def test_transport_errors_become_upstream_errors(exc: Exception, kind: str) -> None:
    """No httpx exception escapes submit, poll or cancel."""

    def handler(_request: httpx.Request) -> httpx.Response:
        raise exc

    for action in (
        lambda a, c: a.submit(video(), c),
        lambda a, c: a.poll(TASK, c),
        lambda a, c: a.cancel(TASK, c),
    ):
        with pytest.raises(UpstreamError) as info:
            await run(handler, action)
        assert info.value.kind == kind


async def test_create_without_id_is_malformed() -> None:
    """A 200 create without an id is malformed_response."""
    with pytest.raises(UpstreamError) as info:
        await submit(Upstream(httpx.Response(200, json={})), video())
    assert info.value.kind == "malformed_response"


# -- cancel ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "expected"), [(204, True), (200, True), (404, False)])
async def test_cancel_deletes_the_task(status: int, expected: bool) -> None:
    """cancel() is DELETE /v1/tasks/{id}: 204 canceled, 404 already gone."""
    upstream = Upstream(httpx.Response(status))
    assert await run(upstream, lambda a, c: a.cancel(TASK, c)) is expected
    request = upstream.seen[0]
    assert (request.method, request.url.path) == ("DELETE", f"/v1/tasks/{TASK}")
    assert request.headers["X-Runway-Version"] == API_VERSION


async def test_cancel_failure_raises() -> None:
    """A 500 on cancel raises UpstreamError."""
    with pytest.raises(UpstreamError) as info:
        await run(Upstream(err(500)), lambda a, c: a.cancel(TASK, c))
    assert info.value.kind == "upstream_unavailable"


# -- capabilities and cost ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "request_", "refused"),
    [
        ("gen4_turbo", video(), False),
        ("gen4_turbo", video(duration_s=10, aspect_ratio="21:9"), False),
        ("gen4_turbo", video(input_image_url=None), True),
        ("gen4_turbo", video(duration_s=7), True),
        ("gen4_turbo", video(duration_s=5.5), True),
        ("gen4_turbo", video(aspect_ratio="3:2"), True),
        ("gen4_turbo", video(n=2), True),
        ("gen4_turbo", video(prompt="x" * 1001), True),
        ("gen4.5", video(input_image_url=None, duration_s=2), False),
        ("gen4.5", video(duration_s=11), True),
        ("veo3.1", video(input_image_url=None, duration_s=6), False),
        ("veo3.1", video(duration_s=5), True),
        ("veo3.1", video(aspect_ratio="1:1"), True),
        ("sora-2", video(), True),
        ("gen4_turbo", image(), False),  # the image model comes from models.image
        ("gen4_turbo", image(model="dall-e-3"), True),
        ("gen4_turbo", image(aspect_ratio="3:2"), True),
    ],
)
def test_supports_refuses_what_runway_cannot_do(
    model: str, request_: GenerationRequest, refused: bool
) -> None:
    """supports(): image-only models need an image; durations and ratios per model; n = 1."""
    adapter = RunwayAdapter(provider(models={"video": model}))
    reason = adapter.supports(request_)
    assert (reason is not None) == refused, reason


def test_supports_honours_kinds_and_capabilities() -> None:
    """An unconfigured kind, a longer video than max_duration_s and unlisted ratios are refused."""
    videos_only = RunwayAdapter(provider(kinds=["video"]))
    assert videos_only.supports(image()) is not None
    capped = RunwayAdapter(
        provider(capabilities=CapabilitiesConfig(max_duration_s=5, aspect_ratios=["16:9"]))
    )
    assert capped.supports(video(duration_s=10)) is not None
    assert capped.supports(video(aspect_ratio="9:16")) is not None
    assert capped.supports(video(aspect_ratio="16:9", duration_s=5)) is None


def test_estimate_cost_uses_the_pricing_unit() -> None:
    """Videos cost per second × duration (default per model); images per image × n."""
    adapter = RunwayAdapter(provider())
    assert adapter.estimate_cost(video(duration_s=10)) == pytest.approx(0.5)
    assert adapter.estimate_cost(video()) == pytest.approx(0.25)
    assert adapter.estimate_cost(image()) == pytest.approx(0.08)


# -- the rest of the protocol ---------------------------------------------------------------


def test_no_webhooks() -> None:
    """Runway sends no webhooks: verify is False, parse is None."""
    adapter = RunwayAdapter(provider())
    assert adapter.verify_webhook({}, b"{}", 0.0) is False
    assert adapter.parse_webhook({}, b"{}") is None


@pytest.mark.parametrize(("status", "ok"), [(404, True), (200, True), (401, False)])
async def test_probe_gets_an_impossible_task(status: int, ok: bool) -> None:
    """The probe GETs a nil task id: 404 proves the key, 401 does not."""
    upstream = Upstream(err(status))
    adapter = RunwayAdapter(provider(), clock=FakeClock())
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:
        result = await adapter.probe(client, "key_probe")
    assert result.ok is ok
    assert upstream.seen[0].headers["Authorization"] == "Bearer key_probe"


def test_classify_without_a_status_is_upstream_unavailable() -> None:
    """No HTTP status (transport failure) classifies as upstream_unavailable."""
    assert RunwayAdapter(provider()).classify(None, b"", {}) == "upstream_unavailable"


def test_registry_builds_it_and_deploy_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """``adapter: runway`` resolves by convention; deploy/config/runway.yaml is valid."""
    monkeypatch.setenv("RUNWAYML_API_SECRET", "key_test")
    config = load_config(ROOT / "deploy/config/runway.yaml")
    assert all(isinstance(build_adapter(p), RunwayAdapter) for p in config.providers)
    assert len(config.providers) == 3
