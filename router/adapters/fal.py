"""The ``fal`` adapter: fal.ai's queue API (provider-contracts §2).

``submit`` makes ``POST {base}/{model_id}`` (plus ``?fal_webhook=<url>`` when
the engine hands over a webhook URL) and keeps the ``status_url``,
``response_url`` and ``cancel_url`` it is given: fal builds them from the
model's owner/app only, never its subpath, so they cannot be derived from the
model id in general. (After a restart those URLs are gone; the adapter then
rebuilds them from the model's first two path segments, which is right for
every model whose id has no subpath.) ``poll`` reads the status (``202`` while
``IN_QUEUE``/``IN_PROGRESS``, ``200`` once ``COMPLETED``) and, once complete,
the result: a ``200`` is success, anything else is the job's failure.

fal has no ``canceled`` state: a cancel answered ``CANCELLATION_REQUESTED``
is remembered here and later polls report ``canceled`` (contracts §8).

Webhooks are Ed25519-signed (``X-Fal-Webhook-*`` headers) and checked against
a JWKS. ``verify_webhook`` is synchronous and must not do I/O, so the JWKS comes
from ``options.jwks`` (inline) or is fetched from ``options.jwks_url`` ahead of
time: in :meth:`probe`, and in :meth:`submit` before the first webhook URL is
handed out (and again when the cache is older than 24 h or a verification
failed since, which is how a key rotation is picked up). A relative
``jwks_url`` (``/.well-known/jwks.json``) is resolved against ``base_url``,
which is how the sandbox emulator serves its key.

Request mapping: ``prompt``, ``negative_prompt``, ``seed``; images get
``num_images``, ``output_format: png`` and ``image_size`` (``{width, height}``
or the preset matching ``aspect_ratio``); videos get ``duration`` (whole
seconds, as a string, the way Kling-style models take it) and
``aspect_ratio``; an input image is ``image_url``.

Progress: fal reports none, so ``IN_QUEUE`` maps to 0–9 from ``queue_position``
(moving up the queue counts as progress for the engine's stall detector) and
``IN_PROGRESS`` to 10.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urljoin, urlsplit

import httpx
import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from breakers.clock import Clock, SystemClock
from router.adapters.base import (
    AttemptContext,
    PollResult,
    ProbeResult,
    SubmitResult,
    WebhookEvent,
)
from router.adapters.capabilities import capability_problem
from router.adapters.http_util import (
    parse_rate_limit,
    parse_retry_after,
    safe_json,
    transport_error,
)
from router.adapters.webhook_sigs import ed25519_keys_from_jwks, header, verify_fal
from router.config import ProviderConfig
from router.errors import ConfigError, ErrorKind, UpstreamError
from router.models import GenerationRequest, Output

__all__ = ["FalAdapter", "FalOptions", "image_size_for"]

_log = structlog.get_logger("switchman.adapters.fal")

DEFAULT_JWKS_URL: Final = "https://rest.alpha.fal.ai/.well-known/jwks.json"
#: fal says to cache its JWKS for at most a day.
JWKS_MAX_AGE_S: Final = 24 * 3600.0
#: Accepted jobs whose URLs are remembered (oldest forgotten first).
_MAX_JOBS: Final = 50_000

#: ``aspect_ratio`` → fal's ``image_size`` presets.
IMAGE_SIZE_PRESETS: Final[dict[str, str]] = {
    "1:1": "square_hd",
    "4:3": "landscape_4_3",
    "3:4": "portrait_4_3",
    "16:9": "landscape_16_9",
    "9:16": "portrait_16_9",
}
#: fal's infrastructure ``error_type`` values (contracts §2) and their kinds.
ERROR_TYPE_KINDS: Final[dict[str, ErrorKind]] = {
    "request_timeout": "timeout",
    "startup_timeout": "timeout",
    "runner_scheduling_failure": "upstream_unavailable",
    "runner_connection_timeout": "upstream_unavailable",
    "runner_disconnected": "upstream_unavailable",
    "runner_server_error": "upstream_unavailable",
    "internal_error": "upstream_unavailable",
}
#: ``detail[].type`` values that decide a 4xx's kind whatever the status says.
DETAIL_TYPE_KINDS: Final[dict[str, ErrorKind]] = {
    "content_policy_violation": "content_policy",
    "no_media_generated": "upstream_unavailable",  # the model produced nothing; retry elsewhere
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
_CONTENT_TYPES: Final = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "webm": "video/webm",
}


class FalOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``providers[].options`` for ``adapter: fal``."""

    #: Where fal publishes its webhook keys; relative URLs resolve against ``base_url``.
    jwks_url: str = DEFAULT_JWKS_URL
    #: An inline JWKS (``{"keys": [...]}``); when set, nothing is fetched.
    jwks: dict[str, Any] | None = None
    #: Video seconds assumed when a request names no duration.
    default_duration_s: float = 5.0


@dataclass(frozen=True, slots=True)
class _FalJob:
    """What an accepted request needs later: its URLs and what cost it bills."""

    status_url: str
    response_url: str
    cancel_url: str
    video: bool
    duration_s: float | None


def image_size_for(request: GenerationRequest) -> str | dict[str, int] | None:
    """fal's ``image_size``: exact ``{width, height}``, a preset, or ``None`` for the default."""
    if request.width and request.height:
        return {"width": request.width, "height": request.height}
    ratio = request.aspect_ratio
    if ratio is None:
        return None
    if ratio in IMAGE_SIZE_PRESETS:
        return IMAGE_SIZE_PRESETS[ratio]
    # Any other ratio: about one megapixel, sides rounded to multiples of 16.
    w, h = (int(x) for x in ratio.split(":"))
    scale = math.sqrt(1024 * 1024 / (w * h))
    return {
        "width": max(16, round(w * scale / 16) * 16),
        "height": max(16, round(h * scale / 16) * 16),
    }


def _content_type(url: str, declared: Any, video: bool) -> str:
    if isinstance(declared, str) and "/" in declared:
        return declared
    ext = url.rsplit("?", 1)[0].rsplit(".", 1)[-1].lower()
    return _CONTENT_TYPES.get(ext, "video/mp4" if video else "image/png")


def _detail_types(data: Any) -> list[str]:
    detail = data.get("detail") if isinstance(data, dict) else None
    if not isinstance(detail, list):
        return []
    return [d["type"] for d in detail if isinstance(d, dict) and isinstance(d.get("type"), str)]


def _detail_text(data: Any) -> str:
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        msgs = [d.get("msg") for d in detail if isinstance(d, dict)]
        return "; ".join(m for m in msgs if isinstance(m, str))
    return ""


class FalAdapter:
    """fal.ai's queue (any ``owner/app[/subpath]`` model) behind the Adapter protocol."""

    #: Completion webhooks name the job and attempt, so the engine can reconcile by them.
    sends_webhooks = True

    def __init__(self, config: ProviderConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self._clock: Clock = clock or SystemClock()
        try:
            self.options = msgspec.convert(config.options, FalOptions)
        except msgspec.ValidationError as exc:
            raise ConfigError([f"providers.{config.name}.options: {exc}"]) from exc
        self._base = config.base_url.rstrip("/")
        self._timeout = httpx.Timeout(config.timeouts.request_s, connect=config.timeouts.connect_s)
        self._jobs: OrderedDict[str, _FalJob] = OrderedDict()
        self._canceled: OrderedDict[str, None] = OrderedDict()
        self._jwks_url = urljoin(self._base + "/", self.options.jwks_url)
        self._keys: tuple[Ed25519PublicKey, ...] = ()
        self._keys_at: float | None = None
        self._keys_suspect = False
        if self.options.jwks is not None:
            self._keys = ed25519_keys_from_jwks(self.options.jwks)
            self._keys_at = float("inf")  # inline keys never expire

    # -- selection --------------------------------------------------------------------

    def _model(self, request: GenerationRequest) -> str | None:
        return request.model or self.config.models.get(request.kind)

    def supports(self, request: GenerationRequest) -> str | None:
        if request.kind not in self.config.kinds:
            return f"{self.config.name} does not serve {request.kind}"
        model = self._model(request)
        if model is None:
            return f"no {request.kind} model configured"
        if model.count("/") < 1 or model.startswith("/") or "?" in model:
            return f"not a fal model id: {model!r}"
        caps = self.config.capabilities
        if request.kind == "video" and request.n > 1:
            return "fal video models produce one video per request"
        return capability_problem(caps, request)

    def _duration(self, request: GenerationRequest) -> float:
        return float(round(request.duration_s or self.options.default_duration_s))

    def estimate_cost(self, request: GenerationRequest) -> float:
        cost = self.config.cost
        if request.kind == "video":
            return cost.per_video_s_usd * self._duration(request)
        return cost.per_image_usd * request.n

    def build_input(self, request: GenerationRequest) -> dict[str, Any]:
        """The model input JSON for ``request``."""
        data: dict[str, Any] = {"prompt": request.prompt}
        if request.negative_prompt:
            data["negative_prompt"] = request.negative_prompt
        if request.seed is not None:
            data["seed"] = request.seed
        if request.input_image_url:
            data["image_url"] = request.input_image_url
        if request.kind == "video":
            data["duration"] = str(int(self._duration(request)))
            if request.aspect_ratio:
                data["aspect_ratio"] = request.aspect_ratio
        else:
            size = image_size_for(request)
            if size is not None:
                data["image_size"] = size
            data["num_images"] = request.n
            data["output_format"] = "png"
        return data

    def submit_url(self, model: str, webhook_url: str | None) -> str:
        """``{base}/{model_id}``, with ``fal_webhook`` when a webhook is wanted."""
        url = f"{self._base}/{model.strip('/')}"
        if webhook_url:
            url += "?fal_webhook=" + quote(webhook_url, safe="")
        return url

    def _derived_job(self, model: str, upstream_id: str) -> _FalJob:
        """The URLs fal would give for ``model``: owner/app only, never the subpath."""
        app = "/".join(model.strip("/").split("/")[:2])
        root = f"{self._base}/{app}/requests/{upstream_id}"
        return _FalJob(f"{root}/status", root, f"{root}/cancel", False, None)

    def _fallback_job(self, upstream_id: str) -> _FalJob:
        """URLs for a request this process did not submit (after a restart)."""
        model = self.config.models.get("image") or next(iter(self.config.models.values()), "")
        return self._derived_job(model, upstream_id)

    def _job(self, upstream_id: str) -> _FalJob:
        return self._jobs.get(upstream_id) or self._fallback_job(upstream_id)

    def _same_origin(self, url: Any) -> bool:
        """Whether ``url`` is on fal's host: the key is never sent anywhere else."""
        if not isinstance(url, str):
            return False
        ours, theirs = urlsplit(self._base), urlsplit(url)
        return (ours.scheme, ours.netloc) == (theirs.scheme, theirs.netloc)

    # -- calls ------------------------------------------------------------------------

    def _headers(self, api_key: str | None, ctx: AttemptContext | None) -> dict[str, str]:
        key = api_key or self.config.api_key
        if not key:
            raise UpstreamError("auth", "no FAL key configured", provider=self.config.name)
        headers = {"Authorization": f"Key {key}"}
        if ctx is not None:
            headers.update(ctx.trace_headers)
        return headers

    async def _send(
        self,
        method: str,
        url: str,
        client: httpx.AsyncClient,
        headers: Mapping[str, str],
        body: dict[str, Any] | None = None,
        upstream_id: str | None = None,
    ) -> httpx.Response:
        try:
            if body is None:
                return await client.request(
                    method, url, headers=dict(headers), timeout=self._timeout
                )
            return await client.request(
                method,
                url,
                content=msgspec.json.encode(body),
                headers=dict(headers) | {"Content-Type": "application/json"},
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise self._transport_error("timeout", exc, upstream_id) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error("upstream_unavailable", exc, upstream_id) from exc

    async def submit(self, request: GenerationRequest, ctx: AttemptContext) -> SubmitResult:
        model = self._model(request)
        if model is None:
            raise UpstreamError(
                "invalid_request", f"no {request.kind} model configured", provider=self.config.name
            )
        headers = self._headers(ctx.api_key, ctx)
        headers["X-Client-Request-Id"] = ctx.attempt_id
        if ctx.webhook_url:
            await self.refresh_jwks(ctx.client)
        url = self.submit_url(model, ctx.webhook_url)
        response = await self._send("POST", url, ctx.client, headers, self.build_input(request))
        if response.status_code not in (200, 201, 202):
            raise self._status_error(response)
        data = safe_json(response.content)
        request_id = data.get("request_id") if isinstance(data, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise UpstreamError(
                "malformed_response",
                "queue submit response has no request_id",
                provider=self.config.name,
                http_status=response.status_code,
            )
        assert isinstance(data, dict)
        fallback = self._derived_job(model, request_id)
        urls = [
            data.get(k) if self._same_origin(data.get(k)) else default
            for k, default in (
                ("status_url", fallback.status_url),
                ("response_url", fallback.response_url),
                ("cancel_url", fallback.cancel_url),
            )
        ]
        video = request.kind == "video"
        self._remember(
            request_id,
            _FalJob(
                str(urls[0]),
                str(urls[1]),
                str(urls[2]),
                video,
                self._duration(request) if video else None,
            ),
        )
        return SubmitResult(
            status="queued",
            upstream_id=request_id,
            progress=0,
            rate_limit=parse_rate_limit(response.headers),
        )

    def _remember(self, upstream_id: str, job: _FalJob) -> None:
        self._jobs[upstream_id] = job
        while len(self._jobs) > _MAX_JOBS:
            self._jobs.popitem(last=False)

    async def poll(self, upstream_id: str, ctx: AttemptContext) -> PollResult:
        if upstream_id in self._canceled:
            return PollResult(status="canceled", error_kind="canceled", error_message="canceled")
        job = self._job(upstream_id)
        headers = self._headers(ctx.api_key, ctx)
        response = await self._send("GET", job.status_url, ctx.client, headers, None, upstream_id)
        if response.status_code not in (200, 202):
            raise self._status_error(response, upstream_id)
        data = safe_json(response.content)
        status = data.get("status") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(status, str):
            raise UpstreamError(
                "malformed_response",
                "unparseable queue status",
                provider=self.config.name,
                http_status=response.status_code,
                upstream_id=upstream_id,
            )
        if status == "IN_QUEUE":
            return PollResult(status="queued", progress=self.queue_progress(data))
        if status == "IN_PROGRESS":
            return PollResult(status="running", progress=10)
        if status != "COMPLETED":
            raise UpstreamError(
                "malformed_response",
                f"unknown queue status {status!r}",
                provider=self.config.name,
                upstream_id=upstream_id,
            )
        error = data.get("error")
        if error:
            error_type = data.get("error_type")
            kind = (
                ERROR_TYPE_KINDS.get(error_type, "upstream_unavailable")
                if isinstance(error_type, str)
                else "upstream_unavailable"
            )
            return PollResult(status="failed", error_kind=kind, error_message=str(error)[:500])
        return await self._result(upstream_id, job, ctx, headers)

    @staticmethod
    def queue_progress(status: Mapping[str, Any]) -> int:
        """A hint from ``queue_position`` (0 = next): 0–9 while queued, so moving up is progress."""
        position = status.get("queue_position")
        if not isinstance(position, int) or isinstance(position, bool) or position < 0:
            return 0
        return max(0, 9 - min(position, 9))

    async def _result(
        self, upstream_id: str, job: _FalJob, ctx: AttemptContext, headers: Mapping[str, str]
    ) -> PollResult:
        response = await self._send("GET", job.response_url, ctx.client, headers, None, upstream_id)
        if response.status_code == 429:
            raise self._status_error(response, upstream_id)  # the poll failed, not the job
        if response.status_code != 200:
            err = self._status_error(response, upstream_id)
            return PollResult(status="failed", error_kind=err.kind, error_message=err.message)
        data = safe_json(response.content)
        if not isinstance(data, dict):
            return PollResult(
                status="failed",
                error_kind="malformed_response",
                error_message="unparseable result",
            )
        return self.parse_result(data, job)

    def parse_result(self, data: Mapping[str, Any], job: _FalJob | None = None) -> PollResult:
        """A completed request's output (``images``/``image``/``video``/``videos``)."""
        files: list[Any] = []
        for key in ("images", "videos"):
            if isinstance(data.get(key), list):
                files.extend(data[key])
        for key in ("image", "video"):
            if isinstance(data.get(key), dict):
                files.append(data[key])
        found_video = isinstance(data.get("video"), dict) or isinstance(data.get("videos"), list)
        video = found_video or (job is not None and job.video)
        duration = (
            (job.duration_s if job is not None else None) or self.options.default_duration_s
            if video
            else None
        )
        outputs: list[Output] = []
        for f in files:
            url = f.get("url") if isinstance(f, dict) else None
            if not isinstance(url, str) or not url:
                continue
            size = f.get("file_size")
            width, height = f.get("width"), f.get("height")
            outputs.append(
                Output(
                    url=url,
                    content_type=_content_type(url, f.get("content_type"), video),
                    width=width if isinstance(width, int) else None,
                    height=height if isinstance(height, int) else None,
                    duration_s=duration,
                    bytes=size if isinstance(size, int) else None,
                )
            )
        if not outputs:
            return PollResult(
                status="failed",
                error_kind="malformed_response",
                error_message="completed request has no output files",
            )
        cost = self.config.cost
        cost_usd = (
            cost.per_video_s_usd * (duration or 0.0) * len(outputs)
            if video
            else cost.per_image_usd * len(outputs)
        )
        return PollResult(
            status="succeeded", progress=100, outputs=tuple(outputs), cost_usd=cost_usd
        )

    async def cancel(self, upstream_id: str, ctx: AttemptContext) -> bool:
        """``PUT …/cancel``; ``True`` when fal took the request (``CANCELLATION_REQUESTED``)."""
        job = self._job(upstream_id)
        headers = self._headers(ctx.api_key, ctx)
        response = await self._send("PUT", job.cancel_url, ctx.client, headers, None, upstream_id)
        data = safe_json(response.content)
        status = data.get("status") if isinstance(data, dict) else None
        if response.status_code in (200, 202) and status in ("CANCELLATION_REQUESTED", "OK"):
            self._canceled[upstream_id] = None
            while len(self._canceled) > _MAX_JOBS:
                self._canceled.popitem(last=False)
            return True
        if response.status_code in (400, 404) or status in ("ALREADY_COMPLETED", "NOT_FOUND"):
            return False
        raise self._status_error(response, upstream_id)

    async def probe(self, client: httpx.AsyncClient, api_key: str | None) -> ProbeResult:
        """Status of a request id that cannot exist: 404 proves the key, 401/403 refute it.

        Also refreshes the webhook JWKS, so the first webhook finds the keys cached.
        """
        start = self._clock.monotonic()
        model = next(iter(self.config.models.values()), "fal-ai/flux")
        app = "/".join(model.strip("/").split("/")[:2])
        url = f"{self._base}/{app}/requests/00000000-0000-0000-0000-000000000000/status"
        try:
            headers = self._headers(api_key, None)
            response = await self._send("GET", url, client, headers)
        except UpstreamError as exc:
            return ProbeResult(ok=False, latency_s=self._clock.monotonic() - start, detail=exc.kind)
        latency = self._clock.monotonic() - start
        await self.refresh_jwks(client, force=True)
        if response.status_code in (200, 202, 404):
            return ProbeResult(ok=True, latency_s=latency, detail=str(response.status_code))
        kind = self.classify(response.status_code, response.content, response.headers)
        return ProbeResult(ok=False, latency_s=latency, detail=f"{response.status_code} {kind}")

    async def refresh_jwks(self, client: httpx.AsyncClient, *, force: bool = False) -> bool:
        """Fetch the JWKS when missing, older than a day, or suspect; ``True`` when keys are held.

        A failed fetch keeps the old keys (polling still completes the job).
        """
        if self.options.jwks is not None:
            return bool(self._keys)
        now = self._clock.time()
        fresh = self._keys_at is not None and now - self._keys_at < JWKS_MAX_AGE_S
        if fresh and not self._keys_suspect and not force:
            return bool(self._keys)
        try:
            response = await client.get(self._jwks_url, timeout=self._timeout)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            _log.warning("jwks.fetch_failed", provider=self.config.name, error=type(exc).__name__)
            return bool(self._keys)
        keys = ed25519_keys_from_jwks(safe_json(response.content))
        if response.status_code != 200 or not keys:
            _log.warning(
                "jwks.fetch_failed", provider=self.config.name, status=response.status_code
            )
            return bool(self._keys)
        self._keys, self._keys_at, self._keys_suspect = keys, now, False
        return True

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
        detail = _detail_text(data)
        types = _detail_types(data)
        text = f"fal {status}"
        if types:
            text += f" {types[0]}"
        if kind != "auth" and detail:
            text = f"{text}: {detail[:300]}"
        return UpstreamError(
            kind,
            text,
            provider=self.config.name,
            http_status=status,
            retry_after_s=parse_retry_after(response.headers, self._clock.time()),
            upstream_id=upstream_id,
        )

    def classify(self, status: int | None, body: bytes, headers: Mapping[str, str]) -> ErrorKind:
        if status is None:
            return "upstream_unavailable"
        data = safe_json(body)
        for t in _detail_types(data):
            if t in DETAIL_TYPE_KINDS:
                return DETAIL_TYPE_KINDS[t]
        error_type = header(headers, "x-fal-error-type")
        if error_type is None and isinstance(data, dict):
            raw = data.get("error_type")
            error_type = raw if isinstance(raw, str) else None
        if error_type in ERROR_TYPE_KINDS:
            return ERROR_TYPE_KINDS[error_type]
        retryable = (header(headers, "x-fal-retryable") or "").strip().lower()
        if retryable == "true" and status >= 400 and status not in (401, 403, 429):
            return "upstream_unavailable"
        if status in _STATUS_KINDS:
            return _STATUS_KINDS[status]
        if status >= 500:
            return "upstream_unavailable"
        if status >= 400:
            return "invalid_request"
        return "malformed_response"

    # -- webhooks ---------------------------------------------------------------------

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, now: float) -> bool:
        """Ed25519 over fal's headers and the body's SHA-256, against the cached JWKS."""
        if not self._keys:
            return False
        ok = verify_fal(self._keys, headers, body, now)
        if not ok:
            self._keys_suspect = True  # maybe a rotated key: refetch before the next webhook
        return ok

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """``{"request_id", "status": "OK"|"ERROR", "payload", "error"?}`` as a final state."""
        data = safe_json(body)
        if not isinstance(data, dict):
            return None
        request_id = data.get("request_id")
        status = data.get("status")
        if not isinstance(request_id, str) or status not in ("OK", "ERROR"):
            return None
        payload = data.get("payload")
        job = self._jobs.get(request_id)
        if status == "OK":
            if not isinstance(payload, dict):
                message = str(data.get("payload_error") or "webhook has no payload")
                return WebhookEvent(
                    request_id,
                    PollResult(
                        status="failed", error_kind="malformed_response", error_message=message
                    ),
                )
            return WebhookEvent(request_id, self.parse_result(payload, job))
        error = str(data.get("error") or "request failed")
        http_status: int | None = None
        if error.startswith("Invalid status code:"):
            try:
                http_status = int(error.rsplit(":", 1)[1])
            except ValueError:
                http_status = None
        payload_body = msgspec.json.encode(payload) if payload is not None else b""
        kind = self.classify(http_status or 500, payload_body, {})
        detail = _detail_text(payload)
        message = f"{error}: {detail}" if detail else error
        return WebhookEvent(
            request_id,
            PollResult(status="failed", error_kind=kind, error_message=message[:500]),
        )


#: The class :func:`router.adapters.registry.build_adapter` constructs for ``adapter: fal``.
ADAPTER = FalAdapter
