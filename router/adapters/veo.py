"""The ``veo`` adapter: Google Veo video generation, Gemini API or Vertex AI (contracts §5).

Both flavours are long-running operations: ``predictLongRunning`` returns an
operation ``name`` that is polled until ``done: true``. They differ in their
addresses, their auth and how they are polled, chosen by ``options.api``:

- ``gemini`` (default): ``POST {base}/v1beta/models/{model}:predictLongRunning``
  with ``x-goog-api-key``; poll ``GET {base}/v1beta/{operation name}``; results
  are ``generateVideoResponse.generatedSamples[].video.uri`` file URIs that need
  the same API key to download (returned as-is: asset download is done above).
- ``vertex``: ``POST {base}/v1/projects/{project}/locations/{location}/publishers/
  google/models/{model}:predictLongRunning`` with ``Authorization: Bearer``; poll
  ``POST …/models/{model}:fetchPredictOperation`` with ``{"operationName": …}``;
  results are ``response.videos[]`` with ``gcsUri`` or ``bytesBase64Encoded``.
  The bearer token is an access token Switchman mints itself from a service
  account (``service_account_file`` or ``service_account_json``: the OAuth 2.0
  JWT-bearer grant, refreshed before each token's hour is up; see
  :mod:`router.adapters.google_auth`). Without one, the provider's ``api_key`` is
  sent as-is, and since Google's tokens expire after an hour a deployment must
  then refresh it outside Switchman. A tenant's own credential is always sent
  as-is.

Options (``ProviderConfig.options``): ``api`` (``gemini``), ``project`` (Vertex,
required), ``location`` (``us-central1``), ``person_generation`` (default:
``allow_all`` for text-to-video, ``allow_adult`` for image-to-video),
``generate_audio``, ``storage_uri`` and ``service_account_file`` /
``service_account_json`` (Vertex only; the key file read once at startup).

Neither API documents a cancel, so :meth:`VeoAdapter.cancel` returns ``False``;
Gemini's ``webhookConfig`` has no documented signature scheme, so jobs are polled.
``seed`` is sent to Vertex only: the Gemini API refuses it.

An operation's result does not repeat the request, so the adapter remembers each
accepted operation's duration and size (bounded, in memory) to price and describe
the videos; after a restart it falls back to Veo's defaults (8 s, 720p 16:9).
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote

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
from router.adapters.google_auth import ServiceAccount, ServiceAccountTokens
from router.adapters.http_util import (
    fetch_input,
    parse_duration,
    parse_retry_after,
    safe_json,
    transport_error,
)
from router.config import ProviderConfig
from router.errors import ConfigError, ErrorKind, UpstreamError
from router.models import GenerationRequest, Output

__all__ = ["VeoAdapter", "VeoOptions", "VeoSpec", "grpc_kind"]

DEFAULT_MODEL: Final = "veo-3.1-generate-preview"
DEFAULT_DURATION_S: Final = 8
ASPECT_RATIOS: Final = ("16:9", "9:16")
#: Longest side × shortest side of each resolution.
RESOLUTIONS: Final = {"720p": (1280, 720), "1080p": (1920, 1080)}
MAX_SAMPLES: Final = 4
#: Input images are inlined as base64; bigger ones are refused rather than buffered.
MAX_INPUT_IMAGE_BYTES: Final = 20 * 1024 * 1024
_REMEMBERED: Final = 10_000

#: google.rpc ``status`` strings → kinds (contracts §8, Veo row).
_STATUS_KINDS: Final[dict[str, ErrorKind]] = {
    "INVALID_ARGUMENT": "invalid_request",
    "FAILED_PRECONDITION": "invalid_request",
    "OUT_OF_RANGE": "invalid_request",
    "RESOURCE_EXHAUSTED": "rate_limited",
    "PERMISSION_DENIED": "auth",
    "UNAUTHENTICATED": "auth",
    "NOT_FOUND": "not_found",
    "INTERNAL": "upstream_unavailable",
    "UNAVAILABLE": "upstream_unavailable",
    "UNKNOWN": "upstream_unavailable",
    "ABORTED": "upstream_unavailable",
    "DEADLINE_EXCEEDED": "timeout",
    "CANCELLED": "canceled",
}
_HTTP_KINDS: Final[dict[int, ErrorKind]] = {
    400: "invalid_request",
    401: "auth",
    403: "auth",
    404: "not_found",
    408: "upstream_unavailable",
    429: "rate_limited",
}
#: google.rpc.Code numbers (an operation's ``error.code``) → kinds.
_GRPC_KINDS: Final[dict[int, ErrorKind]] = {
    1: "canceled",
    2: "upstream_unavailable",
    3: "invalid_request",
    4: "timeout",
    5: "not_found",
    7: "auth",
    8: "rate_limited",
    9: "invalid_request",
    10: "upstream_unavailable",
    11: "invalid_request",
    13: "upstream_unavailable",
    14: "upstream_unavailable",
    16: "auth",
}
#: ``ErrorInfo.reason`` values that mean the credential, whatever the status says
#: (Gemini answers a wrong key with 400 INVALID_ARGUMENT + ``API_KEY_INVALID``).
_AUTH_REASONS: Final = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "ACCESS_TOKEN_EXPIRED"})


def grpc_kind(code: int | None) -> ErrorKind:
    """The kind of a finished operation's ``error.code`` (a google.rpc.Code number)."""
    return _GRPC_KINDS.get(code or 0, "upstream_unavailable")


class VeoOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``options`` a ``veo`` provider accepts."""

    api: Literal["gemini", "vertex"] = "gemini"
    project: str | None = None
    location: str = "us-central1"
    person_generation: Literal["allow_all", "allow_adult", "dont_allow"] | None = None
    generate_audio: bool | None = None
    storage_uri: str | None = None
    #: Path to a service-account key file: Vertex then uses access tokens minted from it.
    service_account_file: str | None = None
    #: The key file's JSON itself (for example ``${VEO_SERVICE_ACCOUNT}``), instead of a path.
    service_account_json: str | None = None

    def __repr__(self) -> str:
        # An inline key file holds the private key.
        shown = self
        if self.service_account_json:
            shown = msgspec.structs.replace(self, service_account_json="***")
        return msgspec.Struct.__repr__(shown)


def _service_account(options: VeoOptions, path: str) -> ServiceAccount | None:
    """The account ``options`` name, read now so a bad one stops startup; ``None`` if none.

    ``path`` is the options' field path (``providers.<name>.options``) for the errors.
    """
    file, inline = options.service_account_file, options.service_account_json
    if not (file or inline):
        return None
    field = "service_account_file" if file else "service_account_json"
    if file and inline:
        raise ConfigError([f"{path}.{field}: set it or service_account_json, not both"])
    if options.api != "vertex":
        raise ConfigError([f"{path}.{field}: only used when options.api is vertex"])
    text: str | bytes = inline or ""
    where = ""
    if file:
        where = f"{file}: "
        try:
            text = Path(file).read_bytes()
        except OSError as exc:
            raise ConfigError([f"{path}.{field}: cannot read {where}{exc.strerror}"]) from None
    try:
        return ServiceAccount.from_json(text)
    except ValueError as exc:
        raise ConfigError([f"{path}.{field}: {where}{exc}"]) from None


@dataclass(frozen=True, slots=True)
class VeoSpec:
    """What one request asks of Veo, after mapping: enough to describe its videos."""

    model: str
    aspect_ratio: str
    resolution: str
    duration_s: int
    n: int

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the videos."""
        long, short = RESOLUTIONS[self.resolution]
        return (long, short) if self.aspect_ratio == "16:9" else (short, long)


_FALLBACK_SPEC: Final = VeoSpec(DEFAULT_MODEL, "16:9", "720p", DEFAULT_DURATION_S, 1)


def _durations(model: str) -> tuple[int, ...]:
    return (5, 6, 8) if model.startswith("veo-2") else (4, 6, 8)


def _aspect(request: GenerationRequest) -> str | None:
    """``16:9``/``9:16`` for the request, or ``None`` when Veo cannot make its shape."""
    if request.aspect_ratio is not None:
        return request.aspect_ratio if request.aspect_ratio in ASPECT_RATIOS else None
    if request.width and request.height:
        ratio = request.width / request.height
        if abs(ratio / (16 / 9) - 1) <= 0.02:
            return "16:9"
        if abs(ratio / (9 / 16) - 1) <= 0.02:
            return "9:16"
        return None
    return "16:9"


def _resolution(request: GenerationRequest) -> str | None:
    """``720p`` unless the size asks for more; ``None`` beyond 1080p."""
    if not (request.width and request.height):
        return "720p"
    short, long = sorted((request.width, request.height))
    if short <= 720 and long <= 1280:
        return "720p"
    if short <= 1080 and long <= 1920:
        return "1080p"
    return None


class VeoAdapter:
    """Google Veo behind the Adapter protocol (Gemini API or Vertex AI, per ``options.api``)."""

    def __init__(self, config: ProviderConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self._clock: Clock = clock or SystemClock()
        try:
            self.options = msgspec.convert(config.options, VeoOptions)
        except msgspec.ValidationError as exc:
            raise ConfigError([f"providers.{config.name}.options: {exc}"]) from exc
        if self.options.api == "vertex" and not self.options.project:
            raise ConfigError(
                [f"providers.{config.name}.options.project: required when options.api is vertex"]
            )
        account = _service_account(self.options, f"providers.{config.name}.options")
        self._tokens: ServiceAccountTokens | None = None
        if account is not None:
            self._tokens = ServiceAccountTokens(
                account,
                provider=config.name,
                clock=self._clock,
                timeout_s=config.timeouts.request_s,
            )
        root = config.base_url.rstrip("/")
        for suffix in ("/v1beta", "/v1"):
            root = root.removesuffix(suffix)
        self._root = root
        self._timeout = httpx.Timeout(config.timeouts.request_s, connect=config.timeouts.connect_s)
        self._specs: OrderedDict[str, VeoSpec] = OrderedDict()

    # -- selection --------------------------------------------------------------------

    def _model(self, request: GenerationRequest) -> str:
        return request.model or self.config.models.get("video", DEFAULT_MODEL)

    def spec(self, request: GenerationRequest) -> VeoSpec:
        """The mapped request (call :meth:`supports` first)."""
        return VeoSpec(
            model=self._model(request),
            aspect_ratio=_aspect(request) or "16:9",
            resolution=_resolution(request) or "720p",
            duration_s=int(request.duration_s or DEFAULT_DURATION_S),
            n=request.n,
        )

    def supports(self, request: GenerationRequest) -> str | None:
        if request.kind != "video" or "video" not in self.config.kinds:
            return f"{self.config.name} serves videos only"
        model = self._model(request)
        if not model.startswith("veo-"):
            return f"model {model!r} is not a Veo model"
        caps = self.config.capabilities
        max_n = min(caps.max_n or MAX_SAMPLES, MAX_SAMPLES)
        if request.n > max_n:
            return f"Veo makes at most {max_n} video(s) per request"
        aspect = _aspect(request)
        if aspect is None:
            return "Veo makes 16:9 or 9:16 videos only"
        if caps.aspect_ratios is not None and aspect not in caps.aspect_ratios:
            return f"aspect ratio {aspect} not offered"
        resolution = _resolution(request)
        if resolution is None:
            return "Veo makes at most 1080p"
        duration = request.duration_s if request.duration_s is not None else DEFAULT_DURATION_S
        allowed = _durations(model)
        if not float(duration).is_integer() or int(duration) not in allowed:
            return f"{model} makes videos of {', '.join(map(str, allowed))} seconds"
        if caps.max_duration_s is not None and duration > caps.max_duration_s:
            return f"duration above {caps.max_duration_s}s"
        if resolution == "1080p" and model.startswith("veo-2"):
            return f"{model} makes 720p only"
        if resolution == "1080p" and model.startswith("veo-3.1") and int(duration) != 8:
            return "Veo 3.1 makes 1080p at 8 seconds only"
        if request.fps is not None and request.fps != 24:
            return "Veo makes 24 fps only"
        url = request.input_image_url
        schemes: tuple[str, ...] = ("data:image/", "http://", "https://")
        if self.options.api == "vertex":
            schemes += ("gs://",)
        if url is not None and not url.startswith(schemes):
            return "input image must be a data:, http(s):// or (Vertex) gs:// URL"
        return None

    def estimate_cost(self, request: GenerationRequest) -> float:
        duration = request.duration_s or DEFAULT_DURATION_S
        return self.config.cost.per_video_s_usd * duration * request.n

    def build_body(
        self, request: GenerationRequest, image: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The ``predictLongRunning`` body for ``request`` (``image`` already resolved)."""
        spec = self.spec(request)
        instance: dict[str, Any] = {"prompt": request.prompt}
        if image is not None:
            instance["image"] = image
        person = self.options.person_generation or (
            "allow_adult" if image is not None else "allow_all"
        )
        parameters: dict[str, Any] = {
            "aspectRatio": spec.aspect_ratio,
            "durationSeconds": spec.duration_s,
            "resolution": spec.resolution,
            "sampleCount": spec.n,
            "personGeneration": person,
        }
        if request.negative_prompt:
            parameters["negativePrompt"] = request.negative_prompt
        if self.options.api == "vertex":
            if request.seed is not None:
                parameters["seed"] = request.seed
            if self.options.generate_audio is not None:
                parameters["generateAudio"] = self.options.generate_audio
            if self.options.storage_uri:
                parameters["storageUri"] = self.options.storage_uri
        return {"instances": [instance], "parameters": parameters}

    # -- addresses and headers --------------------------------------------------------

    def _model_url(self, model: str) -> str:
        if self.options.api == "gemini":
            return f"{self._root}/v1beta/models/{quote(model, safe='')}"
        o = self.options
        return (
            f"{self._root}/v1/projects/{quote(o.project or '', safe='')}/locations/"
            f"{quote(o.location, safe='')}/publishers/google/models/{quote(model, safe='')}"
        )

    async def _credential(self, client: httpx.AsyncClient, api_key: str | None) -> dict[str, str]:
        """The auth header: a minted token for the platform when a service account is
        configured, else the key (the tenant's own or the platform's) as-is."""
        if self._tokens is not None and api_key in (None, self.config.api_key):
            return {"Authorization": f"Bearer {await self._tokens.token(client)}"}
        key = api_key or self.config.api_key
        if not key:
            raise UpstreamError("auth", "no API key configured", provider=self.config.name)
        if self.options.api == "gemini":
            return {"x-goog-api-key": key}
        return {"Authorization": f"Bearer {key}"}

    async def _headers(
        self, client: httpx.AsyncClient, api_key: str | None, ctx: AttemptContext | None
    ) -> dict[str, str]:
        headers = await self._credential(client, api_key)
        if ctx is not None:
            headers.update(ctx.trace_headers)
            headers["X-Client-Request-Id"] = ctx.attempt_id
        return headers

    # -- calls ------------------------------------------------------------------------

    async def _send(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Any = None,
        upstream_id: str | None = None,
    ) -> Any:
        """One call; the decoded JSON of a 200, else :class:`UpstreamError`."""
        content = None
        if body is not None:
            content = msgspec.json.encode(body)
            headers = headers | {"Content-Type": "application/json"}
        try:
            response = await client.request(
                method, url, content=content, headers=headers, timeout=self._timeout
            )
        except httpx.TimeoutException as exc:
            raise self._transport_error("timeout", exc, upstream_id) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error("upstream_unavailable", exc, upstream_id) from exc
        if response.status_code != 200:
            if response.status_code == 401 and self._tokens is not None:
                # A minted token Vertex refuses is not kept until its refresh point.
                self._tokens.forget(headers.get("Authorization", "").removeprefix("Bearer "))
            raise self._status_error(response, upstream_id)
        data = safe_json(response.content)
        if not isinstance(data, dict):
            raise UpstreamError(
                "malformed_response",
                "veo answered 200 with a body that is not a JSON object",
                provider=self.config.name,
                http_status=200,
                upstream_id=upstream_id,
            )
        return data

    async def _input_image(
        self, request: GenerationRequest, ctx: AttemptContext
    ) -> dict[str, str] | None:
        """The request's input image as Veo's ``{bytesBase64Encoded|gcsUri, mimeType}``."""
        url = request.input_image_url
        if url is None:
            return None
        if url.startswith("gs://"):
            mime = "image/jpeg" if url.lower().endswith((".jpg", ".jpeg")) else "image/png"
            return {"gcsUri": url, "mimeType": mime}
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            mime = header.removeprefix("data:").split(";")[0] or "image/png"
            try:
                raw = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise self._bad_image("the input image data: URL is not valid base64") from exc
            return {"bytesBase64Encoded": base64.b64encode(raw).decode("ascii"), "mimeType": mime}
        try:
            data, content_type = await fetch_input(
                ctx, url, max_bytes=MAX_INPUT_IMAGE_BYTES, phase_timeouts=self._timeout
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._bad_image(f"cannot fetch the input image: {type(exc).__name__}") from exc
        except ValueError as exc:
            raise self._bad_image(f"the input image is unusable: {exc}") from exc
        mime = (content_type or "image/png").split(";")[0].strip()
        return {
            "bytesBase64Encoded": base64.b64encode(data).decode("ascii"),
            "mimeType": mime if mime.startswith("image/") else "image/png",
        }

    def _bad_image(self, message: str) -> UpstreamError:
        # The caller's URL is at fault, not Veo: another provider would fail the same way.
        return UpstreamError("invalid_request", message, provider=self.config.name)

    async def submit(self, request: GenerationRequest, ctx: AttemptContext) -> SubmitResult:
        headers = await self._headers(ctx.client, ctx.api_key, ctx)
        image = await self._input_image(request, ctx)
        body = self.build_body(request, image)
        spec = self.spec(request)
        data = await self._send(
            ctx.client, "POST", f"{self._model_url(spec.model)}:predictLongRunning", headers, body
        )
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise UpstreamError(
                "malformed_response",
                "predictLongRunning answered without an operation name",
                provider=self.config.name,
                http_status=200,
            )
        self._remember(name, spec)
        if data.get("done") is True:  # finished at once: no need to wait a poll interval
            result = self._result(name, data)
            if result.status == "succeeded":
                return SubmitResult(
                    status="succeeded",
                    upstream_id=name,
                    outputs=result.outputs,
                    progress=100,
                    cost_usd=result.cost_usd,
                )
        return SubmitResult(status="queued", upstream_id=name, progress=0)

    def _remember(self, name: str, spec: VeoSpec) -> None:
        self._specs[name] = spec
        while len(self._specs) > _REMEMBERED:
            self._specs.popitem(last=False)

    async def poll(self, upstream_id: str, ctx: AttemptContext) -> PollResult:
        headers = await self._headers(ctx.client, ctx.api_key, ctx)
        if self.options.api == "gemini":
            url = f"{self._root}/v1beta/{quote(upstream_id, safe='/')}"
            data = await self._send(ctx.client, "GET", url, headers, upstream_id=upstream_id)
        else:
            # The operation name is ``<model resource>/operations/<id>``: poll that model.
            resource, sep, _op = upstream_id.partition("/operations/")
            if sep and resource.startswith("projects/"):
                model_url = f"{self._root}/v1/{quote(resource, safe='/')}"
            else:
                spec = self._specs.get(upstream_id, _FALLBACK_SPEC)
                model_url = self._model_url(spec.model)
            data = await self._send(
                ctx.client,
                "POST",
                f"{model_url}:fetchPredictOperation",
                headers,
                {"operationName": upstream_id},
                upstream_id=upstream_id,
            )
        return self._result(upstream_id, data)

    def _result(self, upstream_id: str, data: Mapping[str, Any]) -> PollResult:
        """A finished or running operation as a :class:`PollResult`."""
        if data.get("done") is not True:
            return PollResult(status="running")
        error = data.get("error")
        if isinstance(error, dict):
            self._specs.pop(upstream_id, None)
            code = error.get("code")
            message = str(error.get("message") or "")[:300]
            return PollResult(
                status="failed",
                error_kind=grpc_kind(code if isinstance(code, int) else None),
                error_message=f"veo operation error {code}: {message}".rstrip(": "),
            )
        response = data.get("response")
        response = response if isinstance(response, dict) else {}
        inner = response.get("generateVideoResponse")
        payload: Mapping[str, Any] = inner if isinstance(inner, dict) else response
        spec = self._specs.pop(upstream_id, _FALLBACK_SPEC)
        outputs = self._outputs(payload, spec)
        filtered = payload.get("raiMediaFilteredCount")
        if not outputs:
            if isinstance(filtered, int) and filtered > 0:
                reasons = payload.get("raiMediaFilteredReasons") or []
                text = "; ".join(str(r) for r in reasons)[:300] if isinstance(reasons, list) else ""
                return PollResult(
                    status="failed",
                    error_kind="content_policy",
                    error_message=f"veo filtered {filtered} video(s): {text}".rstrip(": "),
                )
            return PollResult(
                status="failed",
                error_kind="malformed_response",
                error_message="veo operation finished with no videos",
            )
        cost = self.config.cost.per_video_s_usd * spec.duration_s * len(outputs)
        return PollResult(status="succeeded", progress=100, outputs=outputs, cost_usd=cost)

    def _outputs(self, payload: Mapping[str, Any], spec: VeoSpec) -> tuple[Output, ...]:
        """Videos from Gemini's ``generatedSamples`` or Vertex's ``videos``, in order."""
        items: list[Mapping[str, Any]] = []
        for key in ("generatedSamples", "videos"):
            found = payload.get(key)
            if isinstance(found, list):
                for item in found:
                    if isinstance(item, dict):
                        video = item.get("video")
                        items.append(video if isinstance(video, dict) else item)
        width, height = spec.size
        outputs = []
        for item in items:
            mime = item.get("mimeType") or item.get("encoding") or "video/mp4"
            url = item.get("uri") or item.get("gcsUri")
            size = None
            if not isinstance(url, str) or not url:
                b64 = item.get("bytesBase64Encoded") or item.get("encodedVideo")
                if not isinstance(b64, str) or not b64:
                    continue
                url = f"data:{mime};base64,{b64}"
                size = len(b64) * 3 // 4 - b64[-2:].count("=")
            outputs.append(
                Output(
                    url=url,
                    content_type=str(mime),
                    width=width,
                    height=height,
                    duration_s=float(spec.duration_s),
                    bytes=size,
                )
            )
        return tuple(outputs)

    # -- errors -----------------------------------------------------------------------

    def _transport_error(
        self, kind: ErrorKind, exc: Exception, upstream_id: str | None
    ) -> UpstreamError:
        return transport_error(self.config.name, kind, exc, upstream_id)

    def _status_error(self, response: httpx.Response, upstream_id: str | None) -> UpstreamError:
        status = response.status_code
        kind = self.classify(status, response.content, response.headers)
        error = _error_object(response.content)
        rpc_status = error.get("status") if isinstance(error.get("status"), str) else ""
        text = f"veo {status} {rpc_status}".rstrip()
        message = error.get("message")
        if kind != "auth" and isinstance(message, str) and message:
            text = f"{text}: {message[:300]}"
        return UpstreamError(
            kind,
            text,
            provider=self.config.name,
            http_status=status,
            retry_after_s=retry_delay(response.content)
            or parse_retry_after(response.headers, self._clock.time()),
            upstream_id=upstream_id,
        )

    def classify(self, status: int | None, body: bytes, headers: Mapping[str, str]) -> ErrorKind:
        if status is None:
            return "upstream_unavailable"
        error = _error_object(body)
        if any(_detail_reason(d) in _AUTH_REASONS for d in _details(error)):
            return "auth"
        rpc_status = error.get("status")
        if isinstance(rpc_status, str) and rpc_status in _STATUS_KINDS and status >= 400:
            kind = _STATUS_KINDS[rpc_status]
            # An HTTP-level deadline or cancel is the upstream's trouble, not a job outcome.
            return "upstream_unavailable" if kind in ("timeout", "canceled") else kind
        if status in _HTTP_KINDS:
            return _HTTP_KINDS[status]
        if status >= 500:
            return "upstream_unavailable"
        if status >= 400:
            return "invalid_request"
        return "malformed_response"

    def output_headers(self, url: str, api_key: str | None) -> dict[str, str]:
        """Headers that downloading ``url`` needs: Gemini file URIs want the API key.

        Only for URLs on the provider's own origin, so the key never leaves for
        another host; Vertex outputs are ``gs://`` or inline and need nothing.
        """
        key = api_key or self.config.api_key
        if self.options.api != "gemini" or not key:
            return {}
        if httpx.URL(url).netloc != httpx.URL(self._root).netloc or not url.startswith(self._root):
            return {}
        return {"x-goog-api-key": key}

    # -- the rest of the protocol -----------------------------------------------------

    async def cancel(self, upstream_id: str, ctx: AttemptContext) -> bool:
        """Veo documents no cancel for video operations; the job runs out upstream."""
        return False

    async def probe(self, client: httpx.AsyncClient, api_key: str | None) -> ProbeResult:
        """A model ``GET`` (Gemini ``models/{m}``, Vertex ``publishers/google/models/{m}``)."""
        start = self._clock.monotonic()
        model = self.config.models.get("video", DEFAULT_MODEL)
        if self.options.api == "gemini":
            url = self._model_url(model)
        else:
            url = f"{self._root}/v1beta1/publishers/google/models/{quote(model, safe='')}"
        try:
            headers = await self._headers(client, api_key, None)
            response = await client.get(url, headers=headers, timeout=self._timeout)
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
        """No documented webhook signature for Veo, so none is trusted."""
        return False

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """Veo operations are polled."""
        return None


def _error_object(body: bytes) -> dict[str, Any]:
    data = safe_json(body)
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def _details(error: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    details = error.get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _detail_reason(detail: Mapping[str, Any]) -> str | None:
    reason = detail.get("reason")
    return reason if isinstance(reason, str) else None


def retry_delay(body: bytes) -> float | None:
    """Seconds in a google.rpc.RetryInfo ``retryDelay`` (``"31s"``), if the body has one."""
    for detail in _details(_error_object(body)):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str):
                return parse_duration(delay)
            if isinstance(delay, dict):  # the proto3 JSON object form {"seconds": 31}
                seconds = delay.get("seconds", 0)
                nanos = delay.get("nanos", 0)
                if isinstance(seconds, int | str) and isinstance(nanos, int):
                    return float(seconds) + nanos / 1e9
    return None


#: The class :func:`router.adapters.registry.build_adapter` constructs for ``adapter: veo``.
ADAPTER = VeoAdapter
