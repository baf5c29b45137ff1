"""The ``stability`` adapter: Stability AI REST v2beta (provider-contracts §4).

Images are synchronous: one multipart ``POST /v2beta/stable-image/generate/{ultra,core,sd3}``
with ``Accept: image/*`` returns the PNG's bytes, which become a ``data:image/png;base64``
output URL until Switchman stores assets itself. A ``finish-reason: CONTENT_FILTERED``
answer is still a 200 (with a blurred image), so it is checked before anything else.

Image-to-video is asynchronous: ``POST /v2beta/image-to-video`` returns an id and
``GET /v2beta/image-to-video/result/{id}`` answers 202 while running and 200 with the
MP4's bytes when done. Stability offers no cancel and no webhooks.

The provider locks a key out for 60 s after 150 requests in 10 s and sends no
``Retry-After``, so a 429 without one is reported as a 60 s wait.

Input images (image-to-video requires one) are fetched from ``input_image_url`` by
this adapter and uploaded, because the API takes files, not URLs. A caller's image
that cannot be fetched is the caller's problem (``invalid_request``), never charged
to the provider.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import unquote_to_bytes

import httpx

from breakers.clock import Clock, SystemClock
from router.adapters.base import (
    AttemptContext,
    PollResult,
    ProbeResult,
    SubmitResult,
    WebhookEvent,
)
from router.adapters.http_util import fetch_input, parse_retry_after, safe_json, transport_error
from router.config import ProviderConfig
from router.errors import CALLER_KINDS, ErrorKind, UpstreamError
from router.models import GenerationRequest, Output

__all__ = [
    "ASPECT_RATIOS",
    "I2V_DURATION_S",
    "LOCKOUT_S",
    "StabilityAdapter",
    "choose_aspect_ratio",
]

DEFAULT_IMAGE_MODEL: Final = "core"
DEFAULT_VIDEO_MODEL: Final = "stable-video-diffusion"
ASPECT_RATIOS: Final = ("21:9", "16:9", "3:2", "5:4", "1:1", "4:5", "2:3", "9:16", "9:21")
#: sd3-family models share one endpoint and are named in its ``model`` field.
SD3_MODELS: Final = frozenset(
    {
        "sd3.5-large",
        "sd3.5-large-turbo",
        "sd3.5-medium",
        "sd3-large",
        "sd3-large-turbo",
        "sd3-medium",
    }
)
_ALIASES: Final = {"stable-image-ultra": "ultra", "stable-image-core": "core"}
_IMAGE_MODELS: Final = frozenset({"ultra", "core"}) | SD3_MODELS
_VIDEO_MODELS: Final = frozenset({"stable-video-diffusion", "svd", "svd-xt"})
#: The input sizes image-to-video accepts (the output has the same size).
VIDEO_SIZES: Final = ((1024, 576), (576, 1024), (768, 768))
_VIDEO_RATIOS: Final = {"16:9": (1024, 576), "9:16": (576, 1024), "1:1": (768, 768)}
#: SVD-XT renders 25 frames; the contract gives no length, so ~4 s is assumed and billed.
I2V_DURATION_S: Final = 4.0
#: The lockout after a 429 (contracts §4: 150 requests in 10 s, then 60 s).
LOCKOUT_S: Final = 60.0
_STYLE_PRESETS: Final = frozenset(
    {
        "3d-model",
        "analog-film",
        "anime",
        "cinematic",
        "comic-book",
        "digital-art",
        "enhance",
        "fantasy-art",
        "isometric",
        "line-art",
        "low-poly",
        "modeling-compound",
        "neon-punk",
        "origami",
        "photographic",
        "pixel-art",
        "tile-texture",
    }
)
_MAX_UPLOAD: Final = 10 * 1024 * 1024  # the API refuses bodies over 10 MiB (413)
_PROBE_ID: Final = "0" * 64

#: Error ``name``s that decide the kind whatever the status says.
_NAME_KINDS: Final[dict[str, ErrorKind]] = {"content_moderation": "content_policy"}
_STATUS_KINDS: Final[dict[int, ErrorKind]] = {
    400: "invalid_request",
    401: "auth",
    402: "auth",  # out of credits: permanent until billing changes, never wait it out
    403: "auth",
    404: "not_found",
    413: "invalid_request",
    422: "invalid_request",
    429: "rate_limited",
}


def _ratio_of(text: str) -> float:
    w, h = text.split(":")
    return int(w) / int(h)


def choose_aspect_ratio(request: GenerationRequest) -> str | None:
    """The ``aspect_ratio`` to send: the caller's when offered, else the nearest to W×H."""
    if request.aspect_ratio is not None:
        return request.aspect_ratio if request.aspect_ratio in ASPECT_RATIOS else None
    if request.width and request.height:
        target = math.log(request.width / request.height)
        return min(ASPECT_RATIOS, key=lambda r: abs(math.log(_ratio_of(r)) - target))
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR, or ``None`` when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


class StabilityAdapter:
    """Stability AI v2beta (Stable Image ultra/core/sd3, Stable Video Diffusion)."""

    def __init__(self, config: ProviderConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self._clock: Clock = clock or SystemClock()
        root = config.base_url.rstrip("/")
        self._root = root.removesuffix("/v2beta")
        self._timeout = httpx.Timeout(config.timeouts.request_s, connect=config.timeouts.connect_s)
        self._strength = float(config.options.get("image_strength", 0.5))

    # -- selection --------------------------------------------------------------------

    def _model(self, request: GenerationRequest) -> str:
        if request.model is not None:
            model = request.model
        elif request.kind == "video":
            model = self.config.models.get("video", DEFAULT_VIDEO_MODEL)
        else:
            model = self.config.models.get("image", DEFAULT_IMAGE_MODEL)
        return _ALIASES.get(model, model)

    def supports(self, request: GenerationRequest) -> str | None:
        if request.kind not in self.config.kinds:
            return f"{self.config.name} does not serve kind {request.kind!r}"
        if request.n > 1:
            return "stability returns one output per request"
        caps = self.config.capabilities
        if (
            request.aspect_ratio is not None
            and caps.aspect_ratios is not None
            and request.aspect_ratio not in caps.aspect_ratios
        ):
            return f"aspect ratio {request.aspect_ratio} not offered"
        if caps.max_width and (request.width or 0) > caps.max_width:
            return f"width {request.width} exceeds {caps.max_width}"
        if caps.max_height and (request.height or 0) > caps.max_height:
            return f"height {request.height} exceeds {caps.max_height}"
        model = self._model(request)
        if request.kind == "video":
            return self._supports_video(request, model)
        if model not in _IMAGE_MODELS:
            return f"model {model!r} is not a Stability image model"
        if request.input_image_url is not None and model == "core":
            return "stable-image core takes no input image"
        if request.aspect_ratio is not None and request.aspect_ratio not in ASPECT_RATIOS:
            return f"aspect ratio {request.aspect_ratio} not offered"
        return None

    def _supports_video(self, request: GenerationRequest, model: str) -> str | None:
        if model not in _VIDEO_MODELS:
            return f"model {model!r} is not a Stability video model"
        if request.input_image_url is None:
            return "stability video is image-to-video only: input_image_url is required"
        max_duration = min(I2V_DURATION_S, self.config.capabilities.max_duration_s or math.inf)
        if request.duration_s is not None and request.duration_s > max_duration:
            return f"stability videos last {I2V_DURATION_S:g} s"
        if request.aspect_ratio is not None and request.aspect_ratio not in _VIDEO_RATIOS:
            return f"aspect ratio {request.aspect_ratio} not offered for image-to-video"
        if request.width and request.height and (request.width, request.height) not in VIDEO_SIZES:
            return f"{request.width}x{request.height} is not an image-to-video size"
        return None

    def estimate_cost(self, request: GenerationRequest) -> float:
        if request.kind == "video":
            return self.config.cost.per_video_s_usd * I2V_DURATION_S * request.n
        return self.config.cost.per_image_usd * request.n

    def image_path(self, model: str) -> str:
        """The generate endpoint serving ``model``."""
        family = "sd3" if model in SD3_MODELS else model
        return f"/v2beta/stable-image/generate/{family}"

    def image_fields(self, request: GenerationRequest, *, with_image: bool) -> dict[str, str]:
        """The text fields of an image request (the ``image`` file part is added apart)."""
        model = self._model(request)
        fields: dict[str, str] = {"prompt": request.prompt, "output_format": "png"}
        if request.negative_prompt:
            fields["negative_prompt"] = request.negative_prompt
        if request.seed is not None:
            fields["seed"] = str(request.seed)
        if model == "core" and request.style in _STYLE_PRESETS:
            fields["style_preset"] = request.style
        if model in SD3_MODELS:
            fields["model"] = model
            fields["mode"] = "image-to-image" if with_image else "text-to-image"
        if with_image:
            fields["strength"] = f"{self._strength:g}"
        elif (ratio := choose_aspect_ratio(request)) is not None:
            fields["aspect_ratio"] = ratio
        return fields

    def video_fields(self, request: GenerationRequest) -> dict[str, str]:
        """The text fields of an image-to-video request (beside the ``image`` file)."""
        fields: dict[str, str] = {}
        if request.seed is not None:
            fields["seed"] = str(request.seed)
        if request.motion_intensity is not None:
            # Caller scale 1..10 onto Stability's motion_bucket_id 1..255.
            fields["motion_bucket_id"] = str(round(1 + (request.motion_intensity - 1) * 254 / 9))
        if "cfg_scale" in self.config.options:
            fields["cfg_scale"] = f"{float(self.config.options['cfg_scale']):g}"
        return fields

    # -- calls ------------------------------------------------------------------------

    def _headers(
        self, api_key: str | None, ctx: AttemptContext | None, accept: str
    ) -> dict[str, str]:
        key = api_key or self.config.api_key
        if not key:
            raise UpstreamError("auth", "no API key configured", provider=self.config.name)
        headers = {
            "authorization": f"Bearer {key}",
            "accept": accept,
            "stability-client-id": "switchman",
        }
        if ctx is not None:
            headers.update(ctx.trace_headers)
            headers["X-Client-Request-Id"] = ctx.attempt_id
        return headers

    async def _send(
        self,
        ctx_client: httpx.AsyncClient,
        method: str,
        path: str,
        headers: dict[str, str],
        files: list[tuple[str, Any]] | None = None,
    ) -> httpx.Response:
        try:
            return await ctx_client.request(
                method, f"{self._root}{path}", headers=headers, files=files, timeout=self._timeout
            )
        except httpx.TimeoutException as exc:
            raise self._transport_error("timeout", exc) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error("upstream_unavailable", exc) from exc

    async def submit(self, request: GenerationRequest, ctx: AttemptContext) -> SubmitResult:
        image = None
        if request.input_image_url is not None:
            image = await self._fetch_input(request.input_image_url, ctx)
        if request.kind == "video":
            return await self._submit_video(request, ctx, image)
        return await self._submit_image(request, ctx, image)

    async def _submit_image(
        self, request: GenerationRequest, ctx: AttemptContext, image: bytes | None
    ) -> SubmitResult:
        model = self._model(request)
        fields = self.image_fields(request, with_image=image is not None)
        files: list[tuple[str, Any]] = [(k, (None, v)) for k, v in fields.items()]
        if image is not None:
            files.append(("image", ("image", image, _sniff(image))))
        headers = self._headers(ctx.api_key, ctx, "image/*")
        response = await self._send(ctx.client, "POST", self.image_path(model), headers, files)
        if response.status_code != 200:
            raise self._status_error(response)
        data, content_type, finish = self._media(response, "image")
        if finish == "CONTENT_FILTERED":
            raise UpstreamError(
                "content_policy",
                "stability 200 CONTENT_FILTERED: the output was blurred by the content filter",
                provider=self.config.name,
                http_status=200,
                upstream_id=response.headers.get("x-request-id"),
            )
        size = _png_size(data)
        output = Output(
            url=f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}",
            content_type=content_type,
            width=size[0] if size else None,
            height=size[1] if size else None,
            bytes=len(data),
        )
        return SubmitResult(
            status="succeeded",
            upstream_id=response.headers.get("x-request-id"),
            outputs=(output,),
            progress=100,
            cost_usd=self.config.cost.per_image_usd,
        )

    async def _submit_video(
        self, request: GenerationRequest, ctx: AttemptContext, image: bytes | None
    ) -> SubmitResult:
        if image is None:  # supports() refuses this; be safe if called anyway
            raise UpstreamError(
                "invalid_request", "image-to-video needs an input image", provider=self.config.name
            )
        files: list[tuple[str, Any]] = [
            (k, (None, v)) for k, v in self.video_fields(request).items()
        ]
        files.append(("image", ("image", image, _sniff(image))))
        headers = self._headers(ctx.api_key, ctx, "application/json")
        response = await self._send(ctx.client, "POST", "/v2beta/image-to-video", headers, files)
        if response.status_code != 200:
            raise self._status_error(response)
        body = safe_json(response.content)
        upstream_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(upstream_id, str) or not upstream_id:
            raise UpstreamError(
                "malformed_response",
                "image-to-video response has no id",
                provider=self.config.name,
                http_status=200,
            )
        return SubmitResult(status="queued", upstream_id=upstream_id, progress=0)

    async def poll(self, upstream_id: str, ctx: AttemptContext) -> PollResult:
        """``GET /v2beta/image-to-video/result/{id}``: 202 running, 200 the video.

        Answers that end the job (404 expired/unknown, a caller-caused 4xx) come back
        as a failed :class:`PollResult`; transient ones (5xx, 429, transport) raise, so
        the engine retries the poll a few times before giving up.
        """
        headers = self._headers(ctx.api_key, ctx, "video/*")
        response = await self._send(
            ctx.client, "GET", f"/v2beta/image-to-video/result/{upstream_id}", headers
        )
        status = response.status_code
        if status == 202:
            return PollResult(status="running")
        if status != 200:
            error = self._status_error(response)
            if error.kind in CALLER_KINDS or error.kind == "not_found":
                return PollResult(
                    status="failed", error_kind=error.kind, error_message=error.message
                )
            error.upstream_id = upstream_id
            raise error
        data, content_type, finish = self._media(response, "video")
        if finish == "CONTENT_FILTERED":
            return PollResult(
                status="failed",
                error_kind="content_policy",
                error_message="stability 200 CONTENT_FILTERED: the video was filtered",
            )
        output = Output(
            url=f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}",
            content_type=content_type,
            duration_s=I2V_DURATION_S,
            bytes=len(data),
        )
        return PollResult(
            status="succeeded",
            progress=100,
            outputs=(output,),
            cost_usd=self.config.cost.per_video_s_usd * I2V_DURATION_S,
        )

    def _media(self, response: httpx.Response, kind: str) -> tuple[bytes, str, str | None]:
        """``(bytes, content type, finish reason)`` of a 200 in either Accept mode."""
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type.startswith(f"{kind}/") and response.content:
            return response.content, content_type, response.headers.get("finish-reason")
        body = safe_json(response.content)
        encoded = body.get(kind) if isinstance(body, dict) else None
        if isinstance(encoded, str) and encoded:
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                data = b""
            if data:
                finish = body.get("finish_reason")
                default = "image/png" if kind == "image" else "video/mp4"
                sniffed = _sniff(data) if kind == "image" else default
                return data, sniffed, finish if isinstance(finish, str) else None
        raise UpstreamError(
            "malformed_response",
            f"stability 200 without {kind} data ({content_type or 'no content type'})",
            provider=self.config.name,
            http_status=200,
        )

    async def _fetch_input(self, url: str, ctx: AttemptContext) -> bytes:
        """The caller's input image, from a ``data:`` URL or an http(s) GET."""
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            try:
                if header.endswith(";base64"):
                    data = base64.b64decode(payload, validate=True)
                else:
                    data = unquote_to_bytes(payload)
            except (binascii.Error, ValueError) as exc:
                raise self._input_error(f"undecodable data URL: {exc}") from exc
        else:
            try:
                data, _ = await fetch_input(
                    ctx, url, max_bytes=_MAX_UPLOAD, phase_timeouts=self._timeout
                )
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise self._input_error(f"could not fetch it: {type(exc).__name__}") from exc
            except ValueError as exc:
                raise self._input_error(str(exc)) from exc
        if not data:
            raise self._input_error("it is empty")
        if len(data) > _MAX_UPLOAD:
            raise self._input_error(f"it is larger than {_MAX_UPLOAD} bytes")
        return data

    def _input_error(self, why: str) -> UpstreamError:
        return UpstreamError(
            "invalid_request", f"input_image_url unusable: {why}", provider=self.config.name
        )

    def _transport_error(self, kind: ErrorKind, exc: Exception) -> UpstreamError:
        return transport_error(self.config.name, kind, exc)

    def _status_error(self, response: httpx.Response) -> UpstreamError:
        status = response.status_code
        kind = self.classify(status, response.content, response.headers)
        body = safe_json(response.content)
        name = body.get("name") if isinstance(body, dict) else None
        errors = body.get("errors") if isinstance(body, dict) else None
        text = f"stability {status} {name if isinstance(name, str) else ''}".rstrip()
        # An auth error's text can echo part of the key: keep only the name.
        if kind != "auth" and isinstance(errors, list) and errors:
            text = f"{text}: {'; '.join(str(e) for e in errors)[:300]}"
        retry_after = parse_retry_after(response.headers, self._clock.time())
        if kind == "rate_limited" and retry_after is None:
            retry_after = LOCKOUT_S
        return UpstreamError(
            kind,
            text,
            provider=self.config.name,
            http_status=status,
            retry_after_s=retry_after,
        )

    def classify(self, status: int | None, body: bytes, headers: Mapping[str, str]) -> ErrorKind:
        if status is None:
            return "upstream_unavailable"
        data = safe_json(body)
        name = data.get("name") if isinstance(data, dict) else None
        if isinstance(name, str) and name in _NAME_KINDS:
            return _NAME_KINDS[name]
        if status in _STATUS_KINDS:
            return _STATUS_KINDS[status]
        if status >= 500:
            return "upstream_unavailable"
        if status >= 400:
            return "invalid_request"
        return "malformed_response"

    async def cancel(self, upstream_id: str, ctx: AttemptContext) -> bool:
        """Stability documents no cancel: the generation runs out (failed ones are free)."""
        return False

    async def probe(self, client: httpx.AsyncClient, api_key: str | None) -> ProbeResult:
        """``GET`` the result of a generation that cannot exist: 404 proves the key, 401 not."""
        start = self._clock.monotonic()
        try:
            headers = self._headers(api_key, None, "application/json")
            response = await self._send(
                client, "GET", f"/v2beta/image-to-video/result/{_PROBE_ID}", headers
            )
        except UpstreamError as exc:
            return ProbeResult(ok=False, latency_s=self._clock.monotonic() - start, detail=exc.kind)
        latency = self._clock.monotonic() - start
        if response.status_code in (200, 202, 404):
            return ProbeResult(ok=True, latency_s=latency, detail=str(response.status_code))
        kind = self.classify(response.status_code, response.content, response.headers)
        return ProbeResult(ok=False, latency_s=latency, detail=f"{response.status_code} {kind}")

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, now: float) -> bool:
        """Stability sends no webhooks, so none is ever valid."""
        return False

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """Stability sends no webhooks."""
        return None


#: The class :func:`router.adapters.registry.build_adapter` constructs for ``adapter: stability``.
ADAPTER = StabilityAdapter
