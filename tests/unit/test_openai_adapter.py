"""The ``openai`` adapter against ``httpx.MockTransport``: body mapping, parsing, error table."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest

from breakers.clock import FakeClock
from router.adapters.base import AttemptContext, RateLimitHint, SubmitResult
from router.adapters.http_util import parse_duration, parse_rate_limit, parse_retry_after
from router.adapters.openai import OpenAIAdapter, choose_size
from router.adapters.registry import ADAPTER_NAMES, adapter_class, build_adapter
from router.adapters.sim import SimAdapter
from router.config import CapabilitiesConfig, CostConfig, ProviderConfig
from router.errors import UpstreamError
from router.models import GenerationRequest

Handler = Callable[[httpx.Request], httpx.Response]

OK_BODY = {"created": 1, "data": [{"url": "https://files.test/a.png", "revised_prompt": "x"}]}


def provider(**overrides: Any) -> ProviderConfig:
    fields: dict[str, Any] = {
        "name": "openai",
        "adapter": "openai",
        "base_url": "https://api.openai.test/v1",
        "kinds": ["image"],
        "api_key": "sk-config",
        "cost": CostConfig(per_image_usd=0.04),
    }
    return ProviderConfig(**(fields | overrides))


def image(**overrides: Any) -> GenerationRequest:
    return GenerationRequest(**({"kind": "image", "prompt": "a red fox"} | overrides))


async def submit(
    handler: Handler,
    request: GenerationRequest | None = None,
    adapter: OpenAIAdapter | None = None,
    **ctx_fields: Any,
) -> SubmitResult:
    adapter = adapter or OpenAIAdapter(provider())
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ctx = AttemptContext(
            client=client, job_id="job_1", attempt_id="att_1", deadline=0.0, **ctx_fields
        )
        return await adapter.submit(request or image(), ctx)


async def failure(handler: Handler, request: GenerationRequest | None = None) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await submit(handler, request)
    return info.value


def respond(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    content = body if isinstance(body, bytes) else msgspec.json.encode(body or OK_BODY)
    return lambda _request: httpx.Response(status, content=content, headers=headers)


def err(code: str | None, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": "nope", "type": type_, "param": None, "code": code}}


async def test_body_maps_request_fields_for_dalle3() -> None:
    """A dall-e-3 request carries model, prompt, n, the nearest size, quality, style, url format."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=OK_BODY)

    await submit(handler, image(aspect_ratio="16:9", quality="high", style="natural"))
    body = msgspec.json.decode(seen[0].content)
    assert body == {
        "model": "dall-e-3",
        "prompt": "a red fox",
        "n": 1,
        "size": "1792x1024",
        "quality": "hd",
        "style": "natural",
        "response_format": "url",
    }
    assert str(seen[0].url) == "https://api.openai.test/v1/images/generations"
    assert seen[0].method == "POST"


async def test_headers_carry_key_trace_and_attempt_id() -> None:
    """The context key wins over the config key; trace headers and the attempt id go upstream."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=OK_BODY)

    await submit(handler, api_key="sk-tenant", trace_headers={"traceparent": "00-abc-def-01"})
    headers = seen[0].headers
    assert headers["authorization"] == "Bearer sk-tenant"
    assert headers["traceparent"] == "00-abc-def-01"
    assert headers["x-client-request-id"] == "att_1"
    assert headers["content-type"] == "application/json"


async def test_base_url_without_v1_gets_it_appended() -> None:
    """An emulator's bare ``http://host:port`` base URL reaches ``/v1/images/generations``."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=OK_BODY)

    await submit(handler, adapter=OpenAIAdapter(provider(base_url="http://127.0.0.1:9/")))
    assert seen == ["http://127.0.0.1:9/v1/images/generations"]


async def test_standard_quality_and_unknown_style_for_dalle3() -> None:
    """Unrecognised quality maps to ``standard``; a style OpenAI lacks is left out."""
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(msgspec.json.decode(request.content))
        return httpx.Response(200, json=OK_BODY)

    await submit(handler, image(quality="draft", style="anime"))
    assert seen[0]["quality"] == "standard"
    assert "style" not in seen[0]


async def test_gpt_image_body_and_b64_output() -> None:
    """GPT image models get mapped quality and output_format, and b64 becomes a data URL."""
    seen: list[dict[str, Any]] = []
    png = b"\x89PNG\r\n\x1a\nfake"
    b64 = base64.b64encode(png).decode()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(msgspec.json.decode(request.content))
        return httpx.Response(200, json={"created": 1, "data": [{"b64_json": b64}] * 2})

    adapter = OpenAIAdapter(provider(models={"image": "gpt-image-1"}))
    result = await submit(handler, image(n=2, aspect_ratio="9:16", quality="standard"), adapter)
    assert seen[0] == {
        "model": "gpt-image-1",
        "prompt": "a red fox",
        "n": 2,
        "size": "1024x1536",
        "quality": "medium",
        "output_format": "png",
    }
    assert [o.url for o in result.outputs] == [f"data:image/png;base64,{b64}"] * 2
    assert result.outputs[0].bytes == len(png)
    assert result.cost_usd == pytest.approx(0.08)


async def test_success_result_outputs_cost_and_rate_limit() -> None:
    """A 200 yields succeeded outputs with size and type, cost per image and the rate-limit hint."""
    headers = {
        "x-request-id": "req_1",
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "6m0s",
    }
    result = await submit(respond(200, OK_BODY, headers), image(width=1024, height=1792))
    assert result.status == "succeeded"
    assert result.upstream_id == "req_1"
    assert len(result.outputs) == 1
    out = result.outputs[0]
    assert (out.url, out.content_type, out.width, out.height) == (
        "https://files.test/a.png",
        "image/png",
        1024,
        1792,
    )
    assert result.cost_usd == pytest.approx(0.04)
    assert result.rate_limit == RateLimitHint(remaining=499, limit=500, reset_s=360.0)


@pytest.mark.parametrize(
    ("model", "fields", "expected"),
    [
        ("dall-e-3", {}, (1024, 1024)),
        ("dall-e-3", {"aspect_ratio": "9:16"}, (1024, 1792)),
        ("dall-e-3", {"width": 1920, "height": 1080}, (1792, 1024)),
        ("dall-e-2", {"width": 512, "height": 512}, (512, 512)),
        ("dall-e-2", {"width": 300, "height": 200}, (256, 256)),
        ("gpt-image-1", {"aspect_ratio": "3:2"}, (1536, 1024)),
        ("gpt-image-2", {"width": 1280, "height": 720}, (1280, 720)),
        ("gpt-image-2", {"width": 1000, "height": 700}, (1536, 1024)),
    ],
)
def test_choose_size_picks_nearest_allowed(
    model: str, fields: dict[str, Any], expected: tuple[int, int]
) -> None:
    """The chosen size is the model's closest in shape, then area (gpt-image-2 keeps exact /16)."""
    assert choose_size(model, image(**fields)) == expected


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, err(None), "invalid_request"),
        (400, err("content_policy_violation"), "content_policy"),
        (400, err("moderation_blocked", "image_generation_user_error"), "content_policy"),
        (401, err("invalid_api_key"), "auth"),
        (403, err(None), "auth"),
        (404, err(None), "not_found"),
        (408, err(None), "upstream_unavailable"),
        (409, err(None), "upstream_unavailable"),
        (413, err(None), "invalid_request"),
        (422, err(None), "invalid_request"),
        (429, err("rate_limit_exceeded", "requests"), "rate_limited"),
        (429, err("insufficient_quota", "insufficient_quota"), "auth"),
        (500, err(None, "server_error"), "upstream_unavailable"),
        (502, b"<html>bad gateway</html>", "upstream_unavailable"),
        (503, err(None, "server_error"), "upstream_unavailable"),
        (202, OK_BODY, "malformed_response"),
    ],
)
async def test_error_table(status: int, body: Any, kind: str) -> None:
    """Each non-200 response maps to the contracts §8 kind and keeps its HTTP status."""
    error = await failure(respond(status, body))
    assert error.kind == kind
    assert error.http_status == status
    assert error.provider == "openai"


async def test_rate_limited_carries_retry_after_ms() -> None:
    """``retry-after-ms`` is preferred and converted to seconds."""
    headers = {"retry-after-ms": "1500", "retry-after": "7"}
    error = await failure(respond(429, err("rate_limit_exceeded"), headers))
    assert error.kind == "rate_limited"
    assert error.retry_after_s == pytest.approx(1.5)


async def test_rate_limited_carries_retry_after_seconds() -> None:
    """``Retry-After`` in seconds is used when there is no ``-ms`` header."""
    error = await failure(respond(429, err("rate_limit_exceeded"), {"retry-after": "20"}))
    assert error.retry_after_s == 20.0


async def test_auth_error_message_never_echoes_upstream_text() -> None:
    """A 401's upstream message (which can quote part of the key) is not kept."""
    body = {
        "error": {"message": "Incorrect API key provided: sk-con***ig.", "code": "invalid_api_key"}
    }
    error = await failure(respond(401, body))
    assert "sk-" not in error.message
    assert "invalid_api_key" in error.message


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), "upstream_unavailable"),
        (httpx.ReadError("reset"), "upstream_unavailable"),
        (httpx.RemoteProtocolError("closed"), "upstream_unavailable"),
        (httpx.WriteError("broken pipe"), "upstream_unavailable"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectTimeout("slow"), "timeout"),
        (httpx.PoolTimeout("full"), "timeout"),
    ],
)
async def test_transport_errors_become_upstream_errors(exc: Exception, kind: str) -> None:
    """No httpx exception escapes: transport failures and timeouts are classified."""

    def handler(_request: httpx.Request) -> httpx.Response:
        raise exc

    error = await failure(handler)
    assert error.kind == kind
    assert error.http_status is None


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"created": 1}',
        b'{"created": 1, "data": []}',
        b'{"created": 1, "data": [{"revised_prompt": "x"}]}',
        b'{"created": "yesterday", "data": [{"url": "u"}]}',
    ],
)
async def test_bad_200_bodies_are_malformed_response(body: bytes) -> None:
    """A 200 that is not JSON or breaks the schema is ``malformed_response``."""
    error = await failure(respond(200, body))
    assert error.kind == "malformed_response"


async def test_missing_key_fails_without_a_call() -> None:
    """With no key anywhere, the adapter raises ``auth`` and sends nothing."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json=OK_BODY)

    with pytest.raises(UpstreamError) as info:
        await submit(handler, adapter=OpenAIAdapter(provider(api_key=None)))
    assert info.value.kind == "auth"
    assert calls == []


@pytest.mark.parametrize(
    ("config", "request_fields", "refused"),
    [
        ({}, {}, False),
        ({}, {"kind": "video"}, True),
        ({}, {"width": 2048, "height": 1024}, True),
        (
            {"capabilities": CapabilitiesConfig(max_width=1024)},
            {"width": 1792, "height": 1024},
            True,
        ),
        ({}, {"n": 2}, True),
        ({"models": {"image": "dall-e-2"}}, {"n": 4}, False),
        ({}, {"model": "flux-schnell"}, True),
        ({}, {"input_image_url": "https://x.test/a.png"}, True),
        (
            {"capabilities": CapabilitiesConfig(aspect_ratios=["1:1"])},
            {"aspect_ratio": "16:9"},
            True,
        ),
        ({"kinds": ["video"]}, {}, True),
    ],
)
def test_supports(config: dict[str, Any], request_fields: dict[str, Any], refused: bool) -> None:
    """``supports`` refuses video, oversize, excess ``n``, foreign models and edits."""
    reason = OpenAIAdapter(provider(**config)).supports(image(**request_fields))
    assert (reason is not None) is refused


def test_estimate_cost_is_per_image() -> None:
    """The estimate is ``per_image_usd × n``."""
    adapter = OpenAIAdapter(provider(models={"image": "dall-e-2"}))
    assert adapter.estimate_cost(image(n=3)) == pytest.approx(0.12)


async def test_poll_cancel_and_webhooks_are_inert() -> None:
    """A synchronous provider: poll raises ``not_found``, cancel is False, no webhooks."""
    adapter = OpenAIAdapter(provider())
    async with httpx.AsyncClient() as client:
        ctx = AttemptContext(client=client, job_id="j", attempt_id="a", deadline=0.0)
        with pytest.raises(UpstreamError) as info:
            await adapter.poll("req_1", ctx)
        assert info.value.kind == "not_found"
        assert await adapter.cancel("req_1", ctx) is False
    assert adapter.verify_webhook({}, b"{}", 0.0) is False
    assert adapter.parse_webhook({}, b"{}") is None


async def test_probe_reports_ok_and_auth_failure() -> None:
    """The probe lists models; a 401 is reported, not raised."""
    clock = FakeClock()

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        ok = request.headers["authorization"] == "Bearer sk-config"
        return httpx.Response(200 if ok else 401, json={"object": "list", "data": []})

    adapter = OpenAIAdapter(provider(), clock=clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        good = await adapter.probe(client, None)
        bad = await adapter.probe(client, "sk-wrong")
    assert good.ok
    assert not bad.ok
    assert "auth" in bad.detail


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5", 0.5),
        ("", None),
        ("soon", None),
        ("1s garbage", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    """Go-style durations and bare numbers parse to seconds; anything else to ``None``."""
    got = parse_duration(text)
    assert got == (pytest.approx(seconds) if seconds is not None else None)


def test_parse_retry_after_http_date() -> None:
    """An HTTP-date ``Retry-After`` counts from ``now``."""
    now = 1_800_000_000.0
    headers = {"Retry-After": "Fri, 15 Jan 2027 08:00:30 GMT"}
    assert parse_retry_after(headers, now) == pytest.approx(30.0)
    assert parse_retry_after({}, now) is None


def test_parse_rate_limit_absent_is_none() -> None:
    """No rate-limit headers, no hint."""
    assert parse_rate_limit(httpx.Headers({"x-request-id": "r"})) is None


def test_registry_builds_known_adapters_and_refuses_others() -> None:
    """``build_adapter`` maps names to classes and names the missing ones clearly."""
    assert isinstance(build_adapter(provider()), OpenAIAdapter)
    assert isinstance(build_adapter(provider(adapter="sim", name="sim")), SimAdapter)
    # Every adapter name the config accepts has an implementation; others have none.
    assert all(adapter_class(name) is not None for name in ADAPTER_NAMES)
    assert adapter_class("midjourney") is None
