"""The ``runway`` adapter: Runway's task API (provider-contracts §6).

Every generation is a task: ``POST /v1/{image_to_video,text_to_video,text_to_image}``
returns ``{"id"}``, ``GET /v1/tasks/{id}`` reports ``PENDING``/``THROTTLED``
(queued), ``RUNNING`` (with a 0–1 ``progress``), ``SUCCEEDED`` (``output`` URLs),
``FAILED`` (``failureCode``) or ``CANCELLED``, and ``DELETE /v1/tasks/{id}``
cancels a live task. Every call carries ``X-Runway-Version``.

Going over the account's concurrency does not fail a create: the task waits as
``THROTTLED``. A 429 means a daily cap, so it is rate_limited with whatever
``Retry-After`` came along.

The task object does not repeat the request, so the duration a video was asked
for (which prices it) is remembered per task id between submit and poll; after
a restart the model's default duration is assumed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
import msgspec

from breakers.clock import Clock, SystemClock
from router.adapters.base import (
    AttemptContext,
    PollResult,
    ProbeResult,
    SubmitResult,
    UpstreamStatus,
    WebhookEvent,
)
from router.adapters.http_util import parse_retry_after, safe_json, transport_error
from router.config import ProviderConfig
from router.errors import ErrorKind, UpstreamError
from router.models import GenerationRequest, Output

__all__ = [
    "API_VERSION",
    "IMAGE_MODELS",
    "VIDEO_MODELS",
    "RunwayAdapter",
    "VideoModel",
    "choose_ratio",
    "failure_kind",
]

API_VERSION: Final = "2024-11-06"
DEFAULT_VIDEO_MODEL: Final = "gen4_turbo"
DEFAULT_IMAGE_MODEL: Final = "gen4_image"
MAX_PROMPT: Final = 1000


@dataclass(frozen=True, slots=True)
class VideoModel:
    """What one Runway video model accepts."""

    ratios: tuple[str, ...]
    durations: tuple[int, ...]
    default_duration: int
    #: ``gen4_turbo`` animates an image; it has no text-to-video.
    needs_image: bool


_GEN4_RATIOS: Final = ("1280:720", "720:1280", "1104:832", "832:1104", "960:960", "1584:672")
_VEO_RATIOS: Final = ("1280:720", "720:1280", "1080:1920", "1920:1080")
VIDEO_MODELS: Final[dict[str, VideoModel]] = {
    "gen4_turbo": VideoModel(_GEN4_RATIOS, (5, 10), 5, needs_image=True),
    "gen4.5": VideoModel(_GEN4_RATIOS, tuple(range(2, 11)), 5, needs_image=False),
    "veo3.1": VideoModel(_VEO_RATIOS, (4, 6, 8), 8, needs_image=False),
    "veo3.1_fast": VideoModel(_VEO_RATIOS, (4, 6, 8), 8, needs_image=False),
}
#: ``text_to_image`` ratios (Runway's API reference; the contract names only the models).
IMAGE_RATIOS: Final = (
    "1920:1080",
    "1080:1920",
    "1024:1024",
    "1360:768",
    "1080:1080",
    "1168:880",
    "1440:1080",
    "1080:1440",
    "1808:768",
    "2112:912",
    "1280:720",
    "720:1280",
    "720:720",
    "960:720",
    "720:960",
    "1680:720",
)
IMAGE_MODELS: Final = frozenset({"gen4_image", "gen4_image_turbo"})
#: How far (in log shape) a Runway ratio may be from the one asked for: 3 %.
_SHAPE_TOLERANCE: Final = math.log(1.03)
_PROBE_TASK: Final = "00000000-0000-0000-0000-000000000000"
_MEMO_MAX: Final = 10_000

_STATUS_KINDS: Final[dict[int, ErrorKind]] = {
    400: "invalid_request",
    401: "auth",
    403: "auth",
    404: "not_found",
    405: "invalid_request",
    413: "invalid_request",
    422: "invalid_request",
    429: "rate_limited",
}
_TASK_STATUS: Final[dict[str, UpstreamStatus]] = {
    "PENDING": "queued",
    "THROTTLED": "queued",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "CANCELLED": "canceled",
}
#: ``failureCode`` prefixes, longest first wins (contracts §6 and §8).
_FAILURE_PREFIXES: Final[tuple[tuple[str, ErrorKind], ...]] = (
    ("SAFETY.", "content_policy"),
    ("INTERNAL", "upstream_unavailable"),
    ("ASSET.", "invalid_request"),
    ("INPUT.", "invalid_request"),
)
_EXTENSIONS: Final = {
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}


class _Task(msgspec.Struct):
    id: str
    status: str
    createdAt: str | None = None  # noqa: N815 - Runway's field name
    progress: float | None = None
    output: list[str] | None = None
    failure: str | None = None
    failureCode: str | None = None  # noqa: N815 - Runway's field name


_decode_task = msgspec.json.Decoder(_Task).decode


@dataclass(frozen=True, slots=True)
class _Asked:
    """What a task was asked for, kept from submit to poll."""

    kind: str
    width: int
    height: int
    duration_s: int | None


def failure_kind(code: str | None) -> ErrorKind:
    """The error kind of a ``FAILED`` task's ``failureCode`` (unknown codes are retryable)."""
    if code:
        for prefix, kind in _FAILURE_PREFIXES:
            if code.startswith(prefix):
                return kind
    return "upstream_unavailable"


def _shape(ratio: str) -> tuple[int, int]:
    w, h = ratio.split(":")
    return int(w), int(h)


def choose_ratio(ratios: tuple[str, ...], request: GenerationRequest) -> str | None:
    """The allowed ``ratio`` closest in shape (then area) to the request; ``None`` if none fits.

    A request without a shape gets the model's first (landscape) ratio.
    """
    if request.width and request.height:
        target = request.width / request.height
        area: float | None = request.width * request.height
    elif request.aspect_ratio is not None:
        w, h = _shape(request.aspect_ratio)
        target, area = w / h, None
    else:
        return ratios[0]

    def distance(ratio: str) -> tuple[float, float]:
        w, h = _shape(ratio)
        shape = abs(math.log(w / h) - math.log(target))
        scale = abs(math.log(w * h / area)) if area else 0.0
        return round(shape, 6), scale

    best = min(ratios, key=distance)
    return best if distance(best)[0] <= _SHAPE_TOLERANCE else None


def _content_type(url: str, kind: str) -> str:
    path = url.split("?", 1)[0].lower()
    for ext, content_type in _EXTENSIONS.items():
        if path.endswith(ext):
            return content_type
    return "video/mp4" if kind == "video" else "image/png"


class RunwayAdapter:
    """Runway (``gen4_turbo``, ``gen4.5``, ``veo3.1*`` video; ``gen4_image*`` images)."""

    def __init__(self, config: ProviderConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self._clock: Clock = clock or SystemClock()
        root = config.base_url.rstrip("/")
        self._root = root.removesuffix("/v1")
        self._timeout = httpx.Timeout(config.timeouts.request_s, connect=config.timeouts.connect_s)
        self._asked: OrderedDict[str, _Asked] = OrderedDict()

    # -- selection --------------------------------------------------------------------

    def _model(self, request: GenerationRequest) -> str:
        if request.model is not None:
            return request.model
        default = DEFAULT_VIDEO_MODEL if request.kind == "video" else DEFAULT_IMAGE_MODEL
        return self.config.models.get(request.kind, default)

    def _duration(self, request: GenerationRequest, spec: VideoModel) -> int | None:
        if request.duration_s is None:
            return spec.default_duration
        if not float(request.duration_s).is_integer():
            return None
        duration = int(request.duration_s)
        return duration if duration in spec.durations else None

    def supports(self, request: GenerationRequest) -> str | None:
        if request.kind not in self.config.kinds:
            return f"{self.config.name} does not serve kind {request.kind!r}"
        if request.n > 1:
            return "runway makes one output per task"
        if len(request.prompt) > MAX_PROMPT:
            return f"runway prompts are at most {MAX_PROMPT} characters"
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
        if request.kind == "image":
            if model not in IMAGE_MODELS:
                return f"model {model!r} is not a Runway image model"
            if choose_ratio(IMAGE_RATIOS, request) is None:
                return "no Runway image ratio matches the requested shape"
            return None
        spec = VIDEO_MODELS.get(model)
        if spec is None:
            return f"model {model!r} is not a Runway video model"
        if spec.needs_image and request.input_image_url is None:
            return f"{model} is image-to-video only: input_image_url is required"
        if choose_ratio(spec.ratios, request) is None:
            return f"no {model} ratio matches the requested shape"
        duration = self._duration(request, spec)
        if duration is None:
            allowed = ", ".join(str(d) for d in spec.durations)
            return f"{model} makes videos of {allowed} s"
        if caps.max_duration_s is not None and duration > caps.max_duration_s:
            return f"duration {duration} s exceeds {caps.max_duration_s:g} s"
        return None

    def estimate_cost(self, request: GenerationRequest) -> float:
        if request.kind == "image":
            return self.config.cost.per_image_usd * request.n
        spec = VIDEO_MODELS.get(self._model(request), VIDEO_MODELS[DEFAULT_VIDEO_MODEL])
        duration = self._duration(request, spec) or spec.default_duration
        return self.config.cost.per_video_s_usd * duration * request.n

    def build_task(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """``(path, JSON body)`` of the task creation for ``request``."""
        model = self._model(request)
        body: dict[str, Any] = {"model": model, "promptText": request.prompt}
        if request.kind == "image":
            path = "/v1/text_to_image"
            body["ratio"] = choose_ratio(IMAGE_RATIOS, request) or IMAGE_RATIOS[0]
            if request.input_image_url is not None:
                body["referenceImages"] = [{"uri": request.input_image_url}]
        else:
            spec = VIDEO_MODELS.get(model, VIDEO_MODELS[DEFAULT_VIDEO_MODEL])
            if request.input_image_url is not None:
                path = "/v1/image_to_video"
                body["promptImage"] = request.input_image_url
            else:
                path = "/v1/text_to_video"
            body["ratio"] = choose_ratio(spec.ratios, request) or spec.ratios[0]
            body["duration"] = self._duration(request, spec) or spec.default_duration
        if request.seed is not None:
            body["seed"] = request.seed
        threshold = self.config.options.get("public_figure_threshold")
        if threshold in ("auto", "low"):
            body["contentModeration"] = {"publicFigureThreshold": threshold}
        return path, body

    # -- calls ------------------------------------------------------------------------

    def _headers(self, api_key: str | None, ctx: AttemptContext | None) -> dict[str, str]:
        key = api_key or self.config.api_key
        if not key:
            raise UpstreamError("auth", "no API key configured", provider=self.config.name)
        headers = {"Authorization": f"Bearer {key}", "X-Runway-Version": API_VERSION}
        if ctx is not None:
            headers.update(ctx.trace_headers)
            headers["X-Client-Request-Id"] = ctx.attempt_id
        return headers

    async def _send(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        headers: dict[str, str],
        body: dict[str, Any] | None = None,
    ) -> httpx.Response:
        content = None
        if body is not None:
            content = msgspec.json.encode(body)
            headers = headers | {"Content-Type": "application/json"}
        try:
            return await client.request(
                method,
                f"{self._root}{path}",
                headers=headers,
                content=content,
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise self._transport_error("timeout", exc) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error("upstream_unavailable", exc) from exc

    async def submit(self, request: GenerationRequest, ctx: AttemptContext) -> SubmitResult:
        path, body = self.build_task(request)
        headers = self._headers(ctx.api_key, ctx)
        response = await self._send(ctx.client, "POST", path, headers, body)
        if response.status_code not in (200, 201):
            raise self._status_error(response)
        data = safe_json(response.content)
        task_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise UpstreamError(
                "malformed_response",
                "task creation returned no id",
                provider=self.config.name,
                http_status=response.status_code,
            )
        width, height = _shape(body["ratio"])
        self._remember(task_id, _Asked(request.kind, width, height, body.get("duration")))
        return SubmitResult(status="queued", upstream_id=task_id, progress=0)

    def _remember(self, task_id: str, asked: _Asked) -> None:
        self._asked[task_id] = asked
        while len(self._asked) > _MEMO_MAX:
            self._asked.popitem(last=False)

    def _asked_for(self, task_id: str) -> _Asked:
        asked = self._asked.get(task_id)
        if asked is not None:
            return asked
        kind = "video" if "video" in self.config.kinds else "image"
        if kind == "image":
            w, h = _shape(IMAGE_RATIOS[0])
            return _Asked("image", w, h, None)
        model = self.config.models.get("video", DEFAULT_VIDEO_MODEL)
        spec = VIDEO_MODELS.get(model, VIDEO_MODELS[DEFAULT_VIDEO_MODEL])
        w, h = _shape(spec.ratios[0])
        return _Asked("video", w, h, spec.default_duration)

    async def poll(self, upstream_id: str, ctx: AttemptContext) -> PollResult:
        """``GET /v1/tasks/{id}`` mapped onto the common statuses (contracts §8)."""
        headers = self._headers(ctx.api_key, ctx)
        response = await self._send(ctx.client, "GET", f"/v1/tasks/{upstream_id}", headers)
        if response.status_code == 404:
            self._asked.pop(upstream_id, None)
            return PollResult(
                status="failed", error_kind="not_found", error_message="runway task not found"
            )
        if response.status_code != 200:
            error = self._status_error(response)
            error.upstream_id = upstream_id
            raise error
        try:
            task = _decode_task(response.content)
        except msgspec.DecodeError as exc:
            raise UpstreamError(
                "malformed_response",
                f"unparseable task: {exc}",
                provider=self.config.name,
                http_status=200,
                upstream_id=upstream_id,
            ) from exc
        status = _TASK_STATUS.get(task.status)
        if status is None:
            raise UpstreamError(
                "malformed_response",
                f"unknown task status {task.status!r}",
                provider=self.config.name,
                http_status=200,
                upstream_id=upstream_id,
            )
        if status in ("queued", "running"):
            progress = None
            if task.progress is not None:
                progress = max(0, min(99, math.floor(task.progress * 100)))
            elif status == "queued":
                progress = 0
            return PollResult(status=status, progress=progress)
        asked = self._asked_for(upstream_id)
        self._asked.pop(upstream_id, None)
        if status == "canceled":
            return PollResult(status="canceled", error_message="runway task CANCELLED")
        if status == "failed":
            code = task.failureCode or ""
            text = f"runway FAILED {code}".rstrip()
            if task.failure:
                text = f"{text}: {task.failure[:300]}"
            return PollResult(status="failed", error_kind=failure_kind(code), error_message=text)
        return self._succeeded(task, asked, upstream_id)

    def _succeeded(self, task: _Task, asked: _Asked, upstream_id: str) -> PollResult:
        urls = [u for u in task.output or () if isinstance(u, str) and u]
        if not urls:
            raise UpstreamError(
                "malformed_response",
                "SUCCEEDED task without output",
                provider=self.config.name,
                http_status=200,
                upstream_id=upstream_id,
            )
        duration = float(asked.duration_s) if asked.kind == "video" and asked.duration_s else None
        outputs = tuple(
            Output(
                url=url,
                content_type=_content_type(url, asked.kind),
                width=asked.width,
                height=asked.height,
                duration_s=duration,
            )
            for url in urls
        )
        if asked.kind == "video":
            cost = self.config.cost.per_video_s_usd * (duration or 0.0)
        else:
            cost = self.config.cost.per_image_usd * len(outputs)
        return PollResult(status="succeeded", progress=100, outputs=outputs, cost_usd=cost)

    async def cancel(self, upstream_id: str, ctx: AttemptContext) -> bool:
        """``DELETE /v1/tasks/{id}``: cancels a live task; ``False`` when it is gone."""
        headers = self._headers(ctx.api_key, ctx)
        response = await self._send(ctx.client, "DELETE", f"/v1/tasks/{upstream_id}", headers)
        if response.status_code in (200, 204):
            self._asked.pop(upstream_id, None)
            return True
        if response.status_code == 404:
            return False
        error = self._status_error(response)
        error.upstream_id = upstream_id
        raise error

    def _transport_error(self, kind: ErrorKind, exc: Exception) -> UpstreamError:
        return transport_error(self.config.name, kind, exc)

    def _status_error(self, response: httpx.Response) -> UpstreamError:
        status = response.status_code
        kind = self.classify(status, response.content, response.headers)
        data = safe_json(response.content)
        text = f"runway {status}"
        if kind != "auth" and isinstance(data, dict):
            message = data.get("error")
            if isinstance(message, str) and message:
                text = f"{text}: {message[:200]}"
            issues = data.get("issues")
            if isinstance(issues, list) and issues:
                parts = [
                    f"{'.'.join(str(p) for p in i.get('path', []))}: {i.get('message', '')}"
                    for i in issues
                    if isinstance(i, dict)
                ]
                text = f"{text} ({'; '.join(parts)[:300]})"
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
        if status in _STATUS_KINDS:
            return _STATUS_KINDS[status]
        if status >= 500:
            return "upstream_unavailable"
        if status >= 400:
            return "invalid_request"
        return "malformed_response"

    async def probe(self, client: httpx.AsyncClient, api_key: str | None) -> ProbeResult:
        """``GET`` a task that cannot exist: 404 proves the key and the path, 401 does not."""
        start = self._clock.monotonic()
        try:
            headers = self._headers(api_key, None)
            response = await self._send(client, "GET", f"/v1/tasks/{_PROBE_TASK}", headers)
        except UpstreamError as exc:
            return ProbeResult(ok=False, latency_s=self._clock.monotonic() - start, detail=exc.kind)
        latency = self._clock.monotonic() - start
        if response.status_code in (200, 404):
            return ProbeResult(ok=True, latency_s=latency, detail=str(response.status_code))
        kind = self.classify(response.status_code, response.content, response.headers)
        return ProbeResult(ok=False, latency_s=latency, detail=f"{response.status_code} {kind}")

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, now: float) -> bool:
        """Runway sends no webhooks, so none is ever valid."""
        return False

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """Runway sends no webhooks."""
        return None


#: The class :func:`router.adapters.registry.build_adapter` constructs for ``adapter: runway``.
ADAPTER = RunwayAdapter
