"""The ``fal`` adapter on ``httpx.MockTransport``: queue URLs, body, status and error tables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from breakers.clock import FakeClock
from router.adapters.base import AttemptContext, PollResult, SubmitResult
from router.adapters.fal import FalAdapter, image_size_for
from router.adapters.registry import build_adapter
from router.adapters.webhook_sigs import ed25519_jwk, sign_fal
from router.config import CapabilitiesConfig, CostConfig, ProviderConfig, load_config
from router.errors import ConfigError, UpstreamError
from router.models import GenerationRequest

Handler = Callable[[httpx.Request], httpx.Response]
Answer = tuple[int, Any, dict[str, str]]
Table = dict[tuple[str, str], Answer]
BASE = "https://queue.fal.test"
MODEL = "fal-ai/flux/dev"
ROOT = f"{BASE}/fal-ai/flux/requests/r1"
KEY = Ed25519PrivateKey.from_private_bytes(b"\x05" * 32)
JWKS = {"keys": [ed25519_jwk(KEY.public_key(), "k1")]}
NOW = 1_800_000_000.0
SUBMITTED = {
    "request_id": "r1",
    "response_url": ROOT,
    "status_url": f"{ROOT}/status",
    "cancel_url": f"{ROOT}/cancel",
}
IMAGES = {
    "images": [
        {
            "url": "https://fal.media/a.png",
            "content_type": "image/png",
            "width": 1024,
            "height": 576,
            "file_size": 1234,
        },
        {"url": "https://fal.media/b.png", "content_type": "image/png"},
    ],
    "seed": 1,
}


def provider(**overrides: Any) -> ProviderConfig:
    fields: dict[str, Any] = {
        "name": "fal",
        "adapter": "fal",
        "base_url": BASE,
        "kinds": ["image", "video"],
        "api_key": "fal-config",
        "models": {"image": MODEL, "video": "fal-ai/kling-video/v2.1/standard/text-to-video"},
        "cost": CostConfig(per_image_usd=0.025, per_video_s_usd=0.05),
        "options": {"jwks": JWKS},
    }
    return ProviderConfig(**(fields | overrides))


def image(**overrides: Any) -> GenerationRequest:
    return GenerationRequest(**({"kind": "image", "prompt": "a red fox"} | overrides))


def video(**overrides: Any) -> GenerationRequest:
    base: dict[str, Any] = {"kind": "video", "prompt": "waves", "duration_s": 5}
    return GenerationRequest(**(base | overrides))


def ctx_for(client: httpx.AsyncClient, **fields: Any) -> AttemptContext:
    base: dict[str, Any] = {"job_id": "job_1", "attempt_id": "att_1", "deadline": 0.0}
    return AttemptContext(client=client, **(base | fields))


def routes(table: Table) -> Handler:
    """A handler answering ``(method, path)`` from a table; anything else is a 599."""

    def handler(request: httpx.Request) -> httpx.Response:
        status, body, headers = table.get(
            (request.method, request.url.path), (599, {"detail": "unrouted"}, {})
        )
        content = body if isinstance(body, bytes) else msgspec.json.encode(body)
        return httpx.Response(status, content=content, headers=headers)

    return handler


SUBMIT_OK: Table = {("POST", "/fal-ai/flux/dev"): (200, SUBMITTED, {})}


async def run(
    handler: Handler,
    request: GenerationRequest | None = None,
    adapter: FalAdapter | None = None,
    polls: int = 1,
    **ctx_fields: Any,
) -> tuple[SubmitResult, list[PollResult]]:
    """Submit, then poll ``polls`` times."""
    adapter = adapter or FalAdapter(provider())
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ctx = ctx_for(client, **ctx_fields)
        submitted = await adapter.submit(request or image(), ctx)
        results = [await adapter.poll(submitted.upstream_id or "", ctx) for _ in range(polls)]
    return submitted, results


async def poll_with(
    status: tuple[int, Any, dict[str, str]], result: tuple[int, Any, dict[str, str]] | None = None
) -> PollResult:
    table = SUBMIT_OK | {("GET", "/fal-ai/flux/requests/r1/status"): status}
    if result is not None:
        table[("GET", "/fal-ai/flux/requests/r1")] = result
    _submitted, polled = await run(routes(table))
    return polled[0]


# -- bodies and URLs ------------------------------------------------------------------


async def test_image_submit_maps_every_field() -> None:
    """Auth ``Key``, the model path, and the input fields one by one."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=SUBMITTED)

    request = image(
        negative_prompt="blurry",
        width=768,
        height=512,
        seed=3,
        n=2,
        input_image_url="https://img.test/in.png",
    )
    adapter = FalAdapter(provider())
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        result = await adapter.submit(request, ctx_for(client))
    sent = seen[0]
    assert (sent.method, str(sent.url)) == ("POST", f"{BASE}/{MODEL}")
    assert sent.headers["authorization"] == "Key fal-config"
    assert msgspec.json.decode(sent.content) == {
        "prompt": "a red fox",
        "negative_prompt": "blurry",
        "seed": 3,
        "image_url": "https://img.test/in.png",
        "image_size": {"width": 768, "height": 512},
        "num_images": 2,
        "output_format": "png",
    }
    assert result == SubmitResult(status="queued", upstream_id="r1", progress=0)


async def test_video_submit_sends_duration_string_and_aspect_ratio() -> None:
    """Video: ``duration`` in whole seconds as a string, ``aspect_ratio`` as given."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=SUBMITTED)

    await run(handler, video(aspect_ratio="9:16", duration_s=5.4), polls=0)
    assert seen[0].url.path == "/fal-ai/kling-video/v2.1/standard/text-to-video"
    assert msgspec.json.decode(seen[0].content) == {
        "prompt": "waves",
        "duration": "5",
        "aspect_ratio": "9:16",
    }


async def test_webhook_goes_in_the_fal_webhook_query() -> None:
    """The engine's webhook URL (with its own query) is URL-encoded into ``fal_webhook``."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=SUBMITTED)

    hook = "https://sw.test/v1/webhooks/fal?job=j1&attempt=a1"
    await run(handler, webhook_url=hook, polls=0)
    assert parse_qs(seen[0].url.query.decode())["fal_webhook"] == [hook]


@pytest.mark.parametrize(
    ("fields", "size"),
    [
        ({}, None),
        ({"aspect_ratio": "1:1"}, "square_hd"),
        ({"aspect_ratio": "16:9"}, "landscape_16_9"),
        ({"aspect_ratio": "9:16"}, "portrait_16_9"),
        ({"aspect_ratio": "4:3"}, "landscape_4_3"),
        ({"aspect_ratio": "3:4"}, "portrait_4_3"),
        ({"aspect_ratio": "21:9"}, {"width": 1568, "height": 672}),
        ({"width": 640, "height": 480, "aspect_ratio": "1:1"}, {"width": 640, "height": 480}),
    ],
)
def test_image_size_table(fields: dict[str, Any], size: Any) -> None:
    """Exact sizes win, then fal's presets, then ~1 MP in the ratio."""
    assert image_size_for(image(**fields)) == size


async def test_status_and_result_use_the_urls_fal_gave() -> None:
    """Polls go to ``status_url``/``response_url`` (owner/app only), not the model subpath."""
    seen: list[str] = []
    table = SUBMIT_OK | {
        ("GET", "/fal-ai/flux/requests/r1/status"): (200, {"status": "COMPLETED"}, {}),
        ("GET", "/fal-ai/flux/requests/r1"): (200, IMAGES, {}),
    }
    inner = routes(table)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path} {request.headers['authorization']}")
        return inner(request)

    await run(handler)
    assert seen[1:] == [
        "GET /fal-ai/flux/requests/r1/status Key fal-config",
        "GET /fal-ai/flux/requests/r1 Key fal-config",
    ]


async def test_urls_on_another_host_are_not_trusted() -> None:
    """A status URL on a foreign host is replaced by the derived one: the key stays home."""
    hosts: list[str] = []
    evil = SUBMITTED | {"status_url": "https://evil.test/steal", "response_url": "http://x/"}
    table: Table = {
        ("POST", "/fal-ai/flux/dev"): (200, evil, {}),
        ("GET", "/fal-ai/flux/requests/r1/status"): (202, {"status": "IN_PROGRESS"}, {}),
    }
    inner = routes(table)

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return inner(request)

    await run(handler)
    assert hosts == ["queue.fal.test", "queue.fal.test"]


def test_registry_builds_the_fal_adapter() -> None:
    """``adapter: fal`` resolves by naming convention; bad options are a config error."""
    assert isinstance(build_adapter(provider()), FalAdapter)
    with pytest.raises(ConfigError, match="options"):
        FalAdapter(provider(options={"jwks_uri": "typo"}))


# -- supports / cost ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "req", "refused"),
    [
        ({}, image(), False),
        ({}, video(), False),
        ({"kinds": ["image"]}, video(), True),
        ({"models": {"image": MODEL}}, video(), True),
        ({"models": {"image": "flux"}}, image(), True),
        ({}, video(n=2), True),
        ({"capabilities": CapabilitiesConfig(max_n=1)}, image(n=2), True),
        ({"capabilities": CapabilitiesConfig(max_height=512)}, image(width=512, height=1024), True),
        ({"capabilities": CapabilitiesConfig(max_duration_s=5)}, video(duration_s=10), True),
        (
            {"capabilities": CapabilitiesConfig(aspect_ratios=["16:9"])},
            image(aspect_ratio="1:1"),
            True,
        ),
    ],
)
def test_supports_table(config: dict[str, Any], req: GenerationRequest, refused: bool) -> None:
    """What the provider cannot do is refused before any call."""
    reason = FalAdapter(provider(**config)).supports(req)
    assert (reason is not None) is refused, reason


def test_estimate_cost() -> None:
    """Per image × n; per video second × (rounded) duration, 5 s when unspecified."""
    adapter = FalAdapter(provider())
    assert adapter.estimate_cost(image(n=4)) == pytest.approx(0.10)
    assert adapter.estimate_cost(video(duration_s=10)) == pytest.approx(0.50)
    assert adapter.estimate_cost(video(duration_s=None)) == pytest.approx(0.25)


# -- statuses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected", "progress"),
    [
        ((202, {"status": "IN_QUEUE", "queue_position": 0}, {}), "queued", 9),
        ((202, {"status": "IN_QUEUE", "queue_position": 4}, {}), "queued", 5),
        ((202, {"status": "IN_QUEUE", "queue_position": 40}, {}), "queued", 0),
        ((202, {"status": "IN_QUEUE"}, {}), "queued", 0),
        ((202, {"status": "IN_PROGRESS", "logs": None}, {}), "running", 10),
    ],
)
async def test_pending_status_table(
    status: tuple[int, Any, dict[str, str]], expected: str, progress: int
) -> None:
    """``IN_QUEUE`` (queue position → progress hint) and ``IN_PROGRESS`` are pending."""
    result = await poll_with(status)
    assert (result.status, result.progress) == (expected, progress)


async def test_completed_with_result_succeeds_with_outputs_and_cost() -> None:
    """``COMPLETED`` + a 200 result: outputs with their metadata; cost per image × count."""
    result = await poll_with((200, {"status": "COMPLETED"}, {}), (200, IMAGES, {}))
    assert result.status == "succeeded"
    first = result.outputs[0]
    assert (first.url, first.content_type, first.width, first.height, first.bytes) == (
        "https://fal.media/a.png",
        "image/png",
        1024,
        576,
        1234,
    )
    assert len(result.outputs) == 2
    assert result.cost_usd == pytest.approx(0.05)


async def test_video_result_costs_per_second_of_the_submitted_duration() -> None:
    """A ``video`` result is an MP4 billed for the duration sent at submit."""
    table: Table = {
        ("POST", "/fal-ai/kling-video/v2.1/standard/text-to-video"): (200, SUBMITTED, {}),
        ("GET", "/fal-ai/flux/requests/r1/status"): (200, {"status": "COMPLETED"}, {}),
        ("GET", "/fal-ai/flux/requests/r1"): (200, {"video": {"url": "https://f/v.mp4"}}, {}),
    }
    _s, polled = await run(routes(table), video(duration_s=10))
    out = polled[0].outputs[0]
    assert (out.content_type, out.duration_s) == ("video/mp4", 10)
    assert polled[0].cost_usd == pytest.approx(0.50)


@pytest.mark.parametrize(
    ("status", "result", "kind"),
    [
        (
            {"status": "COMPLETED", "error": "boom", "error_type": "runner_disconnected"},
            None,
            "upstream_unavailable",
        ),
        (
            {"status": "COMPLETED", "error": "slow", "error_type": "request_timeout"},
            None,
            "timeout",
        ),
        ({"status": "COMPLETED", "error": "x"}, None, "upstream_unavailable"),
        (
            {"status": "COMPLETED"},
            (422, {"detail": [{"loc": ["body"], "msg": "m", "type": "content_policy_violation"}]}),
            "content_policy",
        ),
        (
            {"status": "COMPLETED"},
            (422, {"detail": [{"loc": ["body", "x"], "msg": "m", "type": "value_error"}]}),
            "invalid_request",
        ),
        (
            {"status": "COMPLETED"},
            (422, {"detail": [{"loc": ["body"], "msg": "m", "type": "no_media_generated"}]}),
            "upstream_unavailable",
        ),
        ({"status": "COMPLETED"}, (500, {"detail": "oops"}), "upstream_unavailable"),
        ({"status": "COMPLETED"}, (200, {"images": []}), "malformed_response"),
        ({"status": "COMPLETED"}, (200, b"{nope"), "malformed_response"),
    ],
)
async def test_completed_failure_table(
    status: dict[str, Any], result: tuple[int, Any] | None, kind: str
) -> None:
    """``COMPLETED`` with ``error``, or a failing result, is a failed job of the right kind."""
    res: Answer | None = (result[0], result[1], {}) if result is not None else None
    polled = await poll_with((200, status, {}), res)
    assert (polled.status, polled.error_kind) == ("failed", kind)


async def test_result_429_is_a_poll_failure_not_a_job_failure() -> None:
    """A throttled result fetch raises (the engine polls again) instead of failing the job."""
    with pytest.raises(UpstreamError) as info:
        await poll_with((200, {"status": "COMPLETED"}, {}), (429, {"detail": "slow down"}, {}))
    assert info.value.kind == "rate_limited"


@pytest.mark.parametrize(
    ("status", "kind"),
    [((404, {"detail": "Request not found"}, {}), "not_found"), ((200, {"x": 1}, {}), None)],
)
async def test_status_errors(status: tuple[int, Any, dict[str, str]], kind: str | None) -> None:
    """A missing request is ``not_found``; a body without ``status`` is malformed."""
    with pytest.raises(UpstreamError) as info:
        await poll_with(status)
    assert info.value.kind == (kind or "malformed_response")


# -- HTTP errors on submit ------------------------------------------------------------


def detail(type_: str) -> dict[str, Any]:
    return {"detail": [{"loc": ["body", "prompt"], "msg": "m", "type": type_}]}


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind"),
    [
        (400, {"detail": "bad"}, {}, "invalid_request"),
        (401, {"detail": "Invalid authorization credentials"}, {}, "auth"),
        (403, {"detail": "forbidden"}, {}, "auth"),
        (404, {"detail": "Application not found"}, {}, "not_found"),
        (422, detail("value_error.missing"), {}, "invalid_request"),
        (422, detail("content_policy_violation"), {}, "content_policy"),
        (422, detail("value_error"), {"X-Fal-Retryable": "true"}, "upstream_unavailable"),
        (429, {"detail": "Too many requests"}, {"Retry-After": "4"}, "rate_limited"),
        (500, {"detail": "oops"}, {}, "upstream_unavailable"),
        (
            503,
            {"detail": "x"},
            {"X-Fal-Error-Type": "runner_scheduling_failure"},
            "upstream_unavailable",
        ),
        (504, {"detail": "Request timed out", "error_type": "request_timeout"}, {}, "timeout"),
        (504, {"detail": "x"}, {"X-Fal-Error-Type": "startup_timeout"}, "timeout"),
        (502, b"<html>", {}, "upstream_unavailable"),
        (418, {"detail": "teapot"}, {}, "invalid_request"),
    ],
)
async def test_submit_http_error_table(
    status: int, body: Any, headers: dict[str, str], kind: str
) -> None:
    """Each HTTP failure of submit maps to one error kind (contracts §8)."""
    table = {("POST", "/fal-ai/flux/dev"): (status, body, headers)}
    with pytest.raises(UpstreamError) as info:
        await run(routes(table), polls=0)
    assert (info.value.kind, info.value.http_status) == (kind, status)
    if status == 429:
        assert info.value.retry_after_s == 4


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), "upstream_unavailable"),
        (httpx.ReadTimeout("slow"), "timeout"),
    ],
)
async def test_transport_errors_become_upstream_errors(exc: Exception, kind: str) -> None:
    """No httpx exception escapes submit."""

    def boom(_request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(UpstreamError) as info:
        await run(boom, polls=0)
    assert info.value.kind == kind


@pytest.mark.parametrize("body", [b"{oops", b"{}", b'{"request_id": ""}', b"[1]"])
async def test_submit_without_request_id_is_malformed(body: bytes) -> None:
    """A submit answer without ``request_id`` is malformed."""
    with pytest.raises(UpstreamError) as info:
        await run(routes({("POST", "/fal-ai/flux/dev"): (200, body, {})}), polls=0)
    assert info.value.kind == "malformed_response"


# -- cancel ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected", "then"),
    [
        ((202, {"status": "CANCELLATION_REQUESTED"}, {}), True, "canceled"),
        ((400, {"status": "ALREADY_COMPLETED"}, {}), False, "running"),
        ((404, {"status": "NOT_FOUND"}, {}), False, "running"),
    ],
)
async def test_cancel_table(
    answer: tuple[int, Any, dict[str, str]], expected: bool, then: str
) -> None:
    """``PUT cancel_url``; once fal took the cancel, later polls say ``canceled`` locally."""
    table = SUBMIT_OK | {
        ("PUT", "/fal-ai/flux/requests/r1/cancel"): answer,
        ("GET", "/fal-ai/flux/requests/r1/status"): (202, {"status": "IN_PROGRESS"}, {}),
    }
    adapter = FalAdapter(provider())
    async with httpx.AsyncClient(transport=httpx.MockTransport(routes(table))) as client:
        ctx = ctx_for(client)
        await adapter.submit(image(), ctx)
        assert await adapter.cancel("r1", ctx) is expected
        assert (await adapter.poll("r1", ctx)).status == then


async def test_cancel_server_error_raises() -> None:
    """A 5xx on cancel is an UpstreamError."""
    table = SUBMIT_OK | {("PUT", "/fal-ai/flux/requests/r1/cancel"): (503, {"detail": "x"}, {})}
    adapter = FalAdapter(provider())
    async with httpx.AsyncClient(transport=httpx.MockTransport(routes(table))) as client:
        await adapter.submit(image(), ctx_for(client))
        with pytest.raises(UpstreamError):
            await adapter.cancel("r1", ctx_for(client))


# -- webhooks -------------------------------------------------------------------------


def signed(body: bytes, key: Ed25519PrivateKey = KEY, ts: float = NOW) -> dict[str, str]:
    return {
        "x-fal-webhook-request-id": "r1",
        "x-fal-webhook-user-id": "u1",
        "x-fal-webhook-timestamp": str(int(ts)),
        "x-fal-webhook-signature": sign_fal(key, "r1", "u1", int(ts), body),
    }


def test_verify_webhook_with_inline_jwks() -> None:
    """An Ed25519 signature by a JWKS key verifies; another key, or stale, does not."""
    adapter = FalAdapter(provider())
    body = b'{"request_id":"r1","status":"OK","payload":{}}'
    assert adapter.verify_webhook(signed(body), body, NOW)
    assert not adapter.verify_webhook(signed(body), body, NOW + 301)
    other = Ed25519PrivateKey.from_private_bytes(b"\x06" * 32)
    assert not adapter.verify_webhook(signed(body, other), body, NOW)


async def test_jwks_is_fetched_before_the_first_webhook_and_cached() -> None:
    """With ``jwks_url``, the keys are fetched at the first webhook submit, then reused."""
    clock = FakeClock(wall=NOW)
    fetched: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/jwks.json":
            fetched.append(str(request.url))
            return httpx.Response(200, json=JWKS)
        return httpx.Response(200, json=SUBMITTED)

    adapter = FalAdapter(provider(options={"jwks_url": "/.well-known/jwks.json"}), clock=clock)
    body = b"{}"
    assert not adapter.verify_webhook(signed(body), body, NOW)  # nothing fetched yet
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        for _ in range(3):
            await adapter.submit(image(), ctx_for(client, webhook_url="https://sw.test/h"))
        assert fetched == [f"{BASE}/.well-known/jwks.json"]
        assert adapter.verify_webhook(signed(body), body, NOW)
        clock.advance(24 * 3600 + 1)  # older than a day: fetched again
        await adapter.submit(image(), ctx_for(client, webhook_url="https://sw.test/h"))
    assert len(fetched) == 2


async def test_jwks_fetch_failure_does_not_fail_the_submit() -> None:
    """An unreachable JWKS only disables webhook verification; polling still works."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("jwks.json"):
            raise httpx.ConnectError("down")
        return httpx.Response(200, json=SUBMITTED)

    adapter = FalAdapter(provider(options={}))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        result = await adapter.submit(image(), ctx_for(client, webhook_url="https://sw.test/h"))
    assert result.upstream_id == "r1"


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"request_id": "r1", "status": "OK", "payload": IMAGES}, "succeeded", None),
        (
            {
                "request_id": "r1",
                "status": "ERROR",
                "error": "Invalid status code: 422",
                "payload": detail("content_policy_violation"),
            },
            "failed",
            "content_policy",
        ),
        (
            {
                "request_id": "r1",
                "status": "ERROR",
                "error": "Invalid status code: 422",
                "payload": detail("value_error.missing"),
            },
            "failed",
            "invalid_request",
        ),
        (
            {
                "request_id": "r1",
                "status": "ERROR",
                "error": "Invalid status code: 503",
                "payload": {"detail": "x", "error_type": "runner_disconnected"},
            },
            "failed",
            "upstream_unavailable",
        ),
        (
            {"request_id": "r1", "status": "OK", "payload": None, "payload_error": "too big"},
            "failed",
            "malformed_response",
        ),
    ],
)
def test_parse_webhook_table(body: dict[str, Any], status: str, kind: str | None) -> None:
    """``OK`` carries the result; ``ERROR`` is classified from its status and payload."""
    event = FalAdapter(provider()).parse_webhook({}, msgspec.json.encode(body))
    assert event is not None
    assert event.upstream_id == "r1"
    assert (event.result.status, event.result.error_kind) == (status, kind)


def test_parse_webhook_ignores_non_events() -> None:
    """Bodies that are not fal webhook events are ignored."""
    adapter = FalAdapter(provider())
    assert adapter.parse_webhook({}, b"nope") is None
    assert adapter.parse_webhook({}, b'{"request_id": "r1", "status": "MAYBE"}') is None


async def test_probe_treats_404_as_a_working_key() -> None:
    """A status lookup of an impossible id: 404 proves the key, 401 refutes it."""
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _r: httpx.Response(404, json={}))
    ) as client:
        assert (await FalAdapter(provider()).probe(client, None)).ok
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _r: httpx.Response(401, json={}))
    ) as client:
        result = await FalAdapter(provider()).probe(client, None)
    assert (result.ok, result.detail) == (False, "401 auth")


def test_deploy_config_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """``deploy/config/fal.yaml`` validates and its providers build adapters."""
    monkeypatch.setenv("FAL_KEY", "k")
    config = load_config(Path(__file__).parents[2] / "deploy/config/fal.yaml")
    adapters = [build_adapter(p) for p in config.providers]
    assert all(isinstance(a, FalAdapter) for a in adapters)
    assert all(a.supports(image()) is None for a in adapters)
