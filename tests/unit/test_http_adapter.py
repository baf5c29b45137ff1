"""The generic ``http`` adapter: option validation, templates, extraction, mapping, errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest

from breakers.clock import FakeClock
from router.adapters.base import AttemptContext, PollResult, SubmitResult
from router.adapters.http import HttpAdapter, extract, is_missing, render
from router.adapters.registry import build_adapter
from router.config import CapabilitiesConfig, CostConfig, ProviderConfig
from router.errors import ConfigError, UpstreamError
from router.models import GenerationRequest

Handler = Callable[[httpx.Request], httpx.Response]

ASYNC_OPTIONS: dict[str, Any] = {
    "submit": {
        "method": "POST",
        "path": "/generate",
        "body": {
            "prompt": "{prompt}",
            "kind": "{kind}",
            "width": "{width}",
            "height": "{height}",
            "seconds": "{duration_s}",
            "model": "{model}",
            "tag": "job {job_id}",
        },
    },
    "id_field": "id",
    "poll": {"method": "GET", "path": "/jobs/{id}"},
    "status_field": "status",
    "status_map": {
        "pending": "queued",
        "working": "running",
        "done": "succeeded",
        "error": "failed",
        "cancelled": "canceled",
    },
    "outputs_field": "result.urls",
    "progress_field": "progress",
    "error_field": "error.message",
    "cancel": {"method": "POST", "path": "/jobs/{id}/cancel"},
    "auth_header": "Authorization",
    "auth_scheme": "Bearer",
    "content_policy_match": "safety|nsfw",
}
SYNC_OPTIONS: dict[str, Any] = {
    "submit": {"path": "/generate/sync", "body": {"prompt": "{prompt}", "n": "{n}"}},
    "outputs_field": "images",
}


def provider(options: dict[str, Any] | None = None, **overrides: Any) -> ProviderConfig:
    fields: dict[str, Any] = {
        "name": "house",
        "adapter": "http",
        "base_url": "https://gen.test/api/",
        "kinds": ["image", "video"],
        "api_key": "tok",
        "models": {"video": "house-v2"},
        "cost": CostConfig(per_image_usd=0.01, per_video_s_usd=0.1),
        "options": ASYNC_OPTIONS if options is None else options,
    }
    return ProviderConfig(**(fields | overrides))


def adapter(options: dict[str, Any] | None = None, **overrides: Any) -> HttpAdapter:
    return HttpAdapter(provider(options, **overrides), clock=FakeClock())


def req(**overrides: Any) -> GenerationRequest:
    return GenerationRequest(**({"kind": "video", "prompt": "a fox"} | overrides))


async def submit(
    handler: Handler, house: HttpAdapter, request: GenerationRequest | None = None
) -> SubmitResult:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ctx = AttemptContext(client=client, job_id="job_1", attempt_id="att_1", deadline=0.0)
        return await house.submit(request or req(), ctx)


async def poll(handler: Handler, house: HttpAdapter, upstream_id: str = "j1") -> PollResult:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ctx = AttemptContext(client=client, job_id="job_1", attempt_id="att_1", deadline=0.0)
        return await house.poll(upstream_id, ctx)


def respond(status: int, body: Any, headers: dict[str, str] | None = None) -> Handler:
    return lambda _request: httpx.Response(status, json=body, headers=headers)


# -- option validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"submit": None}, "providers.house.options", "submit"),
        ({"outputs_field": None}, "providers.house.options", "outputs_field"),
        ({"bogus": 1}, "providers.house.options", "unknown field"),
        ({"status_map": {"ok": "finished"}}, "providers.house.options.status_map", "finished"),
        ({"poll": {"path": "/jobs/{id}", "method": "FETCH"}}, "providers.house.options.poll", ""),
        ({"id_field": None}, "providers.house.options.id_field", "required"),
        ({"status_field": None}, "providers.house.options.status_field", "required"),
        ({"submit": {"path": "generate"}}, "providers.house.options.submit.path", "/"),
        (
            {"submit": {"path": "/g", "body": {"p": "{promt}"}}},
            "providers.house.options.submit.body",
            "{promt}",
        ),
        ({"poll": {"path": "/jobs/{prompt}"}}, "providers.house.options.poll.path", "{prompt}"),
        ({"submit": {"path": "/g/{id}"}}, "providers.house.options.submit.path", "{id}"),
        ({"outputs_field": "result..urls"}, "providers.house.options.outputs_field", "dotted"),
        (
            {"content_policy_match": "(unclosed"},
            "providers.house.options.content_policy_match",
            "regex",
        ),
        ({"auth_header": "X Bad"}, "providers.house.options.auth_header", "header"),
    ],
)
def test_invalid_options_name_their_field(change: dict[str, Any], field: str, words: str) -> None:
    """Each invalid option raises ConfigError naming providers.<name>.options.<field>."""
    options = {k: v for k, v in (ASYNC_OPTIONS | change).items() if v is not None}
    with pytest.raises(ConfigError) as info:
        build_adapter(provider(options))
    message = "\n".join(info.value.errors)
    assert any(e.startswith(field) for e in info.value.errors), message
    assert words in message


def test_valid_options_build_through_the_registry() -> None:
    """The brief's example options and a minimal synchronous set both build."""
    assert isinstance(build_adapter(provider()), HttpAdapter)
    assert isinstance(build_adapter(provider(SYNC_OPTIONS)), HttpAdapter)


# -- templates and extraction ----------------------------------------------------------------


def test_render_keeps_types_drops_unset_and_escapes() -> None:
    """Whole placeholders keep their type, casts apply, unset keys vanish, braces escape."""
    values = {"prompt": 'say "{id}"', "width": 640, "duration_s": 8.0, "seed": None}
    template = {
        "prompt": "{prompt}",
        "w": "{width}",
        "s": "{duration_s:int}",
        "f": "{width:float}",
        "text": "{width:str}",
        "seed": "{seed}",
        "label": "w={width} s={seed}",
        "literal": "{{not a placeholder}}",
        "list": ["{width}", "{seed}", 3],
        "fixed": True,
    }
    assert render(template, values) == {
        "prompt": 'say "{id}"',  # a value is never re-parsed as a template
        "w": 640,
        "s": 8,
        "f": 640.0,
        "text": "640",
        "list": [640, 3],
        "literal": "{not a placeholder}",
        "fixed": True,
    }
    assert is_missing(render("{seed}", values))


def test_render_path_percent_encodes_values() -> None:
    """Values placed in a path cannot add segments or a query."""
    assert render("/jobs/{id}", {"id": "a/../b?x=1"}, in_path=True) == "/jobs/a%2F..%2Fb%3Fx%3D1"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a", 1),
        ("b.c", [1, 2]),
        ("b.c.1", 2),
        ("b.c.9", None),
        ("b.missing", None),
        ("a.deeper", None),
        ("list.0.url", "u"),
    ],
)
def test_extract_dotted_paths(path: str, expected: Any) -> None:
    """Dotted paths walk objects and list indexes; anything absent is None."""
    data = {"a": 1, "b": {"c": [1, 2]}, "list": [{"url": "u"}]}
    assert extract(data, path) == expected


# -- request mapping -------------------------------------------------------------------------


async def test_submit_request_path_headers_and_body() -> None:
    """The submit call carries base path, auth header+scheme, attempt id and the typed body."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"id": "j1", "status": "pending", "progress": 0})

    result = await submit(handler, adapter(), req(width=640, height=360, duration_s=4))
    assert (result.status, result.upstream_id, result.progress) == ("queued", "j1", 0)
    r = seen[0]
    assert (r.method, str(r.url)) == ("POST", "https://gen.test/api/generate")
    assert r.headers["authorization"] == "Bearer tok"
    assert r.headers["x-client-request-id"] == "att_1"
    assert msgspec.json.decode(r.content) == {
        "prompt": "a fox",
        "kind": "video",
        "width": 640,
        "height": 360,
        "seconds": 4.0,
        "model": "house-v2",
        "tag": "job job_1",
    }


async def test_custom_auth_header_without_scheme_and_no_key() -> None:
    """auth_scheme null sends the bare key in auth_header; no key sends no auth header."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"images": ["https://f.test/a.png"]})

    options = SYNC_OPTIONS | {"auth_header": "X-Api-Key", "auth_scheme": None}
    await submit(handler, adapter(options), req(kind="image"))
    await submit(handler, adapter(options, api_key=None), req(kind="image"))
    assert seen[0].headers["x-api-key"] == "tok"
    assert "authorization" not in seen[0].headers
    assert "x-api-key" not in seen[1].headers


async def test_synchronous_provider_succeeds_in_submit() -> None:
    """Without poll, a 2xx with outputs succeeds at once, priced per image."""
    body = {"images": ["https://f.test/a.png", {"url": "https://f.test/b.jpg", "width": 10}]}
    result = await submit(respond(200, body), adapter(SYNC_OPTIONS), req(kind="image", n=2))
    assert result.status == "succeeded"
    assert [(o.url, o.content_type) for o in result.outputs] == [
        ("https://f.test/a.png", "image/png"),
        ("https://f.test/b.jpg", "image/jpeg"),
    ]
    assert result.outputs[1].width == 10
    assert result.cost_usd == pytest.approx(0.02)


async def test_async_submit_that_is_already_done_succeeds() -> None:
    """An asynchronous provider answering ``done`` on submit needs no poll."""
    body = {"id": "j1", "status": "done", "result": {"urls": ["https://f.test/v.mp4"]}}
    result = await submit(respond(200, body), adapter(), req(duration_s=3))
    assert result.status == "succeeded"
    assert result.outputs[0].content_type == "video/mp4"
    assert result.outputs[0].duration_s == 3.0
    assert result.cost_usd == pytest.approx(0.3)


async def test_supports_checks_kinds_capabilities_and_path_fields() -> None:
    """Kinds and capabilities bound requests; a path placeholder the request lacks refuses it."""
    caps = CapabilitiesConfig(max_n=1, max_duration_s=10, aspect_ratios=["16:9"])
    house = adapter(capabilities=caps, kinds=["video"])
    assert house.supports(req(kind="image")) is not None
    assert house.supports(req(n=2)) is not None
    assert house.supports(req(duration_s=20)) is not None
    assert house.supports(req(aspect_ratio="1:1")) is not None
    assert house.supports(req()) is None
    by_model = adapter(SYNC_OPTIONS | {"submit": {"path": "/models/{model}/run"}}, models={})
    assert by_model.supports(req(kind="image")) is not None
    assert by_model.supports(req(kind="image", model="m1")) is None


# -- polling ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "progress"),
    [
        ({"status": "pending", "progress": 0}, "queued", 0),
        ({"status": "working", "progress": 42.7}, "running", 42),
        ({"status": "running"}, "running", None),  # a canonical name needs no mapping
        ({"status": "working", "progress": 250}, "running", 100),
    ],
)
async def test_poll_maps_status_and_progress(
    body: dict[str, Any], status: str, progress: int | None
) -> None:
    """status_map translates native statuses; progress is clamped to 0-100."""
    result = await poll(respond(200, body), adapter())
    assert (result.status, result.progress) == (status, progress)


async def test_poll_request_and_success() -> None:
    """GET /jobs/{id} with auth; done → outputs described from the remembered request."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(202, json={"id": "j 1", "status": "pending"})
        return httpx.Response(
            200, json={"status": "done", "result": {"urls": ["https://f.test/v.mp4"]}}
        )

    house = adapter()
    await submit(handler, house, req(width=640, height=360, duration_s=4))
    result = await poll(handler, house, "j 1")
    assert str(seen[1].url) == "https://gen.test/api/jobs/j%201"
    assert seen[1].headers["authorization"] == "Bearer tok"
    assert result.status == "succeeded"
    out = result.outputs[0]
    assert (out.width, out.height, out.duration_s, out.content_type) == (640, 360, 4.0, "video/mp4")
    assert result.cost_usd == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("output blocked by safety filter", "content_policy"),
        ("NSFW content detected", "content_policy"),
        ("worker crashed", "upstream_unavailable"),
    ],
)
async def test_failed_job_kind_from_content_policy_match(message: str, kind: str) -> None:
    """A failed job is upstream_unavailable unless its message matches content_policy_match."""
    body = {"status": "error", "error": {"message": message}}
    result = await poll(respond(200, body), adapter())
    assert (result.status, result.error_kind, result.error_message) == ("failed", kind, message)


async def test_canceled_job_and_malformed_answers() -> None:
    """cancelled → canceled; an unknown status or no outputs is malformed_response."""
    result = await poll(respond(200, {"status": "cancelled"}), adapter())
    assert (result.status, result.error_kind) == ("canceled", "canceled")
    for body in ({"status": "exploded"}, {"status": "done", "result": {}}, {"progress": 1}):
        with pytest.raises(UpstreamError) as info:
            await poll(respond(200, body), adapter())
        assert info.value.kind == "malformed_response"
    with pytest.raises(UpstreamError) as info:
        await submit(respond(202, {"status": "pending"}), adapter())
    assert info.value.kind == "malformed_response"  # no id to poll


async def test_failed_at_submission_raises_with_its_kind() -> None:
    """A submit answer that is already failed raises, classified by content_policy_match."""
    body = {"id": "j1", "status": "error", "error": {"message": "prompt blocked: safety"}}
    with pytest.raises(UpstreamError) as info:
        await submit(respond(200, body), adapter())
    assert info.value.kind == "content_policy"


async def test_cost_field_overrides_config_price() -> None:
    """cost_field, when the provider reports a cost, is what the attempt costs."""
    options = SYNC_OPTIONS | {"cost_field": "usage.usd"}
    body = {"images": ["https://f.test/a.png"], "usage": {"usd": 0.123}}
    result = await submit(respond(200, body), adapter(options), req(kind="image"))
    assert result.cost_usd == pytest.approx(0.123)


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "retry_after"),
    [
        (429, {"error": {"message": "slow down"}}, {"Retry-After": "7"}, "rate_limited", 7.0),
        (500, {}, {}, "upstream_unavailable", None),
        (503, {}, {"Retry-After": "2"}, "upstream_unavailable", 2.0),
        (408, {}, {}, "upstream_unavailable", None),
        (401, {}, {}, "auth", None),
        (403, {}, {}, "auth", None),
        (404, {}, {}, "not_found", None),
        (400, {"error": {"message": "bad width"}}, {}, "invalid_request", None),
        (422, {"error": {"message": "bad width"}}, {}, "invalid_request", None),
        (413, {}, {}, "invalid_request", None),
        (422, {"error": {"message": "rejected by safety filter"}}, {}, "content_policy", None),
        (400, {"detail": "NSFW prompt"}, {}, "content_policy", None),
    ],
)
@pytest.mark.parametrize("phase", ["submit", "poll"])
async def test_http_errors_are_classified(
    phase: str,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
    kind: str,
    retry_after: float | None,
) -> None:
    """Generic status classes, Retry-After, and content_policy_match on the error message."""
    options = ASYNC_OPTIONS if phase == "poll" else ASYNC_OPTIONS | {"error_field": None}
    house = adapter({k: v for k, v in options.items() if v is not None})
    handler = respond(status, body, headers)
    call = submit(handler, house) if phase == "submit" else poll(handler, house)
    with pytest.raises(UpstreamError) as info:
        await call
    exc = info.value
    assert (exc.kind, exc.http_status, exc.retry_after_s) == (kind, status, retry_after)


async def test_transport_errors() -> None:
    """A timeout is timeout; a refused connection is upstream_unavailable."""

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    for handler, kind in ((timeout, "timeout"), (refused, "upstream_unavailable")):
        with pytest.raises(UpstreamError) as info:
            await submit(handler, adapter())
        assert info.value.kind == kind


async def test_cancel_and_probe() -> None:
    """cancel() posts the cancel path (True on 2xx); no cancel option → False; probe GETs."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, json={"status": "cancelled"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ctx = AttemptContext(client=client, job_id="j", attempt_id="a", deadline=0.0)
        assert await adapter().cancel("j1", ctx) is True
        assert await adapter(SYNC_OPTIONS).cancel("j1", ctx) is False
        probe = await adapter(ASYNC_OPTIONS | {"probe": {"path": "/healthz"}}).probe(client, None)
    assert probe.ok
    assert seen == ["POST /api/jobs/j1/cancel", "GET /api/healthz"]
