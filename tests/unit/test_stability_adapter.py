"""The ``stability`` adapter against ``httpx.MockTransport``: multipart, parsing, §8 table."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from breakers.clock import FakeClock
from router.adapters.base import AttemptContext, PollResult, SubmitResult
from router.adapters.registry import build_adapter
from router.adapters.stability import (
    I2V_DURATION_S,
    LOCKOUT_S,
    StabilityAdapter,
    choose_aspect_ratio,
)
from router.config import CapabilitiesConfig, CostConfig, ProviderConfig, load_config
from router.errors import UpstreamError
from router.models import GenerationRequest
from router.sandbox.media import png_bytes, png_size
from router.sandbox.mp4 import mp4_bytes, mp4_info
from router.sandbox.stability import Part, parse_multipart

Handler = Callable[[httpx.Request], httpx.Response]

PNG = png_bytes(1344, 768)
MP4 = mp4_bytes(1024, 576, 4.0)
INPUT = png_bytes(1024, 576)
INPUT_URL = "https://assets.test/in.png"
BASE = "https://api.stability.test"
ROOT = Path(__file__).resolve().parents[2]


def provider(**overrides: Any) -> ProviderConfig:
    fields: dict[str, Any] = {
        "name": "stability",
        "adapter": "stability",
        "base_url": BASE,
        "kinds": ["image", "video"],
        "api_key": "sk-config",
        "cost": CostConfig(per_image_usd=0.03, per_video_s_usd=0.05),
    }
    return ProviderConfig(**(fields | overrides))


def image(**overrides: Any) -> GenerationRequest:
    return GenerationRequest(**({"kind": "image", "prompt": "a red fox"} | overrides))


def video(**overrides: Any) -> GenerationRequest:
    fields = {"kind": "video", "prompt": "waves", "input_image_url": INPUT_URL}
    return GenerationRequest(**(fields | overrides))


def png_response(finish: str = "SUCCESS", data: bytes = PNG) -> httpx.Response:
    headers = {"finish-reason": finish, "seed": "42", "x-request-id": "req-1"}
    return httpx.Response(200, content=data, headers=headers | {"content-type": "image/png"})


def err(status: int, name: str, *errors: str, **headers: str) -> httpx.Response:
    body = {"id": "ab12", "name": name, "errors": list(errors) or ["nope"]}
    named = {k.replace("_", "-"): v for k, v in headers.items()}
    return httpx.Response(status, content=msgspec.json.encode(body), headers=named)


class Upstream:
    """A fake Stability that serves the input image and records every API request."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "assets.test":
            return httpx.Response(200, content=INPUT, headers={"content-type": "image/png"})
        self.seen.append(request)
        return self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]

    def form(self, i: int = 0) -> dict[str, Part]:
        request = self.seen[i]
        return parse_multipart(request.headers["content-type"], request.content)


async def submit(
    handler: Handler, request: GenerationRequest, adapter: StabilityAdapter | None = None
) -> SubmitResult:
    adapter = adapter or StabilityAdapter(provider(), clock=FakeClock())
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ctx = AttemptContext(client=client, job_id="job_1", attempt_id="att_1", deadline=0.0)
        return await adapter.submit(request, ctx)


async def poll(handler: Handler, upstream_id: str = "g" * 64) -> PollResult:
    adapter = StabilityAdapter(provider(), clock=FakeClock())
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ctx = AttemptContext(client=client, job_id="job_1", attempt_id="att_1", deadline=0.0)
        return await adapter.poll(upstream_id, ctx)


async def submit_failure(
    handler: Handler, request: GenerationRequest | None = None
) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await submit(handler, request or image())
    return info.value


def texts(form: dict[str, Part]) -> dict[str, str]:
    return {k: p.text for k, p in form.items() if p.filename is None}


# -- request mapping --------------------------------------------------------------------


async def test_core_request_maps_fields_headers_and_path() -> None:
    """core: multipart fields prompt/negative/seed/ratio/style/png, bearer auth, Accept image/*."""
    upstream = Upstream(png_response())
    await submit(
        upstream,
        image(
            negative_prompt="blurry",
            seed=7,
            aspect_ratio="16:9",
            style="anime",
        ),
    )
    request = upstream.seen[0]
    assert request.method == "POST"
    assert request.url == f"{BASE}/v2beta/stable-image/generate/core"
    assert request.headers["authorization"] == "Bearer sk-config"
    assert request.headers["accept"] == "image/*"
    assert request.headers["X-Client-Request-Id"] == "att_1"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert texts(upstream.form()) == {
        "prompt": "a red fox",
        "negative_prompt": "blurry",
        "seed": "7",
        "aspect_ratio": "16:9",
        "style_preset": "anime",
        "output_format": "png",
    }


async def test_sd3_model_goes_to_sd3_endpoint_with_model_and_mode() -> None:
    """An sd3 model is sent to /generate/sd3 naming the model, text-to-image, no style_preset."""
    upstream = Upstream(png_response())
    await submit(upstream, image(model="sd3.5-large-turbo", style="anime"))
    assert upstream.seen[0].url.path == "/v2beta/stable-image/generate/sd3"
    assert texts(upstream.form()) == {
        "prompt": "a red fox",
        "output_format": "png",
        "model": "sd3.5-large-turbo",
        "mode": "text-to-image",
    }


async def test_ultra_with_input_image_uploads_it_with_strength() -> None:
    """ultra image-to-image: the fetched input is the ``image`` part, with strength, no ratio."""
    upstream = Upstream(png_response())
    adapter = StabilityAdapter(provider(models={"image": "stable-image-ultra"}))
    await submit(upstream, image(input_image_url=INPUT_URL, aspect_ratio="1:1"), adapter)
    form = upstream.form()
    assert upstream.seen[0].url.path == "/v2beta/stable-image/generate/ultra"
    assert form["image"].data == INPUT
    assert form["image"].content_type == "image/png"
    assert texts(form) == {"prompt": "a red fox", "output_format": "png", "strength": "0.5"}


async def test_input_image_from_data_url_is_decoded_not_fetched() -> None:
    """A ``data:`` input image is decoded locally and uploaded byte for byte."""
    upstream = Upstream(httpx.Response(200, json={"id": "g" * 64}))
    url = "data:image/png;base64," + base64.b64encode(INPUT).decode()
    await submit(upstream, video(input_image_url=url))
    assert [r.url.host for r in upstream.seen] == ["api.stability.test"]
    assert upstream.form()["image"].data == INPUT


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (1024, 1024, "1:1"),
        (1920, 1080, "16:9"),
        (1080, 1920, "9:16"),
        (1500, 1000, "3:2"),
        (2100, 900, "21:9"),
        (1000, 1250, "4:5"),
    ],
)
def test_width_and_height_pick_the_nearest_aspect_ratio(
    width: int, height: int, expected: str
) -> None:
    """W×H maps to the offered aspect ratio closest in shape."""
    assert choose_aspect_ratio(image(width=width, height=height)) == expected


async def test_video_request_maps_fields_and_returns_queued_id() -> None:
    """image-to-video: multipart image + seed + motion_bucket_id; 200 {id} becomes queued."""
    upstream = Upstream(httpx.Response(200, json={"id": "g" * 64}))
    result = await submit(upstream, video(seed=3, motion_intensity=10))
    request = upstream.seen[0]
    assert request.url == f"{BASE}/v2beta/image-to-video"
    assert request.headers["accept"] == "application/json"
    form = upstream.form()
    assert form["image"].data == INPUT
    assert texts(form) == {"seed": "3", "motion_bucket_id": "255"}
    assert result == SubmitResult(status="queued", upstream_id="g" * 64, progress=0)


@pytest.mark.parametrize(("intensity", "bucket"), [(1, "1"), (5, "114"), (10, "255")])
def test_motion_intensity_maps_onto_motion_bucket_id(intensity: int, bucket: str) -> None:
    """The caller's 1–10 motion scale spans Stability's 1–255 motion_bucket_id."""
    adapter = StabilityAdapter(provider())
    assert adapter.video_fields(video(motion_intensity=intensity))["motion_bucket_id"] == bucket


# -- responses ----------------------------------------------------------------------------


async def test_image_bytes_become_a_png_data_url_with_size_and_cost() -> None:
    """A 200 image/png becomes one data: URL output with its real size; cost per image."""
    result = await submit(Upstream(png_response()), image())
    assert result.status == "succeeded"
    assert result.cost_usd == pytest.approx(0.03)
    assert result.upstream_id == "req-1"
    (out,) = result.outputs
    assert out.url.startswith("data:image/png;base64,")
    assert png_size(base64.b64decode(out.url.split(",", 1)[1])) == (1344, 768)
    assert (out.width, out.height, out.bytes) == (1344, 768, len(PNG))


async def test_json_mode_image_is_accepted_too() -> None:
    """An ``application/json`` answer ({image: base64}) is parsed like the bytes one."""
    encoded = base64.b64encode(PNG).decode()
    body = {"image": encoded, "finish_reason": "SUCCESS", "seed": 1}
    result = await submit(Upstream(httpx.Response(200, json=body)), image())
    assert result.outputs[0].url == "data:image/png;base64," + encoded


@pytest.mark.parametrize(
    "response",
    [
        png_response(finish="CONTENT_FILTERED"),
        httpx.Response(
            200,
            json={"image": base64.b64encode(PNG).decode(), "finish_reason": "CONTENT_FILTERED"},
        ),
    ],
    ids=["header", "json"],
)
async def test_content_filtered_200_is_content_policy(response: httpx.Response) -> None:
    """A 200 with finish reason CONTENT_FILTERED (blurred image) fails as content_policy."""
    error = await submit_failure(Upstream(response))
    assert (error.kind, error.http_status) == ("content_policy", 200)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, json={"finish_reason": "SUCCESS"}),
        httpx.Response(200, content=b"", headers={"content-type": "image/png"}),
        httpx.Response(
            200, content=b'{"image": "iVBOR', headers={"content-type": "application/json"}
        ),
        httpx.Response(200, json={"image": "***not base64***"}),
    ],
    ids=["no-image", "empty-bytes", "truncated-json", "bad-base64"],
)
async def test_unusable_200_is_malformed_response(response: httpx.Response) -> None:
    """A 200 without decodable image data is malformed_response (retryable)."""
    error = await submit_failure(Upstream(response))
    assert error.kind == "malformed_response"


# -- the §8 error table (sync) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "name", "kind"),
    [
        (400, "bad_request", "invalid_request"),
        (401, "unauthorized", "auth"),
        (402, "payment_required", "auth"),
        (403, "content_moderation", "content_policy"),
        (403, "forbidden", "auth"),
        (404, "not_found", "not_found"),
        (413, "payload_too_large", "invalid_request"),
        (422, "invalid_request", "invalid_request"),
        (429, "rate_limit_exceeded", "rate_limited"),
        (500, "internal_error", "upstream_unavailable"),
        (502, "bad_gateway", "upstream_unavailable"),
        (503, "service_unavailable", "upstream_unavailable"),
        (418, "teapot", "invalid_request"),
    ],
)
async def test_error_status_table(status: int, name: str, kind: str) -> None:
    """Each documented status (and moderation name) maps to its §8 error kind."""
    error = await submit_failure(Upstream(err(status, name, "prompt: is required")))
    assert (error.kind, error.http_status, error.provider) == (kind, status, "stability")


async def test_429_without_retry_after_reports_the_60s_lockout() -> None:
    """A bare 429 is rate_limited with retry_after_s = 60 (the documented lockout)."""
    error = await submit_failure(Upstream(err(429, "rate_limit_exceeded")))
    assert error.retry_after_s == LOCKOUT_S == 60.0


async def test_429_with_retry_after_uses_it() -> None:
    """A 429 that names Retry-After is trusted over the default lockout."""
    error = await submit_failure(Upstream(err(429, "rate_limit_exceeded", retry_after="5")))
    assert error.retry_after_s == 5.0


async def test_errors_messages_carry_field_errors_but_auth_ones_do_not() -> None:
    """400 text names the bad field; 401 text never echoes the body (it may quote the key)."""
    bad = await submit_failure(Upstream(err(400, "bad_request", "aspect_ratio: invalid")))
    assert "aspect_ratio: invalid" in bad.message
    auth = await submit_failure(Upstream(err(401, "unauthorized", "key sk-secret is bad")))
    assert "sk-secret" not in auth.message


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), "upstream_unavailable"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.RemoteProtocolError("reset"), "upstream_unavailable"),
    ],
)
async def test_transport_errors_become_upstream_errors(exc: Exception, kind: str) -> None:
    """No httpx exception escapes: each becomes an UpstreamError of the right kind."""

    def handler(_request: httpx.Request) -> httpx.Response:
        raise exc

    error = await submit_failure(handler)
    assert error.kind == kind


@pytest.mark.parametrize(
    "answer",
    [httpx.Response(404), httpx.ConnectError("down")],
    ids=["404", "unreachable"],
)
async def test_unusable_input_image_is_the_callers_problem(
    answer: httpx.Response | Exception,
) -> None:
    """An input image that cannot be fetched is invalid_request and Stability is never called."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if isinstance(answer, Exception):
            raise answer
        return answer

    error = await submit_failure(handler, video())
    assert error.kind == "invalid_request"
    assert [r.url.host for r in calls] == ["assets.test"]


async def test_missing_api_key_is_auth_without_a_call() -> None:
    """No key configured or given: auth, before anything is sent."""
    upstream = Upstream(png_response())
    with pytest.raises(UpstreamError) as info:
        await submit(upstream, image(), StabilityAdapter(provider(api_key=None)))
    assert info.value.kind == "auth"
    assert upstream.seen == []


# -- polling (image-to-video) ---------------------------------------------------------------


async def test_poll_202_in_progress_is_running() -> None:
    """GET result 202 {status: in-progress} is running; the request asks for video/*."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"id": "g" * 64, "status": "in-progress"})

    assert (await poll(handler)).status == "running"
    assert seen[0].url == f"{BASE}/v2beta/image-to-video/result/{'g' * 64}"
    assert seen[0].headers["accept"] == "video/*"
    assert seen[0].headers["authorization"] == "Bearer sk-config"


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=MP4, headers={"content-type": "video/mp4"}),
        httpx.Response(200, json={"video": base64.b64encode(MP4).decode(), "seed": 1}),
    ],
    ids=["bytes", "json"],
)
async def test_poll_200_video_is_succeeded_with_mp4_data_url(response: httpx.Response) -> None:
    """GET result 200 (bytes or JSON) succeeds with a data:video/mp4 output, cost per second."""
    state = await poll(lambda _r: response)
    assert state.status == "succeeded"
    assert state.cost_usd == pytest.approx(0.05 * I2V_DURATION_S)
    (out,) = state.outputs
    assert out.url.startswith("data:video/mp4;base64,")
    assert mp4_info(base64.b64decode(out.url.split(",", 1)[1])) == (1024, 576, 4.0)
    assert (out.content_type, out.duration_s) == ("video/mp4", I2V_DURATION_S)


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (
            httpx.Response(
                200,
                content=MP4,
                headers={"content-type": "video/mp4", "finish-reason": "CONTENT_FILTERED"},
            ),
            "content_policy",
        ),
        (err(403, "content_moderation"), "content_policy"),
        (err(400, "bad_request"), "invalid_request"),
        (err(404, "not_found"), "not_found"),
    ],
    ids=["filtered", "moderation", "bad-request", "expired"],
)
async def test_poll_final_failures_are_failed_results(response: httpx.Response, kind: str) -> None:
    """Answers that end the generation come back as failed with the §8 kind."""
    state = await poll(lambda _r: response)
    assert (state.status, state.error_kind) == ("failed", kind)


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (err(500, "internal_error"), "upstream_unavailable"),
        (err(503, "service_unavailable"), "upstream_unavailable"),
        (err(429, "rate_limit_exceeded"), "rate_limited"),
        (err(401, "unauthorized"), "auth"),
    ],
)
async def test_poll_transient_failures_raise(response: httpx.Response, kind: str) -> None:
    """Transient poll failures raise UpstreamError so the engine retries the poll."""
    with pytest.raises(UpstreamError) as info:
        await poll(lambda _r: response)
    assert info.value.kind == kind
    assert info.value.upstream_id == "g" * 64


# -- capabilities and cost ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "refused"),
    [
        (image(), False),
        (image(aspect_ratio="9:21"), False),
        (video(), False),
        (video(duration_s=4), False),
        (video(aspect_ratio="9:16"), False),
        (video(width=768, height=768), False),
        (video(input_image_url=None), True),
        (video(duration_s=5), True),
        (video(aspect_ratio="21:9"), True),
        (video(width=1280, height=720), True),
        (image(aspect_ratio="4:3"), True),
        (image(n=2), True),
        (image(input_image_url=INPUT_URL), True),  # core takes no image
        (image(model="dall-e-3"), True),
        (video(model="gen4_turbo"), True),
    ],
)
def test_supports_refuses_what_stability_cannot_do(
    request_: GenerationRequest, refused: bool
) -> None:
    """supports() refuses missing images, long or odd-shaped videos, n > 1, unknown models."""
    reason = StabilityAdapter(provider()).supports(request_)
    assert (reason is not None) == refused, reason


def test_supports_honours_configured_kinds_and_capabilities() -> None:
    """A kind not configured, a ratio outside capabilities and an oversize width are refused."""
    images_only = StabilityAdapter(provider(kinds=["image"]))
    assert images_only.supports(video()) is not None
    capped = StabilityAdapter(
        provider(capabilities=CapabilitiesConfig(aspect_ratios=["1:1"], max_width=1024))
    )
    assert capped.supports(image(aspect_ratio="16:9")) is not None
    assert capped.supports(image(width=2048, height=2048)) is not None
    assert capped.supports(image(aspect_ratio="1:1")) is None


def test_estimate_cost_uses_the_pricing_unit() -> None:
    """Images cost per image × n; a video costs per second × the clip length."""
    adapter = StabilityAdapter(provider())
    assert adapter.estimate_cost(image()) == pytest.approx(0.03)
    assert adapter.estimate_cost(image(n=3)) == pytest.approx(0.09)
    assert adapter.estimate_cost(video()) == pytest.approx(0.05 * I2V_DURATION_S)


# -- the rest of the protocol ---------------------------------------------------------------


async def test_cancel_is_unsupported_and_no_webhooks() -> None:
    """No cancel, no webhooks: cancel() is False, verify False, parse None, no call made."""
    adapter = StabilityAdapter(provider())
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500)

    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport) as client:
        ctx = AttemptContext(client=client, job_id="j", attempt_id="a", deadline=0.0)
        assert await adapter.cancel("g" * 64, ctx) is False
    assert calls == []
    assert adapter.verify_webhook({}, b"{}", 0.0) is False
    assert adapter.parse_webhook({}, b"{}") is None


@pytest.mark.parametrize(("status", "ok"), [(404, True), (401, False), (503, False)])
async def test_probe_treats_404_as_a_valid_key(status: int, ok: bool) -> None:
    """The probe GETs an impossible result id: 404 proves the key, 401/5xx do not."""
    adapter = StabilityAdapter(provider(), clock=FakeClock())
    transport = httpx.MockTransport(lambda _r: err(status, "x"))
    async with httpx.AsyncClient(transport=transport) as client:
        result = await adapter.probe(client, "sk-probe")
    assert result.ok is ok


def test_classify_without_a_status_is_upstream_unavailable() -> None:
    """No HTTP status (transport failure) classifies as upstream_unavailable."""
    assert StabilityAdapter(provider()).classify(None, b"", {}) == "upstream_unavailable"


def test_registry_builds_it_and_deploy_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """``adapter: stability`` resolves by convention; deploy/config/stability.yaml is valid."""
    monkeypatch.setenv("STABILITY_API_KEY", "sk-test")
    config = load_config(ROOT / "deploy/config/stability.yaml")
    adapters = [build_adapter(p) for p in config.providers]
    assert all(isinstance(a, StabilityAdapter) for a in adapters)
    assert {p.name for p in config.providers} == {"stability-core", "stability-video"}
