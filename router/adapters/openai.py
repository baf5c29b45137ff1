"""The ``openai`` adapter: OpenAI's Images API, a synchronous provider (contracts §3).

``submit`` makes one ``POST {base}/v1/images/generations`` and returns the images,
so there is nothing to poll or cancel and no webhook. Errors are classified
from one table (contracts §8); every failure, transport errors included, leaves
as :class:`~router.errors.UpstreamError`.

``base_url`` may be given with or without the ``/v1`` suffix
(``https://api.openai.com/v1`` or an emulator's ``http://127.0.0.1:PORT``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import httpx
import msgspec

from breakers.clock import Clock, SystemClock
from router.adapters.base import (
    AttemptContext,
    PollResult,
    ProbeResult,
    SubmitResult,
    WebhookEvent,
)
from router.adapters.http_util import (
    error_fields,
    parse_rate_limit,
    parse_retry_after,
    transport_error,
)
from router.config import ProviderConfig
from router.errors import ErrorKind, UpstreamError
from router.models import GenerationRequest, Output

__all__ = ["OpenAIAdapter", "choose_size"]

DEFAULT_MODEL: Final = "dall-e-3"
_DALLE_SIZES: Final[dict[str, tuple[tuple[int, int], ...]]] = {
    "dall-e-2": ((256, 256), (512, 512), (1024, 1024)),
    "dall-e-3": ((1024, 1024), (1792, 1024), (1024, 1792)),
}
_GPT_SIZES: Final = ((1024, 1024), (1536, 1024), (1024, 1536))
_GPT_MODELS: Final = frozenset({"gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2"})
_MODELS: Final = frozenset(_DALLE_SIZES) | _GPT_MODELS
_MAX_N: Final = {"dall-e-3": 1}

#: Caller vocabulary → each model family's ``quality`` values.
_DALLE3_QUALITY: Final = {"hd": "hd", "high": "hd", "best": "hd", "ultra": "hd"}
_GPT_QUALITY: Final = {
    "low": "low",
    "draft": "low",
    "fast": "low",
    "standard": "medium",
    "medium": "medium",
    "high": "high",
    "hd": "high",
    "best": "high",
    "ultra": "high",
    "auto": "auto",
}

#: Error ``code``s that decide the kind whatever the (4xx) status says.
_CODE_KINDS: Final[dict[str, ErrorKind]] = {
    "insufficient_quota": "auth",  # permanent until billing changes: never wait it out
    "content_policy_violation": "content_policy",
    "moderation_blocked": "content_policy",
}
_STATUS_KINDS: Final[dict[int, ErrorKind]] = {
    400: "invalid_request",
    401: "auth",
    403: "auth",
    404: "not_found",
    408: "upstream_unavailable",
    409: "upstream_unavailable",
    422: "invalid_request",
    429: "rate_limited",
}


class _Datum(msgspec.Struct):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class _ImagesResponse(msgspec.Struct):
    created: int
    data: list[_Datum]


_decode_images = msgspec.json.Decoder(_ImagesResponse).decode


def _sizes(model: str) -> tuple[tuple[int, int], ...]:
    return _DALLE_SIZES.get(model, _GPT_SIZES)


def _target_ratio(request: GenerationRequest) -> float | None:
    if request.width and request.height:
        return request.width / request.height
    if request.aspect_ratio:
        w, h = request.aspect_ratio.split(":")
        return int(w) / int(h)
    return None


def choose_size(model: str, request: GenerationRequest) -> tuple[int, int]:
    """The model's allowed size closest in shape, then in area, to what was asked.

    ``gpt-image-2`` takes any W×H in multiples of 16, so an exact request is kept.
    """
    w, h = request.width, request.height
    if model == "gpt-image-2" and w and h and w % 16 == 0 and h % 16 == 0 and max(w, h) <= 3840:
        return w, h
    ratio = _target_ratio(request)
    area = (w or 0) * (h or 0) or None
    if ratio is None and area is None:
        return 1024, 1024

    def distance(size: tuple[int, int]) -> tuple[float, float]:
        shape = abs(math.log(size[0] / size[1]) - math.log(ratio)) if ratio else 0.0
        scale = abs(math.log(size[0] * size[1] / area)) if area else 0.0
        return round(shape, 6), scale

    return min(_sizes(model), key=distance)


class OpenAIAdapter:
    """OpenAI Images (``dall-e-2``, ``dall-e-3``, ``gpt-image-*``) behind the Adapter protocol."""

    def __init__(self, config: ProviderConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self._clock: Clock = clock or SystemClock()
        root = config.base_url.rstrip("/")
        self._root = root if root.endswith("/v1") else f"{root}/v1"
        # Parsed once: httpx re-parses a str URL on every request.
        self._generations_url = httpx.URL(f"{self._root}/images/generations")
        self._timeout = httpx.Timeout(config.timeouts.request_s, connect=config.timeouts.connect_s)

    # -- selection --------------------------------------------------------------------

    def _model(self, request: GenerationRequest) -> str:
        if request.model is not None:
            return request.model
        return self.config.models.get("image", DEFAULT_MODEL)

    def supports(self, request: GenerationRequest) -> str | None:
        if request.kind != "image" or "image" not in self.config.kinds:
            return f"{self.config.name} serves images only"
        model = self._model(request)
        if model not in _MODELS:
            return f"model {model!r} is not an OpenAI image model"
        if request.input_image_url is not None:
            return "image inputs are not supported by /images/generations"
        caps = self.config.capabilities
        max_n = min(caps.max_n or 10, _MAX_N.get(model, 10))
        if request.n > max_n:
            return f"{model} generates at most {max_n} image(s) per request"
        sizes = _sizes(model)
        limit = 3840 if model == "gpt-image-2" else max(max(s) for s in sizes)
        max_w = min(caps.max_width or limit, limit)
        max_h = min(caps.max_height or limit, limit)
        if (request.width or 0) > max_w or (request.height or 0) > max_h:
            return f"{request.width}x{request.height} exceeds {max_w}x{max_h}"
        if (
            request.aspect_ratio is not None
            and caps.aspect_ratios is not None
            and request.aspect_ratio not in caps.aspect_ratios
        ):
            return f"aspect ratio {request.aspect_ratio} not offered"
        return None

    def estimate_cost(self, request: GenerationRequest) -> float:
        return self.config.cost.per_image_usd * request.n

    def build_body(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON body OpenAI expects for ``request``."""
        model = self._model(request)
        width, height = choose_size(model, request)
        body: dict[str, Any] = {
            "model": model,
            "prompt": request.prompt,
            "n": request.n,
            "size": f"{width}x{height}",
        }
        quality = (request.quality or "").lower() or None
        if model in _GPT_MODELS:
            gpt_quality = _GPT_QUALITY.get(quality or "")
            if gpt_quality is not None:
                body["quality"] = gpt_quality
            body["output_format"] = "png"
            return body
        if model == "dall-e-3":
            if quality is not None:
                body["quality"] = _DALLE3_QUALITY.get(quality, "standard")
            if request.style in ("vivid", "natural"):
                body["style"] = request.style
        body["response_format"] = "url"
        return body

    # -- calls ------------------------------------------------------------------------

    def _headers(self, api_key: str | None, ctx: AttemptContext | None) -> dict[str, str]:
        key = api_key or self.config.api_key
        if not key:
            raise UpstreamError("auth", "no API key configured", provider=self.config.name)
        headers = {"Authorization": f"Bearer {key}"}
        if ctx is not None:
            headers.update(ctx.trace_headers)
            headers["X-Client-Request-Id"] = ctx.attempt_id
        return headers

    async def submit(self, request: GenerationRequest, ctx: AttemptContext) -> SubmitResult:
        body = self.build_body(request)
        headers = self._headers(ctx.api_key, ctx)
        try:
            response = await ctx.client.post(
                self._generations_url,
                content=msgspec.json.encode(body),
                headers=headers | {"Content-Type": "application/json"},
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise self._transport_error("timeout", exc) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error("upstream_unavailable", exc) from exc
        if response.status_code != 200:
            raise self._status_error(response)
        rate_limit = parse_rate_limit(response.headers)
        try:
            parsed = _decode_images(response.content)
        except msgspec.DecodeError as exc:
            raise UpstreamError(
                "malformed_response",
                f"unparseable images response: {exc}",
                provider=self.config.name,
                http_status=200,
            ) from exc
        size = body["size"].split("x")
        width, height = int(size[0]), int(size[1])
        outputs = tuple(self._output(d, width, height) for d in parsed.data)
        if not outputs:
            raise UpstreamError(
                "malformed_response",
                "images response has no data",
                provider=self.config.name,
                http_status=200,
            )
        return SubmitResult(
            status="succeeded",
            upstream_id=response.headers.get("x-request-id"),
            outputs=outputs,
            progress=100,
            cost_usd=self.config.cost.per_image_usd * len(outputs),
            rate_limit=rate_limit,
        )

    def _output(self, datum: _Datum, width: int, height: int) -> Output:
        if datum.url:
            return Output(url=datum.url, content_type="image/png", width=width, height=height)
        if datum.b64_json:
            b64 = datum.b64_json
            size = len(b64) * 3 // 4 - b64[-2:].count("=")
            return Output(
                url=f"data:image/png;base64,{b64}",
                content_type="image/png",
                width=width,
                height=height,
                bytes=size,
            )
        raise UpstreamError(
            "malformed_response",
            "image datum has neither url nor b64_json",
            provider=self.config.name,
            http_status=200,
        )

    def _transport_error(self, kind: ErrorKind, exc: Exception) -> UpstreamError:
        return transport_error(self.config.name, kind, exc)

    def _status_error(self, response: httpx.Response) -> UpstreamError:
        status = response.status_code
        body = response.content
        kind = self.classify(status, body, response.headers)
        code, _type, message = error_fields(body)
        # An auth error's message can echo part of the key: keep only the code.
        text = f"openai {status} {code or ''}".rstrip()
        if kind != "auth" and message:
            text = f"{text}: {message[:300]}"
        return UpstreamError(
            kind,
            text,
            provider=self.config.name,
            http_status=status,
            retry_after_s=parse_retry_after(response.headers, self._clock.time()),
        )

    def classify(self, status: int | None, body: bytes, headers: Mapping[str, str]) -> ErrorKind:
        if status is None:
            return "upstream_unavailable"
        if 400 <= status < 500:
            code, type_, _message = error_fields(body)
            if code in _CODE_KINDS:
                return _CODE_KINDS[code]
            if type_ == "image_generation_user_error" and status == 400:
                return "content_policy"
        if status in _STATUS_KINDS:
            return _STATUS_KINDS[status]
        if status >= 500:
            return "upstream_unavailable"
        if status >= 400:
            return "invalid_request"
        return "malformed_response"

    async def poll(self, upstream_id: str, ctx: AttemptContext) -> PollResult:
        """Never needed: images finish in :meth:`submit`."""
        raise UpstreamError(
            "not_found",
            "openai images are synchronous; there is nothing to poll",
            provider=self.config.name,
            upstream_id=upstream_id,
        )

    async def cancel(self, upstream_id: str, ctx: AttemptContext) -> bool:
        """OpenAI has no cancel for image generations."""
        return False

    async def probe(self, client: httpx.AsyncClient, api_key: str | None) -> ProbeResult:
        """``GET /v1/models``: proves the key and the network path without generating."""
        start = self._clock.monotonic()
        try:
            headers = self._headers(api_key, None)
            response = await client.get(
                f"{self._root}/models", headers=headers, timeout=self._timeout
            )
        except UpstreamError as exc:
            return ProbeResult(ok=False, latency_s=0.0, detail=exc.message)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return ProbeResult(
                ok=False, latency_s=self._clock.monotonic() - start, detail=type(exc).__name__
            )
        latency = self._clock.monotonic() - start
        if response.status_code == 200:
            return ProbeResult(ok=True, latency_s=latency, detail="200")
        kind = self.classify(response.status_code, response.content, response.headers)
        return ProbeResult(ok=False, latency_s=latency, detail=f"{response.status_code} {kind}")

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, now: float) -> bool:
        """OpenAI images send no webhooks, so none is ever valid."""
        return False

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """OpenAI images send no webhooks."""
        return None


#: The class :func:`router.adapters.registry.build_adapter` constructs for ``adapter: openai``.
ADAPTER = OpenAIAdapter
