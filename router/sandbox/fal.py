"""An emulator of fal.ai's queue API (provider-contracts §2), with fault injection.

Faulted routes (``Authorization: Key <key>``):

- ``POST /{owner}/{app}[/{subpath}][?fal_webhook=<url>]``: submit; ``200`` with
  ``request_id`` and the ``status_url``/``response_url``/``cancel_url``, built
  from owner/app only, the way fal builds them;
- ``GET /{owner}/{app}/requests/{id}/status[?logs=1]``: ``202`` ``IN_QUEUE`` (with
  ``queue_position``) → ``202`` ``IN_PROGRESS`` → ``200`` ``COMPLETED`` (with
  ``error``/``error_type`` when the runner failed);
- ``GET /{owner}/{app}/requests/{id}``: the result (``images`` or ``video``), or
  the failure's status and body (``422`` ``content_policy_violation`` for a
  prompt containing ``forbidden``, reached after ``COMPLETED`` as fal does);
- ``PUT /{owner}/{app}/requests/{id}/cancel``: ``202 CANCELLATION_REQUESTED``,
  ``400 ALREADY_COMPLETED`` or ``404 NOT_FOUND``. A canceled request is removed
  (its status is then a 404).

Plain routes: ``GET /files/{name}`` (PNG/MP4 outputs, size and duration in the
name) and ``GET /.well-known/jwks.json`` (the Ed25519 key webhooks are signed
with; derived from ``seed``, so a test can rebuild it).

Validation errors are 422 ``{"detail": [{"loc", "msg", "type"}]}``; platform
errors carry ``error_type`` in the body and ``X-Fal-Error-Type``. Video models
are recognised by name (``video``, ``kling``, ``veo``, …).
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from typing import Any, ClassVar

import msgspec
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from breakers.clock import Clock
from router.adapters.webhook_sigs import ed25519_jwk, sign_fal
from router.config import FaultsConfig
from router.sandbox.async_jobs import (
    AsyncJobEmulator,
    EmulatedJob,
    Outcome,
    image_dims,
    video_dims,
)
from router.sandbox.faults import Decision
from router.sandbox.media import png_bytes
from router.sandbox.mp4 import mp4_bytes
from router.sandbox.server import Handler

__all__ = ["DEFAULT_API_KEY", "DEFAULT_USER_ID", "JWKS_PATH", "FalEmulator", "sandbox_signing_key"]

DEFAULT_API_KEY = "fal-sandbox-key"
DEFAULT_USER_ID = "sandbox-user"
JWKS_PATH = "/.well-known/jwks.json"

_JSON = "application/json"
_OWNER = r"/{owner:[A-Za-z0-9][\w.-]*}"
_VIDEO_MODEL = re.compile(r"video|veo|kling|wan|hunyuan|ltx|luma|minimax|seedance", re.IGNORECASE)
_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
_VIDEO_RATIOS = ("16:9", "9:16", "1:1")
_PNG_FILE = re.compile(r"^[0-9a-f-]+-[0-9]+-([0-9]{2,5})x([0-9]{2,5})\.png$")
_MP4_FILE = re.compile(r"^[0-9a-f-]+-([0-9]{2,5})x([0-9]{2,5})-([0-9]+(?:\.[0-9]+)?)s\.mp4$")
_PLATFORM_ERRORS = {
    500: "internal_error",
    502: "runner_connection_timeout",
    503: "runner_scheduling_failure",
    504: "request_timeout",
}
CONTENT_POLICY_DETAIL = {
    "loc": ["body", "prompt"],
    "msg": "The content could not be processed because it contained material flagged by a "
    "content checker.",
    "type": "content_policy_violation",
    "url": "https://docs.fal.ai/errors#content_policy_violation",
}


def sandbox_signing_key(seed: int = 0) -> Ed25519PrivateKey:
    """The emulator's webhook signing key for ``seed`` (deterministic, test-only)."""
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(f"switchman-fal-sandbox:{seed}".encode()).digest()
    )


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type=_JSON, headers=headers
    )


def _detail(loc: str, msg: str, type_: str, **ctx: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"loc": ["body", loc], "msg": msg, "type": type_}
    if ctx:
        item["ctx"] = ctx
    return item


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_input(raw: Any, video: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(params, detail)``: the model input with defaults, or what is wrong with it."""
    if not isinstance(raw, dict):
        return {}, [
            {"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}
        ]
    bad: list[dict[str, Any]] = []
    prompt = raw.get("prompt")
    if prompt is None:
        bad.append(_detail("prompt", "field required", "value_error.missing"))
    elif not isinstance(prompt, str):
        bad.append(_detail("prompt", "str type expected", "type_error.str"))
    for key in ("negative_prompt", "image_url"):
        if key in raw and not isinstance(raw[key], str):
            bad.append(_detail(key, "str type expected", "type_error.str"))
    seed = raw.get("seed")
    if seed is not None and not _is_int(seed):
        bad.append(_detail("seed", "value is not a valid integer", "type_error.integer"))
    params = dict(raw)
    if video:
        duration = raw.get("duration", "5")
        value = (
            int(duration)
            if isinstance(duration, str) and duration.isdigit()
            else (duration if _is_int(duration) else None)
        )
        if value is None or not 1 <= value <= 60:
            bad.append(_detail("duration", "ensure this value is between 1 and 60", "value_error"))
        else:
            params["duration"] = value
        ratio = raw.get("aspect_ratio", "16:9")
        if ratio not in _VIDEO_RATIOS:
            bad.append(
                _detail(
                    "aspect_ratio",
                    "value is not a valid enumeration member; permitted: "
                    + ", ".join(f"'{r}'" for r in _VIDEO_RATIOS),
                    "type_error.enum",
                    enum_values=list(_VIDEO_RATIOS),
                )
            )
        params["aspect_ratio"] = ratio
        return params, bad
    n = raw.get("num_images", 1)
    if not _is_int(n):
        bad.append(_detail("num_images", "value is not a valid integer", "type_error.integer"))
    elif not 1 <= n <= 4:
        msg, type_, limit = (
            ("ensure this value is greater than or equal to 1", "value_error.number.not_ge", 1)
            if n < 1
            else ("ensure this value is less than or equal to 4", "value_error.number.not_le", 4)
        )
        bad.append(_detail("num_images", msg, type_, limit_value=limit))
    size = raw.get("image_size", "landscape_4_3")
    if isinstance(size, str):
        if size not in _PRESETS:
            bad.append(
                _detail(
                    "image_size",
                    "value is not a valid enumeration member; permitted: "
                    + ", ".join(f"'{p}'" for p in _PRESETS),
                    "type_error.enum",
                    enum_values=list(_PRESETS),
                )
            )
        else:
            params["width"], params["height"] = _PRESETS[size]
    elif isinstance(size, dict):
        w, h = size.get("width"), size.get("height")
        if not (isinstance(w, int) and isinstance(h, int) and 16 <= w <= 4096 and 16 <= h <= 4096):
            bad.append(
                _detail(
                    "image_size",
                    "width and height must be integers between 16 and 4096",
                    "value_error",
                )
            )
        else:
            params["width"], params["height"] = w, h
    else:
        bad.append(_detail("image_size", "value is not a valid dict", "type_error.dict"))
    fmt = raw.get("output_format", "jpeg")
    if fmt not in ("jpeg", "png"):
        bad.append(
            _detail(
                "output_format",
                "value is not a valid enumeration member; permitted: 'jpeg', 'png'",
                "type_error.enum",
                enum_values=["jpeg", "png"],
            )
        )
    params["num_images"] = n
    return params, bad


class FalEmulator(AsyncJobEmulator):
    """fal.ai's queue API on loopback; ``api_key`` is the only key it accepts."""

    provider: ClassVar[str] = "fal"

    def __init__(
        self,
        faults: FaultsConfig | None = None,
        *,
        api_key: str | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        recent: int = 50,
    ) -> None:
        super().__init__(faults, clock=clock, seed=seed, recent=recent)
        self.api_key = api_key or DEFAULT_API_KEY
        self._auth = f"Key {self.api_key}"
        self.user_id = DEFAULT_USER_ID
        self.signing_key = sandbox_signing_key(seed)
        self.jwks = {"keys": [ed25519_jwk(self.signing_key.public_key(), f"sandbox-{seed}")]}

    # -- routes -----------------------------------------------------------------------

    def api_routes(self) -> list[tuple[str, str, Handler]]:
        req = _OWNER + "/{app}/requests/{id}"
        return [
            ("GET", req + "/status", self._status),
            ("PUT", req + "/cancel", self._cancel),
            ("GET", req, self._result),
            ("POST", _OWNER + "/{app}", self._submit),
            ("POST", _OWNER + "/{app}/{sub:.+}", self._submit),
        ]

    def plain_routes(self) -> list[tuple[str, str, Handler]]:
        return [
            *super().plain_routes(),
            ("GET", "/files/{name}", self._file),
            ("GET", JWKS_PATH, self._jwks),
        ]

    # -- hooks ------------------------------------------------------------------------

    def fault_response(self, decision: Decision) -> web.Response:
        status = decision.status or 500
        headers: dict[str, str] = {}
        if decision.retry_after_s is not None:
            headers["Retry-After"] = str(math.ceil(decision.retry_after_s))
        if status == 429:
            return _json({"detail": "Too many requests. Please retry later."}, 429, headers)
        if status >= 500:
            error_type = _PLATFORM_ERRORS.get(status, "internal_error")
            headers["X-Fal-Error-Type"] = error_type
            headers["X-Fal-Retryable"] = "true"
            detail = error_type.replace("_", " ").capitalize()
            return _json({"detail": detail, "error_type": error_type}, status, headers)
        return _json({"detail": "Injected error."}, status)

    def malformed_response(self) -> web.Response:
        return web.Response(status=200, body=b'{"request_id": ', content_type=_JSON)

    # -- handlers ---------------------------------------------------------------------

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        got = request.headers.get("Authorization")
        if got == self._auth:
            return None
        if not got:
            return _json({"detail": "Missing authorization header"}, 401)
        return _json({"detail": "Invalid authorization credentials"}, 401)

    def _urls(self, app: str, request_id: str) -> dict[str, str]:
        root = f"{self.base_url}/{app}/requests/{request_id}"
        return {
            "response_url": root,
            "status_url": f"{root}/status",
            "cancel_url": f"{root}/cancel",
        }

    async def _submit(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        info = request.match_info
        app = f"{info['owner']}/{info['app']}"
        model = f"{app}/{info['sub']}" if info.get("sub") else app
        try:
            raw = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return _json(
                {"detail": [{"loc": ["body"], "msg": "Invalid JSON", "type": "value_error.json"}]},
                422,
            )
        video = bool(_VIDEO_MODEL.search(model))
        params, bad = validate_input(raw, video)
        if bad:
            return _json({"detail": bad}, 422, {"X-Fal-Retryable": "false"})
        webhook = request.query.get("fal_webhook")
        if webhook is not None and not webhook.startswith(("https://", "http://")):
            return _json(
                {
                    "detail": [
                        {
                            "loc": ["query", "fal_webhook"],
                            "msg": "invalid or missing URL scheme",
                            "type": "value_error.url.scheme",
                        }
                    ]
                },
                422,
            )
        self.count_submission(request, webhook)
        request_id = str(uuid.uuid4())
        job = self.new_job(request_id, "video" if video else "image", model, params, webhook)
        job.extra["app"] = app
        body: dict[str, Any] = {"request_id": request_id, **self._urls(app, request_id)}
        body["queue_position"] = self._queue_position(job)
        if webhook:
            body["gateway_request_id"] = request_id
        return _json(body)

    def _find(self, request: web.Request) -> EmulatedJob | None:
        info = request.match_info
        job = self.jobs.get(info["id"])
        if job is None or job.extra.get("app") != f"{info['owner']}/{info['app']}":
            return None
        return job

    def _queue_position(self, job: EmulatedJob) -> int:
        """Jobs accepted earlier that are still queued (newest-first scan, stops early)."""
        now = self._clock.monotonic()
        ahead = 0
        for other in reversed(self.jobs.values()):
            if other.created < now - max(other.queue_s, job.queue_s) - 1.0:
                break
            if other is not job and other.created < job.created:
                ahead += other.phase(now) == "queued"
        return ahead

    async def _status(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        job = self._find(request)
        if job is None or job.canceled_at is not None:
            return _json({"detail": "Request not found"}, 404)
        now = self._clock.monotonic()
        phase = job.phase(now)
        app = str(job.extra["app"])
        response_url = self._urls(app, job.id)["response_url"]
        want_logs = request.query.get("logs") == "1"
        if phase == "queued":
            return _json(
                {
                    "status": "IN_QUEUE",
                    "queue_position": self._queue_position(job),
                    "response_url": response_url,
                },
                202,
            )
        logs = self._logs(job, now) if want_logs else None
        if phase == "running":
            return _json({"status": "IN_PROGRESS", "logs": logs, "response_url": response_url}, 202)
        body: dict[str, Any] = {
            "status": "COMPLETED",
            "logs": logs,
            "metrics": {"inference_time": round(job.run_s, 4)},
            "response_url": response_url,
        }
        if job.outcome is Outcome.FAILED:
            body["error"] = "Runner disconnected"
            body["error_type"] = "runner_disconnected"
        return _json(body)

    def _logs(self, job: EmulatedJob, now: float) -> list[dict[str, Any]]:
        pct = round(job.run_fraction(now) * 100)
        return [
            {
                "message": f"Generating: {pct}%",
                "level": "INFO",
                "source": "user",
                "timestamp": job.created_at,
            }
        ]

    def _outcome_response(self, job: EmulatedJob) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The result endpoint's status, body and headers for a finished job."""
        if job.outcome is Outcome.CONTENT_POLICY:
            return 422, {"detail": [CONTENT_POLICY_DETAIL]}, {"X-Fal-Retryable": "false"}
        if job.outcome is Outcome.FAILED:
            headers = {"X-Fal-Error-Type": "runner_disconnected", "X-Fal-Retryable": "true"}
            return (
                503,
                {"detail": "Runner disconnected", "error_type": "runner_disconnected"},
                headers,
            )
        return 200, self.result(job), {}

    def result(self, job: EmulatedJob) -> dict[str, Any]:
        """A succeeded job's model output."""
        seed = job.params.get("seed", 42)
        if job.kind == "video":
            w, h = video_dims(job.params)
            d = float(job.params.get("duration", 5))
            name = f"{job.id}-{w}x{h}-{d:g}s.mp4"
            return {
                "video": {
                    "url": f"{self.base_url}/files/{name}",
                    "content_type": "video/mp4",
                    "file_name": name,
                    "file_size": len(mp4_bytes(w, h, d)),
                },
                "seed": seed,
            }
        w, h = image_dims(job.params, default=(1024, 768))
        fmt = job.params.get("output_format", "jpeg")
        images = []
        for i in range(int(job.params.get("num_images", 1))):
            name = f"{job.id}-{i}-{w}x{h}.png"
            images.append(
                {
                    "url": f"{self.base_url}/files/{name}",
                    "content_type": "image/png" if fmt == "png" else "image/jpeg",
                    "file_name": name,
                    "file_size": len(png_bytes(w, h)),
                    "width": w,
                    "height": h,
                }
            )
        return {
            "images": images,
            "seed": seed,
            "has_nsfw_concepts": [False] * len(images),
            "prompt": job.params.get("prompt", ""),
            "timings": {"inference": round(job.run_s, 4)},
        }

    async def _result(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        job = self._find(request)
        if job is None or job.canceled_at is not None:
            return _json({"detail": "Request not found"}, 404)
        if job.phase(self._clock.monotonic()) != "done":
            return _json({"detail": "Request is still in progress"}, 400)
        status, body, headers = self._outcome_response(job)
        return _json(body, status, headers)

    async def _cancel(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        job = self._find(request)
        if job is None or job.canceled_at is not None:
            return _json({"status": "NOT_FOUND"}, 404)
        if job.phase(self._clock.monotonic()) == "done":
            return _json({"status": "ALREADY_COMPLETED"}, 400)
        self.cancel_job(job)
        return _json({"status": "CANCELLATION_REQUESTED"}, 202)

    async def _jwks(self, _request: web.Request) -> web.Response:
        return _json(self.jwks)

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if (m := _PNG_FILE.match(name)) is not None:
            w, h = int(m.group(1)), int(m.group(2))
            if 16 <= w <= 4096 and 16 <= h <= 4096:
                return web.Response(body=png_bytes(w, h), content_type="image/png")
        elif (m := _MP4_FILE.match(name)) is not None:
            w, h, d = int(m.group(1)), int(m.group(2)), float(m.group(3))
            if 16 <= w <= 4096 and 16 <= h <= 4096 and 0 < d <= 60:
                return web.Response(body=mp4_bytes(w, h, d), content_type="video/mp4")
        return _json({"detail": "File not found"}, 404)

    # -- webhooks ---------------------------------------------------------------------

    def webhook_body(self, job: EmulatedJob) -> bytes:
        """The completion webhook fal would POST for ``job``."""
        status, payload, _headers = self._outcome_response(job)
        body: dict[str, Any] = {"request_id": job.id, "gateway_request_id": job.id}
        if status == 200:
            body |= {"status": "OK", "payload": payload}
        else:
            body |= {
                "status": "ERROR",
                "error": f"Invalid status code: {status}",
                "payload": payload,
            }
        return msgspec.json.encode(body)

    def webhook_headers(self, request_id: str, body: bytes, timestamp: int) -> dict[str, str]:
        """The signed ``X-Fal-Webhook-*`` headers for ``body`` (also for tests)."""
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": self.user_id,
            "X-Fal-Webhook-Timestamp": str(timestamp),
            "X-Fal-Webhook-Signature": sign_fal(
                self.signing_key, request_id, self.user_id, timestamp, body
            ),
        }

    async def on_complete(self, job: EmulatedJob) -> None:
        assert job.webhook is not None
        clock = self._clock

        def sign(payload: bytes) -> dict[str, str]:
            return self.webhook_headers(job.id, payload, int(clock.time()))

        self.send_webhook(job.webhook, job.id, self.webhook_body(job), sign)


#: The class :func:`router.sandbox.build_emulator` constructs for ``fal``.
EMULATOR = FalEmulator
