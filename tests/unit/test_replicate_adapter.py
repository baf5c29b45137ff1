"""The ``replicate`` adapter on ``httpx.MockTransport``: routes, body, status and error tables."""

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
from router.adapters.replicate import ReplicateAdapter, classify_failure, model_route
from router.adapters.webhook_sigs import sign_standard
from router.config import CapabilitiesConfig, CostConfig, ProviderConfig, load_config
from router.errors import ConfigError, UpstreamError
from router.models import GenerationRequest

Handler = Callable[[httpx.Request], httpx.Response]
HEX = "a" * 64
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
NOW = 1_800_000_000.0


def provider(**overrides: Any) -> ProviderConfig:
    fields: dict[str, Any] = {
        "name": "replicate",
        "adapter": "replicate",
        "base_url": "https://api.replicate.test/v1",
        "kinds": ["image", "video"],
        "api_key": "r8_config",
        "models": {"image": "black-forest-labs/flux-schnell", "video": "minimax/video-01"},
        "cost": CostConfig(per_image_usd=0.003, per_video_s_usd=0.05),
        "webhook_secret": SECRET,
    }
    return ProviderConfig(**(fields | overrides))


def image(**overrides: Any) -> GenerationRequest:
    return GenerationRequest(**({"kind": "image", "prompt": "a red fox"} | overrides))


def video(**overrides: Any) -> GenerationRequest:
    base: dict[str, Any] = {"kind": "video", "prompt": "waves", "duration_s": 6}
    return GenerationRequest(**(base | overrides))


def prediction(status: str = "starting", **fields: Any) -> dict[str, Any]:
    return {"id": "p1", "status": status, "input": {"prompt": "x"}, "output": None} | fields


def ctx_for(client: httpx.AsyncClient, **fields: Any) -> AttemptContext:
    base: dict[str, Any] = {"job_id": "job_1", "attempt_id": "att_1", "deadline": 0.0}
    return AttemptContext(client=client, **(base | fields))


async def submit(
    handler: Handler,
    request: GenerationRequest | None = None,
    adapter: ReplicateAdapter | None = None,
    **ctx_fields: Any,
) -> SubmitResult:
    adapter = adapter or ReplicateAdapter(provider())
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await adapter.submit(request or image(), ctx_for(client, **ctx_fields))


async def poll(handler: Handler, adapter: ReplicateAdapter | None = None) -> PollResult:
    adapter = adapter or ReplicateAdapter(provider())
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await adapter.poll("p1", ctx_for(client))


def respond(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    content = body if isinstance(body, bytes) else msgspec.json.encode(body or prediction())
    return lambda _request: httpx.Response(status, content=content, headers=headers)


def recorder(seen: list[httpx.Request], status: int = 201, body: Any = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body or prediction())

    return handler


# -- routes and bodies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "path", "version"),
    [
        (
            "black-forest-labs/flux-schnell",
            "/v1/models/black-forest-labs/flux-schnell/predictions",
            None,
        ),
        ("deployments/acme/my-flux", "/v1/deployments/acme/my-flux/predictions", None),
        (f"stability-ai/sdxl:{HEX}", "/v1/predictions", f"stability-ai/sdxl:{HEX}"),
        (HEX, "/v1/predictions", HEX),
    ],
)
def test_model_route_table(model: str, path: str, version: str | None) -> None:
    """Each model reference form goes to its endpoint, with ``version`` only for versions."""
    url, got = model_route("https://api.replicate.test/v1", model)
    assert url == "https://api.replicate.test" + path
    assert got == version


@pytest.mark.parametrize("model", ["flux", "a/b/c", "a/b:short", "deployments/x", "/a/b"])
def test_model_route_rejects_garbage(model: str) -> None:
    """Anything else is not a model reference."""
    with pytest.raises(ValueError, match="not a Replicate model"):
        model_route("https://x/v1", model)


async def test_image_body_maps_every_field() -> None:
    """An image request: auth, path, and input fields one by one; no ``Prefer: wait``."""
    seen: list[httpx.Request] = []
    request = image(
        negative_prompt="blurry",
        aspect_ratio="16:9",
        width=1024,
        height=576,
        seed=7,
        n=3,
        input_image_url="https://img.test/in.png",
    )
    result = await submit(recorder(seen), request, trace_headers={"traceparent": "00-a-b-01"})
    sent = seen[0]
    assert sent.method == "POST"
    assert sent.url.path == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert sent.headers["authorization"] == "Bearer r8_config"
    assert sent.headers["x-client-request-id"] == "att_1"
    assert sent.headers["traceparent"] == "00-a-b-01"
    assert "prefer" not in sent.headers
    assert msgspec.json.decode(sent.content) == {
        "input": {
            "prompt": "a red fox",
            "negative_prompt": "blurry",
            "aspect_ratio": "16:9",
            "width": 1024,
            "height": 576,
            "seed": 7,
            "image": "https://img.test/in.png",
            "num_outputs": 3,
            "output_format": "png",
        }
    }
    assert result == SubmitResult(status="queued", upstream_id="p1", progress=0)


async def test_video_body_carries_duration_and_fps_not_num_outputs() -> None:
    """A video request sends ``duration`` (an int when whole) and ``fps``."""
    seen: list[httpx.Request] = []
    await submit(recorder(seen), video(fps=24, aspect_ratio="9:16"))
    body = msgspec.json.decode(seen[0].content)
    assert seen[0].url.path == "/v1/models/minimax/video-01/predictions"
    assert body["input"] == {"prompt": "waves", "aspect_ratio": "9:16", "duration": 6, "fps": 24}


async def test_versioned_model_posts_version_to_predictions() -> None:
    """``owner/name:<hex>`` goes to ``/v1/predictions`` with ``version``."""
    seen: list[httpx.Request] = []
    await submit(recorder(seen), image(model=f"acme/sdxl:{HEX}"))
    assert seen[0].url.path == "/v1/predictions"
    assert msgspec.json.decode(seen[0].content)["version"] == f"acme/sdxl:{HEX}"


async def test_webhook_url_and_completed_filter_are_sent() -> None:
    """With a webhook URL the body carries it and asks only for ``completed``."""
    seen: list[httpx.Request] = []
    url = "https://sw.test/v1/webhooks/replicate?job=j&attempt=a"
    await submit(recorder(seen), webhook_url=url)
    body = msgspec.json.decode(seen[0].content)
    assert body["webhook"] == url
    assert body["webhook_events_filter"] == ["completed"]


async def test_cancel_after_follows_the_attempt_deadline() -> None:
    """``Cancel-After`` is the attempt's remaining time, so Replicate stops when we give up."""
    clock = FakeClock()
    seen: list[httpx.Request] = []
    adapter = ReplicateAdapter(provider(), clock=clock)
    await submit(recorder(seen), adapter=adapter, deadline=clock.monotonic() + 42.7)
    assert seen[0].headers["cancel-after"] == "42s"
    await submit(recorder(seen), adapter=adapter, deadline=clock.monotonic() + 2)
    assert "cancel-after" not in seen[1].headers


async def test_options_rename_image_field_and_add_inputs() -> None:
    """``input_image_field`` and ``extra_input`` shape the input per model."""
    seen: list[httpx.Request] = []
    adapter = ReplicateAdapter(
        provider(options={"input_image_field": "first_frame_image", "extra_input": {"go": 1}})
    )
    await submit(recorder(seen), video(input_image_url="https://i.test/a.png"), adapter=adapter)
    body = msgspec.json.decode(seen[0].content)["input"]
    assert body["first_frame_image"] == "https://i.test/a.png"
    assert body["go"] == 1


def test_bad_options_are_a_config_error() -> None:
    """Unknown option keys are refused at construction."""
    with pytest.raises(ConfigError, match="options"):
        ReplicateAdapter(provider(options={"nope": 1}))


def test_registry_builds_the_replicate_adapter() -> None:
    """``adapter: replicate`` resolves by naming convention."""
    assert isinstance(build_adapter(provider()), ReplicateAdapter)


# -- supports / cost ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "req", "refused"),
    [
        ({}, image(), False),
        ({}, video(), False),
        ({"kinds": ["image"]}, video(), True),
        ({"models": {"image": "a/b"}}, video(), True),
        ({"models": {"image": "garbage"}}, image(), True),
        ({}, video(n=2), True),
        ({"capabilities": CapabilitiesConfig(max_n=2)}, image(n=3), True),
        ({"capabilities": CapabilitiesConfig(max_width=512)}, image(width=1024, height=512), True),
        ({"capabilities": CapabilitiesConfig(max_duration_s=5)}, video(duration_s=6), True),
        (
            {"capabilities": CapabilitiesConfig(aspect_ratios=["1:1"])},
            image(aspect_ratio="16:9"),
            True,
        ),
    ],
)
def test_supports_table(config: dict[str, Any], req: GenerationRequest, refused: bool) -> None:
    """What the provider cannot do is refused before any call."""
    reason = ReplicateAdapter(provider(**config)).supports(req)
    assert (reason is not None) is refused, reason


def test_estimate_cost_per_image_and_per_video_second() -> None:
    """Images cost per image × n; video per second × duration."""
    adapter = ReplicateAdapter(provider())
    assert adapter.estimate_cost(image(n=3)) == pytest.approx(0.009)
    assert adapter.estimate_cost(video(duration_s=6)) == pytest.approx(0.30)


# -- statuses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("native", "status", "kind"),
    [
        ("starting", "queued", None),
        ("processing", "running", None),
        ("canceled", "canceled", "canceled"),
        ("aborted", "canceled", "canceled"),
    ],
)
async def test_native_status_table(native: str, status: str, kind: str | None) -> None:
    """Every non-success native status maps to its normalized status."""
    result = await poll(respond(200, prediction(native)))
    assert (result.status, result.error_kind) == (status, kind)


async def test_succeeded_maps_outputs_and_cost() -> None:
    """A succeeded image prediction yields PNG outputs and per-image cost × count."""
    body = prediction(
        "succeeded",
        output=["https://replicate.delivery/x/out-0.png", "https://replicate.delivery/x/out-1.png"],
    )
    result = await poll(respond(200, body))
    assert result.status == "succeeded"
    assert result.progress == 100
    assert [o.url for o in result.outputs] == body["output"]
    assert {o.content_type for o in result.outputs} == {"image/png"}
    assert result.cost_usd == pytest.approx(0.006)


async def test_succeeded_video_costs_per_second_of_its_duration() -> None:
    """A video's single URL output is an MP4 billed for the input's duration."""
    body = prediction(
        "succeeded", input={"prompt": "w", "duration": 6}, output="https://r.test/out.mp4"
    )
    result = await poll(respond(200, body))
    assert result.outputs[0].content_type == "video/mp4"
    assert result.outputs[0].duration_s == 6
    assert result.cost_usd == pytest.approx(0.30)


@pytest.mark.parametrize("output", [None, [], {"a": 1}, [1, 2]])
async def test_succeeded_without_urls_is_malformed(output: Any) -> None:
    """A success with no usable URL fails the attempt as malformed (no endless polling)."""
    result = await poll(respond(200, prediction("succeeded", output=output, data_removed=True)))
    assert (result.status, result.error_kind) == ("failed", "malformed_response")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("Prediction failed for an unknown reason (E1000)", "upstream_unavailable"),
        ("E6716: timed out while starting", "upstream_unavailable"),
        ("E1001: input too large", "invalid_request"),
        ("NSFW content detected. Try a different prompt.", "content_policy"),
        ("Your input was flagged as sensitive.", "content_policy"),
        ("CUDA error: device-side assert", "upstream_unavailable"),
        (None, "upstream_unavailable"),
    ],
)
async def test_failed_prediction_error_table(error: str | None, kind: str) -> None:
    """A failed prediction's error text decides its kind (E-codes first, then wording)."""
    result = await poll(respond(200, prediction("failed", error=error)))
    assert (result.status, result.error_kind) == ("failed", kind)
    assert classify_failure(error) == kind


async def test_progress_comes_from_tqdm_logs() -> None:
    """The last ``NN%|`` in the logs is the progress of a processing prediction."""
    logs = "  0%|          | 0/4\n 50%|█████     | 2/4\n 75%|███████▌  | 3/4\n"
    result = await poll(respond(200, prediction("processing", logs=logs)))
    assert (result.status, result.progress) == ("running", 75)


async def test_unknown_status_is_malformed() -> None:
    """A status outside the enum is a malformed response."""
    with pytest.raises(UpstreamError) as info:
        await poll(respond(200, prediction("exploded")))
    assert info.value.kind == "malformed_response"


# -- HTTP errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, {"detail": "bad", "status": 400}, "invalid_request"),
        (401, {"title": "Unauthenticated", "detail": "You did not pass…", "status": 401}, "auth"),
        (402, {"detail": "You have insufficient credit", "status": 402}, "auth"),
        (403, {"detail": "forbidden", "status": 403}, "auth"),
        (404, {"detail": "Model does not exist", "status": 404}, "not_found"),
        (409, {"detail": "conflict", "status": 409}, "upstream_unavailable"),
        (
            422,
            {"title": "Input validation failed", "detail": "- input: prompt is required"},
            "invalid_request",
        ),
        (422, {"detail": "NSFW content detected in input", "status": 422}, "content_policy"),
        (429, {"detail": "Request was throttled.", "status": 429}, "rate_limited"),
        (500, {"detail": "oops", "status": 500}, "upstream_unavailable"),
        (502, b"<html>bad gateway</html>", "upstream_unavailable"),
        (503, {"detail": "unavailable", "status": 503}, "upstream_unavailable"),
        (504, b"", "upstream_unavailable"),
        (418, {"detail": "teapot"}, "invalid_request"),
    ],
)
async def test_http_error_table(status: int, body: Any, kind: str) -> None:
    """Each HTTP failure of create maps to one error kind (contracts §8)."""
    with pytest.raises(UpstreamError) as info:
        await submit(respond(status, body))
    assert (info.value.kind, info.value.http_status) == (kind, status)


async def test_rate_limit_retry_after_from_header_or_detail() -> None:
    """A 429's wait comes from ``Retry-After``, else from the ``resets in ~Ns`` text."""
    detail = {"detail": "Request was throttled. Your rate limit resets in ~30s.", "status": 429}
    with pytest.raises(UpstreamError) as info:
        await submit(respond(429, detail, {"retry-after": "7"}))
    assert info.value.retry_after_s == 7
    with pytest.raises(UpstreamError) as info:
        await submit(respond(429, detail))
    assert info.value.retry_after_s == 30


async def test_auth_error_message_does_not_echo_the_body() -> None:
    """An auth failure's message carries only the status."""
    with pytest.raises(UpstreamError) as info:
        await submit(respond(401, {"detail": "token r8_secret is invalid"}))
    assert "r8_secret" not in info.value.message


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), "upstream_unavailable"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.RemoteProtocolError("reset"), "upstream_unavailable"),
    ],
)
async def test_transport_errors_become_upstream_errors(exc: Exception, kind: str) -> None:
    """No httpx exception escapes the adapter, on submit, poll or cancel."""

    def boom(_request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(UpstreamError) as info:
        await submit(boom)
    assert info.value.kind == kind
    with pytest.raises(UpstreamError):
        await poll(boom)


@pytest.mark.parametrize("body", [b"{not json", b'{"id": "p1"}', b"[]", b'{"status": "starting"}'])
async def test_malformed_create_response(body: bytes) -> None:
    """A 201 without a parseable prediction (status and id) is malformed."""
    with pytest.raises(UpstreamError) as info:
        await submit(respond(201, body))
    assert info.value.kind == "malformed_response"


async def test_create_that_already_failed_raises_its_kind() -> None:
    """A prediction failed at creation is an attempt failure of its classified kind."""
    body = prediction("failed", error="NSFW content detected")
    with pytest.raises(UpstreamError) as info:
        await submit(respond(201, body))
    assert info.value.kind == "content_policy"


async def test_rate_limit_headers_become_a_hint() -> None:
    """``ratelimit-remaining``/``ratelimit-reset`` feed the guard's bucket."""
    result = await submit(respond(201, None, {"ratelimit-remaining": "3", "ratelimit-reset": "9"}))
    assert result.rate_limit is not None
    assert (result.rate_limit.remaining, result.rate_limit.reset_s) == (3, 9)


async def test_no_api_key_is_an_auth_error() -> None:
    """Without a token nothing is sent."""
    with pytest.raises(UpstreamError) as info:
        await submit(respond(201), adapter=ReplicateAdapter(provider(api_key=None)))
    assert info.value.kind == "auth"


# -- cancel and probe -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, prediction("canceled"), True),
        (200, prediction("succeeded", output=["https://x/o.png"]), False),
        (404, {"detail": "not found"}, False),
    ],
)
async def test_cancel_table(status: int, body: Any, expected: bool) -> None:
    """Cancel posts to ``…/cancel``; ``True`` only when the prediction is now canceled."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        got = await ReplicateAdapter(provider()).cancel("p1", ctx_for(client))
    assert got is expected
    assert (seen[0].method, seen[0].url.path) == ("POST", "/v1/predictions/p1/cancel")


async def test_cancel_server_error_raises() -> None:
    """A 5xx on cancel is an UpstreamError, not a silent ``False``."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(respond(503, {}))) as client:
        with pytest.raises(UpstreamError):
            await ReplicateAdapter(provider()).cancel("p1", ctx_for(client))


async def test_probe_reads_the_account() -> None:
    """The probe is ``GET /v1/account``; a 401 is reported as auth."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(respond(200, {}))) as client:
        assert (await ReplicateAdapter(provider()).probe(client, None)).ok
    async with httpx.AsyncClient(transport=httpx.MockTransport(respond(401, {}))) as client:
        result = await ReplicateAdapter(provider()).probe(client, None)
    assert (result.ok, result.detail) == (False, "401 auth")


# -- webhooks -------------------------------------------------------------------------


def signed(body: bytes, secret: str = SECRET, ts: float = NOW) -> dict[str, str]:
    return {
        "webhook-id": "msg_p1",
        "webhook-timestamp": str(int(ts)),
        "webhook-signature": sign_standard(secret, "msg_p1", int(ts), body),
    }


def test_verify_webhook_with_configured_secret() -> None:
    """A Standard Webhooks signature by ``webhook_secret`` is valid; stale or forged is not."""
    adapter = ReplicateAdapter(provider())
    body = msgspec.json.encode(prediction("succeeded"))
    assert adapter.verify_webhook(signed(body), body, NOW)
    assert not adapter.verify_webhook(signed(body), body, NOW + 301)
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    assert not adapter.verify_webhook(signed(body, other), body, NOW)
    assert not ReplicateAdapter(provider(webhook_secret=None)).verify_webhook(
        signed(body), body, NOW
    )


def test_parse_webhook_is_the_prediction() -> None:
    """A webhook body is a prediction object; it parses like a poll."""
    adapter = ReplicateAdapter(provider())
    body = msgspec.json.encode(prediction("failed", error="E1000 unknown"))
    event = adapter.parse_webhook({}, body)
    assert event is not None
    assert event.upstream_id == "p1"
    assert (event.result.status, event.result.error_kind) == ("failed", "upstream_unavailable")
    assert adapter.parse_webhook({}, b"[]") is None
    weird = adapter.parse_webhook({}, msgspec.json.encode(prediction("exploded")))
    assert weird is not None
    assert weird.result.error_kind == "malformed_response"


async def test_secret_is_fetched_once_when_not_configured() -> None:
    """Without ``webhook_secret``, the account's default secret is fetched before one webhook."""
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path.endswith("/webhooks/default/secret"):
            return httpx.Response(200, json={"key": SECRET})
        return httpx.Response(201, json=prediction())

    adapter = ReplicateAdapter(provider(webhook_secret=None))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        for _ in range(2):
            await adapter.submit(image(), ctx_for(client, webhook_url="https://sw.test/hook"))
    assert paths.count("/v1/webhooks/default/secret") == 1
    body = b"{}"
    assert adapter.verify_webhook(signed(body), body, NOW)


def test_output_headers_only_for_the_api_host() -> None:
    """File URLs on the API's host get the token; other hosts (replicate.delivery) get nothing."""
    adapter = ReplicateAdapter(provider())
    assert adapter.output_headers("https://api.replicate.test/v1/files/f1", None) == {
        "Authorization": "Bearer r8_config"
    }
    assert adapter.output_headers("https://replicate.delivery/x/out-0.png", None) == {}
    assert adapter.output_headers("http://api.replicate.test/v1/files/f1", "r8_t") == {}


def test_deploy_config_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """``deploy/config/replicate.yaml`` validates and its providers build adapters."""
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_x")
    config = load_config(Path(__file__).parents[2] / "deploy/config/replicate.yaml")
    adapters = [build_adapter(p) for p in config.providers]
    assert all(isinstance(a, ReplicateAdapter) for a in adapters)
    assert all(a.supports(image()) is None for a in adapters)
