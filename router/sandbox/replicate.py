"""An emulator of Replicate's predictions API (provider-contracts §1), with fault injection.

Faulted routes (``Authorization: Bearer <token>``):

- ``POST /v1/models/{owner}/{name}/predictions``,
  ``POST /v1/deployments/{owner}/{name}/predictions`` and ``POST /v1/predictions``
  (with ``version``): create; ``201`` with the prediction in ``starting``;
- ``GET /v1/predictions/{id}``: ``starting`` → ``processing`` (with tqdm-style
  progress in ``logs``) → ``succeeded`` | ``failed``; ``canceled`` after a cancel;
- ``POST /v1/predictions/{id}/cancel``;
- ``GET /v1/account`` and ``GET /v1/webhooks/default/secret``.

``GET /files/{name}`` serves the outputs (PNG or MP4; the size and duration are
in the name, so no per-file state is kept). Errors are problem+json bodies
``{title?, detail, status}``; input validation is a 422 listing
``invalid_fields``; a throttled call is a 429 ``Request was throttled…`` with
``retry-after``, ``ratelimit-remaining`` and ``ratelimit-reset``.

A prompt containing ``forbidden`` fails with the NSFW text Replicate's image
models use; ``job_faults.fail_ratio`` fails accepted predictions with ``E1000``.
Completion webhooks are signed per Standard Webhooks with :data:`DEFAULT_WEBHOOK_SECRET`
and carry a stable ``webhook-id`` across retries.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import re
from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec
from aiohttp import web

from breakers.clock import Clock
from router.adapters.webhook_sigs import sign_standard
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

__all__ = ["DEFAULT_API_KEY", "DEFAULT_WEBHOOK_SECRET", "ReplicateEmulator"]

DEFAULT_API_KEY = "r8_sandbox"
DEFAULT_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"switchman-replicate-sandbox-key!").decode()

_PROBLEM = "application/problem+json"
_JSON = "application/json"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(:[0-9a-f]{64})?$")
_VIDEO_MODEL = re.compile(r"video|veo|kling|wan-|hunyuan|ltx|luma|minimax|seedance", re.IGNORECASE)
_CANCEL_AFTER = re.compile(r"^(\d+|(\d+h)?(\d+m)?(\d+s)?)$")
_PREFER_WAIT = re.compile(r"^wait(=([1-9]|[1-9][0-9]|60))?$")
_ASPECT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
_EVENTS = frozenset({"start", "output", "logs", "completed"})
_PNG_FILE = re.compile(r"^[a-z0-9]+-[0-9]+-([0-9]{2,5})x([0-9]{2,5})\.png$")
_MP4_FILE = re.compile(r"^[a-z0-9]+-([0-9]{2,5})x([0-9]{2,5})-([0-9]+(?:\.[0-9]+)?)s\.mp4$")
_STEPS = 4
NSFW_ERROR = (
    "All generated images contained NSFW content. Try running it again with a different prompt."
)
FAILED_ERROR = "Prediction failed for an unknown reason. Please try again. (E1000)"


def _problem(
    status: int,
    detail: str,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {"detail": detail, "status": status}
    if title is not None:
        body = {"title": title, **body}
    body.update(extra)
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type=_PROBLEM, headers=headers
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_id() -> str:
    return base64.b32encode(os.urandom(20)).decode("ascii").lower()[:26]


class _Invalid(Exception):
    """Input validation failures, as Replicate lists them."""

    def __init__(self, fields: list[tuple[str, str, str]]) -> None:
        super().__init__("invalid input")
        self.fields = fields  # (field, type, description)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def validate_input(raw: Any, video: bool) -> dict[str, Any]:
    """A model input as Replicate's image/video models check it; :class:`_Invalid` if not."""
    if not isinstance(raw, dict):
        raise _Invalid([("input", "type", "Invalid type. Expected: object, given: null")])
    bad: list[tuple[str, str, str]] = []
    prompt = raw.get("prompt")
    if prompt is None:
        bad.append(("input", "required", "prompt is required"))
    elif not isinstance(prompt, str) or not prompt.strip():
        bad.append(("input.prompt", "invalid_type", "Invalid type. Expected: string"))
    for key in ("negative_prompt", "image", "output_format"):
        if key in raw and not isinstance(raw[key], str):
            bad.append((f"input.{key}", "invalid_type", "Invalid type. Expected: string"))
    ratio = raw.get("aspect_ratio")
    if ratio is not None and ratio not in _ASPECT_RATIOS:
        bad.append(
            (
                "input.aspect_ratio",
                "enum",
                "aspect_ratio must be one of the following: "
                + ", ".join(f'"{r}"' for r in _ASPECT_RATIOS),
            )
        )
    for key, low, high in (("width", 64, 2048), ("height", 64, 2048), ("fps", 1, 60)):
        value = raw.get(key)
        if value is None:
            continue
        if not _is_int(value):
            bad.append((f"input.{key}", "invalid_type", "Invalid type. Expected: integer"))
        elif not low <= value <= high:
            side = "greater than or equal to" if value < low else "less than or equal to"
            bound = low if value < low else high
            bad.append((f"input.{key}", "number_one_of", f"Must be {side} {bound}"))
    seed = raw.get("seed")
    if seed is not None and (not _is_int(seed) or seed < 0):
        bad.append(("input.seed", "invalid_type", "Invalid type. Expected: integer"))
    n = raw.get("num_outputs", 1)
    if not _is_int(n):
        bad.append(("input.num_outputs", "invalid_type", "Invalid type. Expected: integer"))
    elif not 1 <= n <= 4:
        side = "greater than or equal to 1" if n < 1 else "less than or equal to 4"
        bad.append(("input.num_outputs", "number_one_of", f"Must be {side}"))
    fmt = raw.get("output_format", "png")
    if isinstance(fmt, str) and fmt not in ("png", "jpg", "webp"):
        bad.append(
            ("input.output_format", "enum", 'output_format must be one of "webp", "jpg", "png"')
        )
    duration = raw.get("duration")
    if duration is not None:
        if not _is_number(duration):
            bad.append(("input.duration", "invalid_type", "Invalid type. Expected: number"))
        elif not 1 <= duration <= 60:
            bad.append(("input.duration", "number_one_of", "Must be between 1 and 60"))
    if bad:
        raise _Invalid(bad)
    params = dict(raw)
    if video:
        params.setdefault("duration", 5)
    return params


class ReplicateEmulator(AsyncJobEmulator):
    """Replicate's predictions API on loopback; ``api_key`` is the only token it accepts."""

    provider: ClassVar[str] = "replicate"

    def __init__(
        self,
        faults: FaultsConfig | None = None,
        *,
        api_key: str | None = None,
        webhook_secret: str | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        recent: int = 50,
    ) -> None:
        super().__init__(faults, clock=clock, seed=seed, recent=recent)
        self.api_key = api_key or DEFAULT_API_KEY
        self.webhook_secret = webhook_secret or DEFAULT_WEBHOOK_SECRET
        self._auth = f"Bearer {self.api_key}"

    # -- routes -----------------------------------------------------------------------

    def api_routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/models/{owner}/{name}/predictions", self._create_for_model),
            ("POST", "/v1/deployments/{owner}/{name}/predictions", self._create_for_model),
            ("POST", "/v1/predictions", self._create_for_version),
            ("GET", "/v1/predictions/{id}", self._get),
            ("POST", "/v1/predictions/{id}/cancel", self._cancel),
            ("GET", "/v1/account", self._account),
            ("GET", "/v1/webhooks/default/secret", self._secret),
        ]

    def plain_routes(self) -> list[tuple[str, str, Handler]]:
        return [*super().plain_routes(), ("GET", "/files/{name}", self._file)]

    # -- hooks ------------------------------------------------------------------------

    def fault_response(self, decision: Decision) -> web.Response:
        status = decision.status or 500
        headers: dict[str, str] = {}
        if decision.retry_after_s is not None:
            headers["retry-after"] = str(math.ceil(decision.retry_after_s))
        if status == 429:
            wait = math.ceil(decision.retry_after_s or 1)
            return _problem(
                429,
                f"Request was throttled. Your rate limit resets in ~{wait}s.",
                headers=headers,
            )
        if status >= 500:
            title = "Service Unavailable" if status == 503 else "Internal Server Error"
            return _problem(status, "The server is temporarily unavailable.", title, headers)
        return _problem(status, "Injected error.")

    def malformed_response(self) -> web.Response:
        return web.Response(status=200, body=b'{"id": "x", "status": ', content_type=_JSON)

    def decorate(self, response: web.StreamResponse, decision: Decision) -> None:
        if decision.limit is not None:
            response.headers["ratelimit-remaining"] = str(int(decision.remaining or 0))
            response.headers["ratelimit-reset"] = str(math.ceil(decision.reset_s or 0.0))

    # -- handlers ---------------------------------------------------------------------

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == self._auth:
            return None
        return _problem(401, "You did not pass a valid authentication token", "Unauthenticated")

    async def _account(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        body = {"type": "user", "username": "sandbox", "name": "Sandbox", "github_url": None}
        return web.Response(body=msgspec.json.encode(body), content_type=_JSON)

    async def _secret(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        return web.Response(
            body=msgspec.json.encode({"key": self.webhook_secret}), content_type=_JSON
        )

    async def _create_for_model(self, request: web.Request) -> web.Response:
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        return await self._create(request, model)

    async def _create_for_version(self, request: web.Request) -> web.Response:
        return await self._create(request, None)

    async def _create(self, request: web.Request, model: str | None) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            raw = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return _problem(400, "The request body is not valid JSON.", "Invalid JSON")
        if not isinstance(raw, dict):
            return _problem(400, "The request body must be a JSON object.", "Invalid JSON")
        version = "hidden"
        if model is None:
            ref = raw.get("version")
            if not isinstance(ref, str) or not (_HEX64.match(ref) or _VERSION.match(ref)):
                return _problem(
                    422,
                    "The specified version does not exist (or perhaps you don't have "
                    "permission to use it?)",
                    "Invalid version or not permitted",
                )
            if ":" in ref:
                model, version = ref.split(":", 1)
            elif _HEX64.match(ref):
                model, version = "sandbox/versioned-model", ref
            else:
                model = ref
        cancel_after = request.headers.get("Cancel-After")
        if cancel_after is not None and not _CANCEL_AFTER.match(cancel_after.strip()):
            return _problem(400, f"Invalid Cancel-After header: {cancel_after!r}", "Bad request")
        webhook = raw.get("webhook")
        if webhook is not None and (
            not isinstance(webhook, str) or not webhook.startswith(("https://", "http://"))
        ):
            return self._invalid([("webhook", "format", "Does not match format 'uri'")])
        events = raw.get("webhook_events_filter")
        if events is not None and (
            not isinstance(events, list) or not all(e in _EVENTS for e in events)
        ):
            return self._invalid(
                [
                    (
                        "webhook_events_filter",
                        "enum",
                        'webhook_events_filter must be a subset of "start", "output", "logs", '
                        '"completed"',
                    )
                ]
            )
        video = bool(_VIDEO_MODEL.search(model)) or (
            isinstance(raw.get("input"), dict) and "duration" in raw["input"]
        )
        try:
            params = validate_input(raw.get("input"), video)
        except _Invalid as exc:
            return self._invalid(exc.fields)
        wants_completed = events is None or "completed" in events
        self.count_submission(request, webhook if isinstance(webhook, str) else None)
        job = self.new_job(
            _new_id(),
            "video" if video else "image",
            model,
            params,
            webhook if isinstance(webhook, str) and wants_completed else None,
        )
        job.extra["version"] = version
        status = 201
        prefer = (request.headers.get("Prefer") or "").strip()
        if _PREFER_WAIT.match(prefer):
            limit = int(prefer.partition("=")[2] or 60)
            # Sync mode: hold the request until the prediction ends or the limit passes.
            remaining = min(float(limit), job.done_at - self._clock.monotonic())
            if job.outcome is not Outcome.STALLED and remaining > 0:
                await asyncio.sleep(remaining)
            if job.phase(self._clock.monotonic()) != "done":
                status = 202
        return self._json(self.prediction(job), status)

    def _invalid(self, fields: list[tuple[str, str, str]]) -> web.Response:
        detail = "".join(f"- {f}: {d}\n" for f, _t, d in fields)
        invalid = [{"type": t, "field": f, "description": d} for f, t, d in fields]
        return _problem(422, detail, "Input validation failed", invalid_fields=invalid)

    @staticmethod
    def _json(body: dict[str, Any], status: int = 200) -> web.Response:
        return web.Response(status=status, body=msgspec.json.encode(body), content_type=_JSON)

    async def _get(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return _problem(404, "The requested prediction does not exist.", "Not found")
        return self._json(self.prediction(job))

    async def _cancel(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return _problem(404, "The requested prediction does not exist.", "Not found")
        if job.phase(self._clock.monotonic()) not in ("done", "canceled"):
            self.cancel_job(job)
            if job.webhook:
                self._send(job)
        return self._json(self.prediction(job))

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
        return _problem(404, "Not found.")

    # -- the prediction object --------------------------------------------------------

    def _status(self, job: EmulatedJob, now: float) -> str:
        phase = job.phase(now)
        if phase == "canceled":
            return "canceled"
        if phase == "queued":
            return "starting"
        if phase == "running":
            return "processing"
        if job.outcome is Outcome.SUCCEEDED:
            return "succeeded"
        return "failed"

    def _outputs(self, job: EmulatedJob) -> str | list[str]:
        if job.kind == "video":
            w, h = video_dims(job.params)
            d = float(job.params.get("duration", 5))
            return f"{self.base_url}/files/{job.id}-{w}x{h}-{d:g}s.mp4"
        w, h = image_dims(job.params)
        n = job.params.get("num_outputs", 1)
        return [f"{self.base_url}/files/{job.id}-{i}-{w}x{h}.png" for i in range(n)]

    def _logs(self, job: EmulatedJob, now: float) -> str:
        if job.phase(now) == "queued":
            return ""
        done = math.floor(job.run_fraction(now) * _STEPS)
        lines = [f"Using seed: {job.params.get('seed', 42)}"]
        for i in range(done + 1):
            bar = "█" * (i * 10 // _STEPS)
            lines.append(f"{i * 100 // _STEPS:3d}%|{bar:<10}| {i}/{_STEPS}")
        return "\n".join(lines) + "\n"

    def prediction(self, job: EmulatedJob) -> dict[str, Any]:
        """``job`` as Replicate's prediction object, at the clock's now."""
        now = self._clock.monotonic()
        status = self._status(job, now)
        root = f"{self.base_url}/v1/predictions/{job.id}"
        started = job.created_at + job.queue_s if status != "starting" else None
        terminal = status in ("succeeded", "failed", "canceled")
        completed: float | None = None
        if status == "canceled" and job.canceled_at is not None:
            completed = job.created_at + (job.canceled_at - job.created)
        elif terminal:
            completed = job.created_at + job.queue_s + job.run_s
        body: dict[str, Any] = {
            "id": job.id,
            "model": job.model,
            "version": job.extra.get("version", "hidden"),
            "input": job.params,
            "logs": self._logs(job, now),
            "output": self._outputs(job) if status == "succeeded" else None,
            "data_removed": False,
            "error": None,
            "status": status,
            "source": "api",
            "created_at": _iso(job.created_at),
            "started_at": _iso(started) if started is not None else None,
            "completed_at": _iso(completed) if completed is not None else None,
            "urls": {
                "get": root,
                "cancel": f"{root}/cancel",
                "web": f"https://replicate.com/p/{job.id}",
                "stream": f"{self.base_url}/v1/stream/{job.id}",
            },
        }
        if status == "failed":
            body["error"] = NSFW_ERROR if job.outcome is Outcome.CONTENT_POLICY else FAILED_ERROR
        if terminal:
            body["metrics"] = {
                "predict_time": round(job.run_s, 4),
                "total_time": round(job.queue_s + job.run_s, 4),
            }
        return body

    # -- webhooks ---------------------------------------------------------------------

    async def on_complete(self, job: EmulatedJob) -> None:
        self._send(job)

    def _send(self, job: EmulatedJob) -> None:
        assert job.webhook is not None
        body = msgspec.json.encode(self.prediction(job))
        msg_id = f"msg_{job.id}_completed"
        secret = self.webhook_secret
        clock = self._clock

        def sign(payload: bytes) -> dict[str, str]:
            ts = int(clock.time())
            return {
                "webhook-id": msg_id,
                "webhook-timestamp": str(ts),
                "webhook-signature": sign_standard(secret, msg_id, ts, payload),
            }

        self.send_webhook(job.webhook, msg_id, body, sign)

    def webhook_headers(self, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
        """Headers signing ``body`` as this emulator's webhooks are signed (for tests)."""
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_standard(self.webhook_secret, msg_id, timestamp, body),
        }


#: The class :func:`router.sandbox.build_emulator` constructs for ``replicate``.
EMULATOR = ReplicateEmulator
