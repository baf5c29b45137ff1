"""The ``veo`` adapter against ``httpx.MockTransport``: both flavours, mapping, the §8 table."""

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
from router.adapters.veo import VeoAdapter, VeoOptions, grpc_kind, retry_delay
from router.config import CapabilitiesConfig, CostConfig, ProviderConfig
from router.errors import ConfigError, UpstreamError
from router.models import GenerationRequest
from tests.service_accounts import key_file, pem, rsa_key

Handler = Callable[[httpx.Request], httpx.Response]

GEMINI_OP = "models/veo-3.1-generate-preview/operations/op1"
VERTEX_RESOURCE = (
    "projects/proj/locations/us-central1/publishers/google/models/veo-3.1-generate-preview"
)
VERTEX_OP = f"{VERTEX_RESOURCE}/operations/op1"


def provider(api: str = "gemini", **overrides: Any) -> ProviderConfig:
    fields: dict[str, Any] = {
        "name": "veo",
        "adapter": "veo",
        "base_url": "https://veo.test",
        "kinds": ["video"],
        "api_key": "AIza-config",
        "cost": CostConfig(per_video_s_usd=0.4),
        "options": {"api": api, "project": "proj"},
    }
    return ProviderConfig(**(fields | overrides))


def video(**overrides: Any) -> GenerationRequest:
    return GenerationRequest(**({"kind": "video", "prompt": "a red fox"} | overrides))


def adapter(api: str = "gemini", **overrides: Any) -> VeoAdapter:
    return VeoAdapter(provider(api, **overrides), clock=FakeClock())


async def call(
    handler: Handler,
    veo: VeoAdapter,
    request: GenerationRequest | None = None,
    poll_id: str | None = None,
    **ctx_fields: Any,
) -> SubmitResult | PollResult:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ctx = AttemptContext(
            client=client, job_id="job_1", attempt_id="att_1", deadline=0.0, **ctx_fields
        )
        if poll_id is not None:
            return await veo.poll(poll_id, ctx)
        return await veo.submit(request or video(), ctx)


def respond(status: int, body: Any) -> Handler:
    return lambda _request: httpx.Response(status, json=body)


def google_error(code: int, status: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": "nope", "status": status, **extra}}


def done_gemini(samples: list[dict[str, Any]], filtered: int = 0) -> dict[str, Any]:
    payload: dict[str, Any] = {"raiMediaFilteredCount": filtered, "raiMediaFilteredReasons": []}
    if samples:
        payload["generatedSamples"] = samples
    if filtered:
        payload["raiMediaFilteredReasons"] = ["blocked by safety filters"]
    return {"name": GEMINI_OP, "done": True, "response": {"generateVideoResponse": payload}}


def done_vertex(videos: list[dict[str, Any]], filtered: int = 0) -> dict[str, Any]:
    response: dict[str, Any] = {"raiMediaFilteredCount": filtered}
    if videos:
        response["videos"] = videos
    if filtered:
        response["raiMediaFilteredReasons"] = ["blocked by safety filters"]
    return {"name": VERTEX_OP, "done": True, "response": response}


# -- request mapping -------------------------------------------------------------------------


async def test_gemini_submit_path_headers_and_body() -> None:
    """Gemini: predictLongRunning on the model, x-goog-api-key, attempt id, mapped parameters."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"name": GEMINI_OP})

    result = await call(
        handler,
        adapter(),
        video(
            aspect_ratio="9:16",
            duration_s=6,
            negative_prompt="blurry",
            seed=7,
            n=2,
        ),
        trace_headers={"traceparent": "00-abc-def-01"},
    )
    assert isinstance(result, SubmitResult)
    assert (result.status, result.upstream_id) == ("queued", GEMINI_OP)
    req = seen[0]
    assert req.method == "POST"
    assert str(req.url) == (
        "https://veo.test/v1beta/models/veo-3.1-generate-preview:predictLongRunning"
    )
    assert req.headers["x-goog-api-key"] == "AIza-config"
    assert "authorization" not in req.headers
    assert req.headers["x-client-request-id"] == "att_1"
    assert req.headers["traceparent"] == "00-abc-def-01"
    assert msgspec.json.decode(req.content) == {
        "instances": [{"prompt": "a red fox"}],
        "parameters": {
            "aspectRatio": "9:16",
            "durationSeconds": 6,
            "resolution": "720p",
            "sampleCount": 2,
            "personGeneration": "allow_all",
            "negativePrompt": "blurry",
        },  # no seed: the Gemini API refuses it
    }


async def test_vertex_submit_path_bearer_and_vertex_only_parameters() -> None:
    """Vertex: project/location model path, Bearer token, seed, generateAudio and storageUri."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"name": VERTEX_OP})

    veo = VeoAdapter(
        provider(
            "vertex",
            options={
                "api": "vertex",
                "project": "proj",
                "generate_audio": True,
                "storage_uri": "gs://bucket/out/",
            },
        )
    )
    await call(handler, veo, video(seed=42, width=1920, height=1080), api_key="ya29.tenant")
    req = seen[0]
    assert str(req.url) == f"https://veo.test/v1/{VERTEX_RESOURCE}:predictLongRunning"
    assert req.headers["authorization"] == "Bearer ya29.tenant"
    assert "x-goog-api-key" not in req.headers
    params = msgspec.json.decode(req.content)["parameters"]
    assert params == {
        "aspectRatio": "16:9",
        "durationSeconds": 8,
        "resolution": "1080p",
        "sampleCount": 1,
        "personGeneration": "allow_all",
        "seed": 42,
        "generateAudio": True,
        "storageUri": "gs://bucket/out/",
    }


@pytest.mark.parametrize(
    ("fields", "aspect", "resolution"),
    [
        ({}, "16:9", "720p"),
        ({"width": 1280, "height": 720}, "16:9", "720p"),
        ({"width": 720, "height": 1280}, "9:16", "720p"),
        ({"width": 1080, "height": 1920}, "9:16", "1080p"),
        ({"aspect_ratio": "9:16"}, "9:16", "720p"),
    ],
)
async def test_shape_maps_to_aspect_ratio_and_resolution(
    fields: dict[str, Any], aspect: str, resolution: str
) -> None:
    """Width/height or aspect_ratio pick Veo's aspectRatio and 720p/1080p resolution."""
    spec = adapter().spec(video(**fields))
    assert (spec.aspect_ratio, spec.resolution) == (aspect, resolution)


async def test_input_image_data_url_is_inlined_with_adult_person_generation() -> None:
    """A data: URL becomes image.bytesBase64Encoded; image-to-video uses allow_adult."""
    seen: list[dict[str, Any]] = []
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nxx").decode()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(msgspec.json.decode(request.content))
        return httpx.Response(200, json={"name": GEMINI_OP})

    await call(handler, adapter(), video(input_image_url=f"data:image/png;base64,{png}"))
    assert seen[0]["instances"][0]["image"] == {"bytesBase64Encoded": png, "mimeType": "image/png"}
    assert seen[0]["parameters"]["personGeneration"] == "allow_adult"


async def test_input_image_url_is_fetched_and_a_bad_one_is_the_callers_fault() -> None:
    """An http(s) image is downloaded and inlined; a 404 there is invalid_request."""
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "img.test":
            if request.url.path == "/missing.png":
                return httpx.Response(404)
            return httpx.Response(200, content=b"JPEGDATA", headers={"content-type": "image/jpeg"})
        bodies.append(msgspec.json.decode(request.content))
        return httpx.Response(200, json={"name": GEMINI_OP})

    await call(handler, adapter(), video(input_image_url="https://img.test/a.jpg"))
    assert bodies[0]["instances"][0]["image"] == {
        "bytesBase64Encoded": base64.b64encode(b"JPEGDATA").decode(),
        "mimeType": "image/jpeg",
    }
    with pytest.raises(UpstreamError) as info:
        await call(handler, adapter(), video(input_image_url="https://img.test/missing.png"))
    assert info.value.kind == "invalid_request"


async def test_vertex_gcs_input_image_is_passed_by_uri() -> None:
    """On Vertex a gs:// image goes as image.gcsUri, not downloaded."""
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(msgspec.json.decode(request.content))
        return httpx.Response(200, json={"name": VERTEX_OP})

    await call(handler, adapter("vertex"), video(input_image_url="gs://b/cat.png"))
    assert seen[0]["instances"][0]["image"] == {"gcsUri": "gs://b/cat.png", "mimeType": "image/png"}


@pytest.mark.parametrize(
    ("api", "fields", "reason"),
    [
        ("gemini", {"kind": "image"}, "videos only"),
        ("gemini", {"duration_s": 5}, "4, 6, 8 seconds"),
        ("gemini", {"duration_s": 10}, "4, 6, 8 seconds"),
        ("gemini", {"duration_s": 6.5}, "4, 6, 8 seconds"),
        ("gemini", {"model": "veo-2.0-generate-001", "duration_s": 4}, "5, 6, 8 seconds"),
        ("gemini", {"aspect_ratio": "1:1"}, "16:9 or 9:16"),
        ("gemini", {"width": 1024, "height": 1024}, "16:9 or 9:16"),
        ("gemini", {"width": 3840, "height": 2160}, "at most 1080p"),
        ("gemini", {"width": 1920, "height": 1080, "duration_s": 6}, "1080p at 8 seconds"),
        ("gemini", {"model": "veo-2.0-generate-001", "width": 1920, "height": 1080}, "720p"),
        ("gemini", {"n": 5}, "at most 4"),
        ("gemini", {"fps": 30}, "24 fps"),
        ("gemini", {"model": "kling-v2"}, "not a Veo model"),
        ("gemini", {"input_image_url": "gs://b/a.png"}, "input image"),
        ("vertex", {"input_image_url": "ftp://x/a.png"}, "input image"),
    ],
)
def test_supports_refuses_what_veo_cannot_do(api: str, fields: dict[str, Any], reason: str) -> None:
    """Durations per model, ratios, resolutions, sample counts and image schemes are checked."""
    kinds = ["video", "image"] if fields.get("kind") == "image" else ["video"]
    request = GenerationRequest(**({"kind": "video", "prompt": "p"} | fields))
    got = adapter(api, kinds=kinds).supports(request)
    assert got is not None
    assert reason in got


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"duration_s": 4},
        {"model": "veo-2.0-generate-001", "duration_s": 5},
        {"width": 1920, "height": 1080, "duration_s": 8},
        {"aspect_ratio": "9:16", "n": 4, "fps": 24},
    ],
)
def test_supports_accepts_what_veo_does(fields: dict[str, Any]) -> None:
    """Valid combinations are accepted."""
    assert adapter().supports(video(**fields)) is None


def test_capabilities_narrow_what_is_accepted() -> None:
    """Configured capabilities (max_n, max_duration_s, ratios) further restrict supports()."""
    caps = CapabilitiesConfig(max_n=1, max_duration_s=6, aspect_ratios=["16:9"])
    veo = adapter(capabilities=caps)
    assert veo.supports(video(n=2)) is not None
    assert veo.supports(video(duration_s=8)) is not None
    assert veo.supports(video(duration_s=6, aspect_ratio="9:16")) is not None
    assert veo.supports(video(duration_s=6)) is None


def test_options_are_validated() -> None:
    """An unknown flavour, an unknown option or Vertex without a project is a ConfigError."""
    for options, field in (
        ({"api": "bard"}, "providers.veo.options"),
        ({"typo": 1}, "providers.veo.options"),
        ({"api": "vertex"}, "providers.veo.options.project"),
    ):
        with pytest.raises(ConfigError) as info:
            build_adapter(provider(options=options))
        assert info.value.errors[0].startswith(field)


def test_estimate_cost_is_per_video_second() -> None:
    """Cost is per_video_s_usd × duration (default 8 s) × n."""
    veo = adapter()
    assert veo.estimate_cost(video(duration_s=6, n=2)) == pytest.approx(0.4 * 6 * 2)
    assert veo.estimate_cost(video()) == pytest.approx(0.4 * 8)


# -- polling and results ---------------------------------------------------------------------


async def test_gemini_poll_path_and_running_states() -> None:
    """Gemini polls GET /v1beta/{name}; a missing or false ``done`` is running."""
    seen: list[httpx.Request] = []
    answers = iter([{"name": GEMINI_OP}, {"name": GEMINI_OP, "done": False}])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=next(answers))

    veo = adapter()
    for _ in range(2):
        result = await call(handler, veo, poll_id=GEMINI_OP)
        assert isinstance(result, PollResult)
        assert result.status == "running"
    assert seen[0].method == "GET"
    assert str(seen[0].url) == f"https://veo.test/v1beta/{GEMINI_OP}"
    assert seen[0].headers["x-goog-api-key"] == "AIza-config"


async def test_vertex_poll_posts_fetch_predict_operation_on_the_operations_model() -> None:
    """Vertex polls POST {model}:fetchPredictOperation with the full operationName."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"name": VERTEX_OP, "done": False})

    result = await call(handler, adapter("vertex"), poll_id=VERTEX_OP)
    assert isinstance(result, PollResult)
    assert result.status == "running"
    req = seen[0]
    assert req.method == "POST"
    assert str(req.url) == f"https://veo.test/v1/{VERTEX_RESOURCE}:fetchPredictOperation"
    assert msgspec.json.decode(req.content) == {"operationName": VERTEX_OP}
    assert req.headers["authorization"] == "Bearer AIza-config"


async def test_gemini_success_returns_file_uris_with_size_and_cost() -> None:
    """Each generated sample's video.uri is an output; cost = samples × seconds × rate."""
    uri = "https://veo.test/v1beta/files/abc:download?alt=media"
    veo = adapter()

    def submit_handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"name": GEMINI_OP})

    await call(submit_handler, veo, video(duration_s=6, n=2, aspect_ratio="9:16"))
    samples = [{"video": {"uri": uri}}, {"video": {"uri": uri + "&b"}}]
    result = await call(respond(200, done_gemini(samples)), veo, poll_id=GEMINI_OP)
    assert isinstance(result, PollResult)
    assert result.status == "succeeded"
    assert [o.url for o in result.outputs] == [uri, uri + "&b"]
    first = result.outputs[0]
    assert (first.content_type, first.width, first.height, first.duration_s) == (
        "video/mp4",
        720,
        1280,
        6.0,
    )
    assert result.cost_usd == pytest.approx(0.4 * 6 * 2)


async def test_vertex_success_with_inline_bytes_and_gcs_uris() -> None:
    """Vertex videos[] give gcsUri outputs or data: URLs from bytesBase64Encoded."""
    b64 = base64.b64encode(b"\x00\x00\x00\x1cftypisom").decode()
    videos = [
        {"gcsUri": "gs://b/op1/sample_0.mp4", "mimeType": "video/mp4"},
        {"bytesBase64Encoded": b64, "mimeType": "video/mp4"},
    ]
    result = await call(respond(200, done_vertex(videos)), adapter("vertex"), poll_id=VERTEX_OP)
    assert isinstance(result, PollResult)
    assert result.status == "succeeded"
    assert result.outputs[0].url == "gs://b/op1/sample_0.mp4"
    assert result.outputs[1].url == f"data:video/mp4;base64,{b64}"
    # Unknown operation (e.g. after a restart): Veo's default 8 s is priced.
    assert result.cost_usd == pytest.approx(0.4 * 8 * 2)


@pytest.mark.parametrize("api", ["gemini", "vertex"])
async def test_rai_filtered_with_no_videos_is_content_policy(api: str) -> None:
    """``raiMediaFilteredCount > 0`` and no samples fails the job as content_policy."""
    body = done_gemini([], filtered=1) if api == "gemini" else done_vertex([], filtered=1)
    op = GEMINI_OP if api == "gemini" else VERTEX_OP
    result = await call(respond(200, body), adapter(api), poll_id=op)
    assert isinstance(result, PollResult)
    assert (result.status, result.error_kind) == ("failed", "content_policy")
    assert "safety" in (result.error_message or "")


async def test_partially_filtered_result_keeps_the_surviving_videos() -> None:
    """Some samples filtered, some kept: the job succeeds with what survived."""
    body = done_gemini([{"video": {"uri": "https://veo.test/f:download"}}], filtered=1)
    result = await call(respond(200, body), adapter(), poll_id=GEMINI_OP)
    assert isinstance(result, PollResult)
    assert result.status == "succeeded"
    assert len(result.outputs) == 1


async def test_done_without_videos_or_filtering_is_malformed() -> None:
    """A finished operation with nothing in it is a malformed response (fail over)."""
    result = await call(respond(200, done_gemini([])), adapter(), poll_id=GEMINI_OP)
    assert isinstance(result, PollResult)
    assert (result.status, result.error_kind) == ("failed", "malformed_response")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (14, "upstream_unavailable"),
        (13, "upstream_unavailable"),
        (3, "invalid_request"),
        (8, "rate_limited"),
        (4, "timeout"),
        (7, "auth"),
        (5, "not_found"),
        (99, "upstream_unavailable"),
    ],
)
@pytest.mark.parametrize("api", ["gemini", "vertex"])
async def test_operation_error_codes(api: str, code: int, kind: str) -> None:
    """``done: true`` with ``error.code`` maps the google.rpc.Code (14 → retryable)."""
    op = GEMINI_OP if api == "gemini" else VERTEX_OP
    body = {"name": op, "done": True, "error": {"code": code, "message": "boom"}}
    result = await call(respond(200, body), adapter(api), poll_id=op)
    assert isinstance(result, PollResult)
    assert (result.status, result.error_kind) == ("failed", kind)
    assert grpc_kind(code) == kind


# -- HTTP errors (§8, Veo row) ---------------------------------------------------------------

RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31s"}


@pytest.mark.parametrize(
    ("status", "body", "kind", "retry_after"),
    [
        (500, google_error(500, "INTERNAL"), "upstream_unavailable", None),
        (503, google_error(503, "UNAVAILABLE"), "upstream_unavailable", None),
        (429, google_error(429, "RESOURCE_EXHAUSTED", details=[RETRY_INFO]), "rate_limited", 31.0),
        (400, google_error(400, "INVALID_ARGUMENT"), "invalid_request", None),
        (401, google_error(401, "UNAUTHENTICATED"), "auth", None),
        (403, google_error(403, "PERMISSION_DENIED"), "auth", None),
        (404, google_error(404, "NOT_FOUND"), "not_found", None),
        (
            400,
            google_error(
                400,
                "INVALID_ARGUMENT",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                    }
                ],
            ),
            "auth",
            None,
        ),
        (502, {"oops": True}, "upstream_unavailable", None),
        (409, google_error(409, "ABORTED"), "upstream_unavailable", None),
    ],
)
@pytest.mark.parametrize("api", ["gemini", "vertex"])
@pytest.mark.parametrize("phase", ["submit", "poll"])
async def test_http_errors_are_classified(
    api: str,
    phase: str,
    status: int,
    body: dict[str, Any],
    kind: str,
    retry_after: float | None,
) -> None:
    """Each native HTTP error of the Veo row maps to its kind, on submit and on poll alike."""
    op = GEMINI_OP if api == "gemini" else VERTEX_OP
    with pytest.raises(UpstreamError) as info:
        await call(respond(status, body), adapter(api), poll_id=op if phase == "poll" else None)
    exc = info.value
    assert (exc.kind, exc.http_status, exc.retry_after_s) == (kind, status, retry_after)
    assert exc.provider == "veo"
    if phase == "poll":
        assert exc.upstream_id == op


async def test_auth_errors_do_not_echo_the_message() -> None:
    """An auth failure's message (which may quote the key) is not kept."""
    body = {
        "error": {"code": 403, "message": "key AIza-secret denied", "status": "PERMISSION_DENIED"}
    }
    with pytest.raises(UpstreamError) as info:
        await call(respond(403, body), adapter())
    assert "AIza-secret" not in info.value.message


async def test_transport_errors_and_malformed_bodies() -> None:
    """Timeouts → timeout; refused connections → upstream_unavailable; junk → malformed."""

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    for handler, kind in (
        (timeout, "timeout"),
        (refused, "upstream_unavailable"),
        (lambda _r: httpx.Response(200, content=b'{"name": '), "malformed_response"),
        (lambda _r: httpx.Response(200, json={"done": False}), "malformed_response"),
    ):
        with pytest.raises(UpstreamError) as info:
            await call(handler, adapter())
        assert info.value.kind == kind


def test_retry_delay_forms() -> None:
    """RetryInfo's retryDelay is read as ``"31s"``, ``"1.5s"`` or ``{"seconds": 2}``."""

    def body(delay: Any) -> bytes:
        detail = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
        return msgspec.json.encode({"error": {"code": 429, "details": [detail]}})

    assert retry_delay(body("31s")) == 31.0
    assert retry_delay(body("1.5s")) == 1.5
    assert retry_delay(body({"seconds": 2, "nanos": 500_000_000})) == 2.5
    assert retry_delay(b'{"error": {"code": 429}}') is None


async def test_no_key_is_auth_and_cancel_is_not_offered() -> None:
    """Without any key the attempt fails as auth before any call; cancel returns False."""
    veo = adapter(api_key=None)
    with pytest.raises(UpstreamError) as info:
        await call(respond(200, {"name": GEMINI_OP}), veo)
    assert info.value.kind == "auth"
    async with httpx.AsyncClient() as client:
        ctx = AttemptContext(client=client, job_id="j", attempt_id="a", deadline=0.0)
        assert await veo.cancel(GEMINI_OP, ctx) is False
    assert veo.verify_webhook({}, b"{}", 0.0) is False
    assert veo.parse_webhook({}, b"{}") is None


@pytest.mark.parametrize(
    ("api", "url"),
    [
        ("gemini", "https://veo.test/v1beta/models/veo-3.1-generate-preview"),
        ("vertex", "https://veo.test/v1beta1/publishers/google/models/veo-3.1-generate-preview"),
    ],
)
async def test_probe_gets_the_model(api: str, url: str) -> None:
    """probe() GETs the model resource; 200 is ok, a 403 is reported as auth."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"name": "m"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        assert (await adapter(api).probe(client, None)).ok
    assert seen == [url]
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(respond(403, google_error(403, "PERMISSION_DENIED")))
    ) as client:
        result = await adapter(api).probe(client, None)
    assert not result.ok
    assert "auth" in result.detail


def test_output_headers_send_the_gemini_key_only_to_its_own_origin() -> None:
    """Gemini file URIs get x-goog-api-key; other hosts and Vertex get no credential."""
    gemini = adapter()
    own = "https://veo.test/v1beta/files/abc:download?alt=media"
    assert gemini.output_headers(own, None) == {"x-goog-api-key": "AIza-config"}
    assert gemini.output_headers(own, "AIza-tenant") == {"x-goog-api-key": "AIza-tenant"}
    assert gemini.output_headers("https://veo.test.evil.example/f", None) == {}
    assert gemini.output_headers("https://cdn.example/f.mp4", None) == {}
    assert adapter("vertex").output_headers(own, None) == {}


# -- Vertex with a service account -----------------------------------------------------------

TOKEN_URI = "https://oauth2.test/token"


def vertex_with_account(**options: Any) -> VeoAdapter:
    fields = {"api": "vertex", "project": "proj", "service_account_json": key_file(TOKEN_URI)}
    return adapter("vertex", options=fields | options)


def token_then_operation(seen: list[httpx.Request]) -> Handler:
    """Google's token endpoint at TOKEN_URI, Vertex everywhere else."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if str(request.url) == TOKEN_URI:
            return httpx.Response(200, json={"access_token": "ya29.minted", "expires_in": 3599})
        return httpx.Response(200, json={"name": VERTEX_OP})

    return handler


async def test_vertex_with_a_service_account_sends_a_minted_token() -> None:
    """The platform credential is a token from the account's token_uri, fetched once."""
    seen: list[httpx.Request] = []
    veo = vertex_with_account()
    await call(token_then_operation(seen), veo, api_key="AIza-config")
    await call(token_then_operation(seen), veo, api_key="AIza-config")
    assert [str(r.url) for r in seen] == [
        TOKEN_URI,
        f"https://veo.test/v1/{VERTEX_RESOURCE}:predictLongRunning",
        f"https://veo.test/v1/{VERTEX_RESOURCE}:predictLongRunning",
    ]
    assert {r.headers["authorization"] for r in seen[1:]} == {"Bearer ya29.minted"}


async def test_a_minted_token_vertex_refuses_is_replaced_on_the_next_call() -> None:
    """A 401 from Vertex (a revoked token, say) fails that call and drops the token."""
    seen: list[httpx.Request] = []
    minted = iter(["ya29.revoked", "ya29.fresh"])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if str(request.url) == TOKEN_URI:
            return httpx.Response(200, json={"access_token": next(minted), "expires_in": 3599})
        if request.headers["authorization"] == "Bearer ya29.revoked":
            return httpx.Response(401, json={"error": {"code": 401, "status": "UNAUTHENTICATED"}})
        return httpx.Response(200, json={"name": VERTEX_OP})

    veo = vertex_with_account()
    with pytest.raises(UpstreamError) as info:
        await call(handler, veo, api_key="AIza-config")
    assert info.value.kind == "auth"
    await call(handler, veo, api_key="AIza-config")
    assert [r.headers.get("authorization") for r in seen if str(r.url) != TOKEN_URI] == [
        "Bearer ya29.revoked",
        "Bearer ya29.fresh",
    ]
    assert sum(str(r.url) == TOKEN_URI for r in seen) == 2


async def test_a_tenants_own_credential_is_still_a_static_bearer() -> None:
    """A tenant's key (not the platform's) goes as-is: no token is minted for it."""
    seen: list[httpx.Request] = []
    await call(token_then_operation(seen), vertex_with_account(), api_key="ya29.tenant")
    assert [r.headers["authorization"] for r in seen] == ["Bearer ya29.tenant"]


async def test_a_refused_service_account_is_an_auth_error() -> None:
    """A 401 from the token endpoint fails the submission with kind auth, before Vertex."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401, json={"error": "invalid_client"})

    with pytest.raises(UpstreamError) as info:
        await call(handler, vertex_with_account(), api_key="AIza-config")
    assert (info.value.kind, info.value.http_status) == ("auth", 401)
    assert [str(r.url) for r in seen] == [TOKEN_URI]


async def test_probe_with_a_service_account_reports_a_token_failure() -> None:
    """probe() mints a token too; a refusal is reported, not raised."""
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(respond(403, {"error": "access_denied"}))
    ) as client:
        result = await vertex_with_account().probe(client, None)
    assert not result.ok
    assert result.detail == "token endpoint 403 access_denied"


def test_the_key_file_can_be_a_path(tmp_path: Path) -> None:
    """service_account_file is read at construction."""
    path = tmp_path / "sa.json"
    path.write_text(key_file(TOKEN_URI))
    options = {"api": "vertex", "project": "proj", "service_account_file": str(path)}
    assert VeoAdapter(provider("vertex", options=options)) is not None


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (
            {"service_account_file": "/nonexistent/sa.json"},
            "providers.veo.options.service_account_file: cannot read /nonexistent/sa.json: ",
        ),
        (
            {"service_account_json": "{}"},
            "providers.veo.options.service_account_json: not a service-account key file: ",
        ),
        (
            {"service_account_json": key_file(TOKEN_URI), "service_account_file": "/sa.json"},
            "providers.veo.options.service_account_file: set it or service_account_json",
        ),
        (
            {"api": "gemini", "service_account_json": key_file(TOKEN_URI)},
            "providers.veo.options.service_account_json: only used when options.api is vertex",
        ),
        (
            {"service_account_json": key_file(TOKEN_URI).replace("BEGIN", "BEGAN")},
            "providers.veo.options.service_account_json: private_key is not",
        ),
    ],
)
def test_a_bad_service_account_stops_startup_with_its_field_path(
    options: dict[str, Any], error: str
) -> None:
    """Each problem names the option's full path; none quotes the private key."""
    with pytest.raises(ConfigError) as info:
        build_adapter(provider("vertex", options={"api": "vertex", "project": "proj"} | options))
    (message,) = info.value.errors
    assert message.startswith(error)
    assert pem(rsa_key())[40:80] not in message


def test_options_repr_hides_an_inline_key_file() -> None:
    """VeoOptions' repr shows the other options but not the key file's JSON."""
    options = VeoOptions(api="vertex", project="proj", service_account_json=key_file(TOKEN_URI))
    text = repr(options)
    assert "project='proj'" in text
    assert "service_account_json='***'" in text
    assert "PRIVATE KEY" not in text
