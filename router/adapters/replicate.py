"""The ``replicate`` adapter: Replicate's predictions API (provider-contracts §1).

A prediction is created, then polled (``Prefer: wait`` is deliberately not used:
holding a connection for up to 60 s would pin a guard permit and an HTTP
connection for nothing, and the engine's poll loop already backs off). When the
engine hands over a webhook URL it goes into the create body with
``webhook_events_filter: ["completed"]``, so a completion arrives without
waiting for the next poll.

``config.models[kind]`` (or ``request.model``) names what to run:

- ``owner/name``                  → ``POST /v1/models/{owner}/{name}/predictions``
- ``deployments/owner/name``      → ``POST /v1/deployments/{owner}/{name}/predictions``
- ``owner/name:<64-hex>`` or ``<64-hex>`` → ``POST /v1/predictions`` with ``version``

The prediction ``input`` uses the names most Replicate image and video models
share: ``prompt``, ``negative_prompt``, ``aspect_ratio``, ``width``/``height``,
``seed``, ``num_outputs`` and ``output_format: png`` (images), ``duration`` and
``fps`` (video), and ``image`` for an input image. ``options`` may rename the
input-image field (``input_image_field``), add fixed inputs (``extra_input``)
and set the duration assumed for cost when a video model was not told one
(``default_duration_s``).

Errors are classified from one table (contracts §8): HTTP problems by status;
failed predictions by their ``E####`` code or, for safety refusals, which
Replicate reports as free text, by wording.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import msgspec
import structlog

from breakers.clock import Clock, SystemClock
from router.adapters.base import (
    AttemptContext,
    PollResult,
    ProbeResult,
    SubmitResult,
    UpstreamStatus,
    WebhookEvent,
)
from router.adapters.capabilities import capability_problem
from router.adapters.http_util import (
    parse_rate_limit,
    parse_retry_after,
    safe_json,
    transport_error,
)
from router.adapters.webhook_sigs import verify_standard
from router.config import ProviderConfig
from router.errors import ConfigError, ErrorKind, UpstreamError
from router.models import GenerationRequest, Output

__all__ = ["ReplicateAdapter", "ReplicateOptions", "classify_failure", "model_route"]

_log = structlog.get_logger("switchman.adapters.replicate")

_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")
_OWNER_NAME: Final = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_VERSIONED: Final = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*:[0-9a-f]{64}$")
_ERROR_CODE: Final = re.compile(r"\b(E\d{4})\b")
_SAFETY: Final = re.compile(
    r"nsfw|sensitive|safety|content polic|flagged|inappropriate|not allowed", re.IGNORECASE
)
_PERCENT: Final = re.compile(r"(\d{1,3})%\|")
_RESETS_IN: Final = re.compile(r"resets in ~?(\d+(?:\.\d+)?)\s*s")

#: Native prediction status → normalized status (contracts §8).
STATUS_MAP: Final[dict[str, UpstreamStatus]] = {
    "starting": "queued",
    "processing": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "canceled",
    "aborted": "canceled",
}
#: ``E####`` codes of failed predictions (contracts §1, §8).
CODE_KINDS: Final[dict[str, ErrorKind]] = {
    "E1000": "upstream_unavailable",  # unknown: retry
    "E6716": "upstream_unavailable",  # timeout while starting
    "E1001": "invalid_request",  # input too large / out of memory for this input
}
_STATUS_KINDS: Final[dict[int, ErrorKind]] = {
    400: "invalid_request",
    401: "auth",
    402: "auth",  # out of credit: permanent until billing changes
    403: "auth",
    404: "not_found",
    408: "upstream_unavailable",
    409: "upstream_unavailable",
    422: "invalid_request",
    429: "rate_limited",
}
_CONTENT_TYPES: Final = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
}


class ReplicateOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``providers[].options`` for ``adapter: replicate``."""

    #: Input name of the conditioning image (``image``, ``start_image``, ``first_frame_image``…).
    input_image_field: str = "image"
    #: Fixed inputs added to every prediction (e.g. ``{"go_fast": true}``).
    extra_input: dict[str, Any] = msgspec.field(default_factory=dict)
    #: Video seconds assumed for cost when neither request nor prediction says.
    default_duration_s: float = 5.0


def model_route(root: str, model: str) -> tuple[str, str | None]:
    """``(create URL, version)`` for a model reference; ``ValueError`` when it is none."""
    if model.startswith("deployments/"):
        ref = model.removeprefix("deployments/")
        if _OWNER_NAME.match(ref):
            return f"{root}/deployments/{ref}/predictions", None
    elif _OWNER_NAME.match(model):
        return f"{root}/models/{model}/predictions", None
    elif _VERSIONED.match(model) or _HEX64.match(model):
        return f"{root}/predictions", model
    raise ValueError(f"not a Replicate model reference: {model!r}")


def classify_failure(error: str | None) -> ErrorKind:
    """The error kind of a ``failed`` prediction from its free-text ``error``."""
    text = error or ""
    m = _ERROR_CODE.search(text)
    if m is not None and m.group(1) in CODE_KINDS:
        return CODE_KINDS[m.group(1)]
    if _SAFETY.search(text):
        return "content_policy"
    return "upstream_unavailable"


def _content_type(url: str, video: bool) -> str:
    ext = url.rsplit("?", 1)[0].rsplit(".", 1)[-1].lower()
    return _CONTENT_TYPES.get(ext, "video/mp4" if video else "image/png")


def _progress(logs: Any) -> int | None:
    """The last ``NN%|`` of a tqdm-style progress bar in the prediction's logs."""
    if not isinstance(logs, str) or not logs:
        return None
    found = _PERCENT.findall(logs[-2000:])
    return min(99, int(found[-1])) if found else None


class ReplicateAdapter:
    """Replicate predictions (models, versions, deployments) behind the Adapter protocol."""

    #: Completion webhooks name the job and attempt, so the engine can reconcile by them.
    sends_webhooks = True

    def __init__(self, config: ProviderConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self._clock: Clock = clock or SystemClock()
        try:
            self.options = msgspec.convert(config.options, ReplicateOptions)
        except msgspec.ValidationError as exc:
            raise ConfigError([f"providers.{config.name}.options: {exc}"]) from exc
        root = config.base_url.rstrip("/")
        self._root = root if root.endswith("/v1") else f"{root}/v1"
        self._timeout = httpx.Timeout(config.timeouts.request_s, connect=config.timeouts.connect_s)
        #: Webhook secrets to accept: the configured one, plus the account's default
        #: secret once fetched (``GET /v1/webhooks/default/secret``) when none is configured.
        self._secrets: list[str] = [config.webhook_secret] if config.webhook_secret else []

    # -- selection --------------------------------------------------------------------

    def _model(self, request: GenerationRequest) -> str | None:
        return request.model or self.config.models.get(request.kind)

    def supports(self, request: GenerationRequest) -> str | None:
        if request.kind not in self.config.kinds:
            return f"{self.config.name} does not serve {request.kind}"
        model = self._model(request)
        if model is None:
            return f"no {request.kind} model configured"
        try:
            model_route(self._root, model)
        except ValueError as exc:
            return str(exc)
        caps = self.config.capabilities
        if request.kind == "video" and request.n > 1:
            return "video predictions produce one output"
        return capability_problem(caps, request)

    def estimate_cost(self, request: GenerationRequest) -> float:
        cost = self.config.cost
        if request.kind == "video":
            return cost.per_video_s_usd * (request.duration_s or self.options.default_duration_s)
        return cost.per_image_usd * request.n

    def build_input(self, request: GenerationRequest) -> dict[str, Any]:
        """The prediction ``input`` for ``request``."""
        data: dict[str, Any] = {"prompt": request.prompt}
        if request.negative_prompt:
            data["negative_prompt"] = request.negative_prompt
        if request.aspect_ratio:
            data["aspect_ratio"] = request.aspect_ratio
        if request.width:
            data["width"] = request.width
        if request.height:
            data["height"] = request.height
        if request.seed is not None:
            data["seed"] = request.seed
        if request.input_image_url:
            data[self.options.input_image_field] = request.input_image_url
        if request.kind == "video":
            if request.duration_s is not None:
                d = request.duration_s
                data["duration"] = int(d) if float(d).is_integer() else d
            if request.fps is not None:
                data["fps"] = request.fps
        else:
            data["num_outputs"] = request.n
            data["output_format"] = "png"
        data.update(self.options.extra_input)
        return data

    def build_body(
        self, request: GenerationRequest, webhook_url: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """``(URL, JSON body)`` of the create call for ``request``."""
        model = self._model(request)
        if model is None:
            raise UpstreamError(
                "invalid_request",
                f"no {request.kind} model configured",
                provider=self.config.name,
            )
        try:
            url, version = model_route(self._root, model)
        except ValueError as exc:
            raise UpstreamError("invalid_request", str(exc), provider=self.config.name) from exc
        body: dict[str, Any] = {}
        if version is not None:
            body["version"] = version
        body["input"] = self.build_input(request)
        if webhook_url:
            body["webhook"] = webhook_url
            body["webhook_events_filter"] = ["completed"]
        return url, body

    # -- calls ------------------------------------------------------------------------

    def _headers(self, api_key: str | None, ctx: AttemptContext | None) -> dict[str, str]:
        key = api_key or self.config.api_key
        if not key:
            raise UpstreamError("auth", "no API token configured", provider=self.config.name)
        headers = {"Authorization": f"Bearer {key}"}
        if ctx is not None:
            headers.update(ctx.trace_headers)
            headers["X-Client-Request-Id"] = ctx.attempt_id
        return headers

    def _cancel_after(self, ctx: AttemptContext) -> str | None:
        """``Cancel-After``: Replicate stops billing once Switchman has given up anyway."""
        remaining = min(ctx.deadline - self._clock.monotonic(), self.config.timeouts.job_s)
        return f"{int(remaining)}s" if remaining >= 5 else None

    async def _send(
        self,
        method: str,
        url: str,
        client: httpx.AsyncClient,
        headers: dict[str, str],
        body: dict[str, Any] | None = None,
        upstream_id: str | None = None,
    ) -> httpx.Response:
        try:
            if body is None:
                return await client.request(method, url, headers=headers, timeout=self._timeout)
            return await client.request(
                method,
                url,
                content=msgspec.json.encode(body),
                headers=headers | {"Content-Type": "application/json"},
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise self._transport_error("timeout", exc, upstream_id) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error("upstream_unavailable", exc, upstream_id) from exc

    async def submit(self, request: GenerationRequest, ctx: AttemptContext) -> SubmitResult:
        url, body = self.build_body(request, ctx.webhook_url)
        headers = self._headers(ctx.api_key, ctx)
        if ctx.webhook_url and not self._secrets:
            await self._fetch_secret(ctx.client, headers)
        cancel_after = self._cancel_after(ctx)
        if cancel_after is not None:
            headers["Cancel-After"] = cancel_after
        response = await self._send("POST", url, ctx.client, headers, body)
        if response.status_code not in (200, 201, 202):
            raise self._status_error(response)
        prediction = self._prediction(response)
        upstream_id = prediction.get("id")
        if not isinstance(upstream_id, str) or not upstream_id:
            raise UpstreamError(
                "malformed_response",
                "prediction has no id",
                provider=self.config.name,
                http_status=response.status_code,
            )
        state = self.parse_prediction(prediction)
        rate_limit = parse_rate_limit(response.headers, prefix="ratelimit-", suffix="")
        if state.status in ("failed", "canceled"):
            raise UpstreamError(
                state.error_kind or "upstream_unavailable",
                state.error_message or f"prediction {state.status} at creation",
                provider=self.config.name,
                http_status=response.status_code,
                upstream_id=upstream_id,
            )
        return SubmitResult(
            status=state.status,
            upstream_id=upstream_id,
            outputs=state.outputs,
            progress=100 if state.status == "succeeded" else state.progress,
            cost_usd=state.cost_usd,
            rate_limit=rate_limit,
        )

    async def poll(self, upstream_id: str, ctx: AttemptContext) -> PollResult:
        headers = self._headers(ctx.api_key, None) | dict(ctx.trace_headers)
        url = f"{self._root}/predictions/{upstream_id}"
        response = await self._send("GET", url, ctx.client, headers, upstream_id=upstream_id)
        if response.status_code != 200:
            raise self._status_error(response, upstream_id)
        return self.parse_prediction(self._prediction(response))

    async def cancel(self, upstream_id: str, ctx: AttemptContext) -> bool:
        """``POST /v1/predictions/{id}/cancel``; ``True`` when the prediction is now canceled."""
        headers = self._headers(ctx.api_key, None) | dict(ctx.trace_headers)
        url = f"{self._root}/predictions/{upstream_id}/cancel"
        response = await self._send("POST", url, ctx.client, headers, upstream_id=upstream_id)
        if response.status_code != 200:
            if response.status_code in (404, 409, 422):
                return False
            raise self._status_error(response, upstream_id)
        data = safe_json(response.content)
        return isinstance(data, dict) and data.get("status") == "canceled"

    async def probe(self, client: httpx.AsyncClient, api_key: str | None) -> ProbeResult:
        """``GET /v1/account``: proves the token and the network path without running a model."""
        start = self._clock.monotonic()
        try:
            headers = self._headers(api_key, None)
            response = await self._send("GET", f"{self._root}/account", client, headers)
        except UpstreamError as exc:
            return ProbeResult(ok=False, latency_s=self._clock.monotonic() - start, detail=exc.kind)
        latency = self._clock.monotonic() - start
        if response.status_code == 200:
            return ProbeResult(ok=True, latency_s=latency, detail="200")
        kind = self.classify(response.status_code, response.content, response.headers)
        return ProbeResult(ok=False, latency_s=latency, detail=f"{response.status_code} {kind}")

    def output_headers(self, url: str, api_key: str | None) -> dict[str, str]:
        """The token for file URLs on the API's own host (``/v1/files``), never elsewhere."""
        key = api_key or self.config.api_key
        ours, theirs = urlsplit(self._root), urlsplit(url)
        if key and (ours.scheme, ours.netloc) == (theirs.scheme, theirs.netloc):
            return {"Authorization": f"Bearer {key}"}
        return {}

    async def _fetch_secret(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        """Learn the account's default webhook secret once, when config names none."""
        try:
            response = await self._send(
                "GET", f"{self._root}/webhooks/default/secret", client, headers
            )
        except UpstreamError as exc:
            _log.warning("webhook.secret_unavailable", provider=self.config.name, outcome=exc.kind)
            return
        data = safe_json(response.content) if response.status_code == 200 else None
        key = data.get("key") if isinstance(data, dict) else None
        if isinstance(key, str) and key.startswith("whsec_"):
            self._secrets.append(key)
        else:
            _log.warning(
                "webhook.secret_unavailable",
                provider=self.config.name,
                status=response.status_code,
            )

    # -- parsing ----------------------------------------------------------------------

    def _prediction(self, response: httpx.Response) -> dict[str, Any]:
        data = safe_json(response.content)
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise UpstreamError(
                "malformed_response",
                "unparseable prediction",
                provider=self.config.name,
                http_status=response.status_code,
            )
        return data

    def parse_prediction(self, prediction: Mapping[str, Any]) -> PollResult:
        """A prediction object (from a response or a webhook) as a :class:`PollResult`."""
        native = prediction.get("status")
        status = STATUS_MAP.get(native) if isinstance(native, str) else None
        if status is None:
            raise UpstreamError(
                "malformed_response",
                f"unknown prediction status {native!r}",
                provider=self.config.name,
            )
        if status == "queued":
            return PollResult(status="queued", progress=0)
        if status == "running":
            return PollResult(status="running", progress=_progress(prediction.get("logs")))
        if status == "canceled":
            return PollResult(
                status="canceled", error_message=f"prediction {native}", error_kind="canceled"
            )
        if status == "failed":
            error = prediction.get("error")
            text = error if isinstance(error, str) else str(error or "prediction failed")
            return PollResult(
                status="failed", error_kind=classify_failure(text), error_message=text[:500]
            )
        return self._succeeded(prediction)

    def _succeeded(self, prediction: Mapping[str, Any]) -> PollResult:
        raw_input = prediction.get("input")
        inputs: Mapping[str, Any] = raw_input if isinstance(raw_input, Mapping) else {}
        output = prediction.get("output")
        urls: list[str]
        if isinstance(output, str):
            urls = [output]
        elif isinstance(output, list) and all(isinstance(u, str) for u in output):
            urls = list(output)
        else:
            urls = []
        if not urls:
            # Not worth polling again: the prediction is over and its output is unusable.
            removed = " (data removed)" if prediction.get("data_removed") else ""
            return PollResult(
                status="failed",
                error_kind="malformed_response",
                error_message=f"succeeded prediction has no output URLs{removed}",
            )
        first_ext = _content_type(urls[0], False)
        video = "duration" in inputs or first_ext.startswith("video/")
        duration: float | None = None
        if video:
            raw = inputs.get("duration")
            duration = (
                float(raw)
                if isinstance(raw, int | float) and not isinstance(raw, bool)
                else self.options.default_duration_s
            )
        width = inputs.get("width") if isinstance(inputs.get("width"), int) else None
        height = inputs.get("height") if isinstance(inputs.get("height"), int) else None
        outputs = tuple(
            Output(
                url=u,
                content_type=_content_type(u, video),
                width=width,
                height=height,
                duration_s=duration,
            )
            for u in urls
        )
        cost = self.config.cost
        cost_usd = (
            cost.per_video_s_usd * (duration or 0.0) * len(outputs)
            if video
            else cost.per_image_usd * len(outputs)
        )
        return PollResult(status="succeeded", progress=100, outputs=outputs, cost_usd=cost_usd)

    # -- errors -----------------------------------------------------------------------

    def _transport_error(
        self, kind: ErrorKind, exc: Exception, upstream_id: str | None = None
    ) -> UpstreamError:
        return transport_error(self.config.name, kind, exc, upstream_id)

    def _status_error(
        self, response: httpx.Response, upstream_id: str | None = None
    ) -> UpstreamError:
        status = response.status_code
        kind = self.classify(status, response.content, response.headers)
        data = safe_json(response.content)
        detail = data.get("detail") if isinstance(data, dict) else None
        text = f"replicate {status}"
        if kind != "auth" and isinstance(detail, str) and detail:
            text = f"{text}: {detail[:300]}"
        retry_after = parse_retry_after(response.headers, self._clock.time())
        if retry_after is None and status == 429 and isinstance(detail, str):
            m = _RESETS_IN.search(detail)
            retry_after = float(m.group(1)) if m else None
        return UpstreamError(
            kind,
            text,
            provider=self.config.name,
            http_status=status,
            retry_after_s=retry_after,
            upstream_id=upstream_id,
        )

    def classify(self, status: int | None, body: bytes, headers: Mapping[str, str]) -> ErrorKind:
        if status is None:
            return "upstream_unavailable"
        if status in (400, 422):
            data = safe_json(body)
            detail = data.get("detail") if isinstance(data, dict) else None
            if isinstance(detail, str) and _SAFETY.search(detail):
                return "content_policy"
        if status in _STATUS_KINDS:
            return _STATUS_KINDS[status]
        if status >= 500:
            return "upstream_unavailable"
        if status >= 400:
            return "invalid_request"
        return "malformed_response"

    # -- webhooks ---------------------------------------------------------------------

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, now: float) -> bool:
        """Standard Webhooks HMAC with ``webhook_secret`` (``whsec_…``), 300 s tolerance."""
        if not self._secrets:
            return False
        return verify_standard(self._secrets, headers, body, now)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """The prediction a webhook carries; ``None`` when it is not a prediction."""
        data = safe_json(body)
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            return None
        try:
            result = self.parse_prediction(data)
        except UpstreamError as exc:
            result = PollResult(
                status="failed", error_kind="malformed_response", error_message=exc.message
            )
        return WebhookEvent(upstream_id=data["id"], result=result)


#: The class :func:`router.adapters.registry.build_adapter` constructs for ``adapter: replicate``.
ADAPTER = ReplicateAdapter
