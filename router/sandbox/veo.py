"""An emulator of Google Veo (provider-contracts §5): Gemini API and Vertex AI on one port.

Gemini routes (``x-goog-api-key``):

- ``POST /v1beta/models/{model}:predictLongRunning`` → ``{"name": "models/{m}/operations/{id}"}``
- ``GET /v1beta/models/{model}/operations/{id}`` → the operation
- ``GET /v1beta/models/{model}`` → the model (the adapter's probe)
- ``GET /v1beta/files/{file}:download?alt=media`` → the MP4 (key required, never faulted)

Vertex routes (``Authorization: Bearer``, the API key or an access token from ``/token``):

- ``POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:predictLongRunning``
- ``POST …/models/{model}:fetchPredictOperation`` with ``{"operationName": …}``
- ``GET /v1beta1/publishers/google/models/{model}`` (the probe)
- ``POST /token``: Google's OAuth token endpoint for service accounts (the
  JWT-bearer grant, never faulted): accounts trusted with ``service_accounts``
  (``client_email`` → public key) get tokens that expire ``token_lifetime_s`` later
  on the emulator's clock; a key file's ``token_uri`` is :attr:`VeoEmulator.token_uri`.

Requests are validated as the contract says (aspect ratio, duration per model,
resolution, 1080p at 8 s on Veo 3.1, person generation, sample count, the
parameters the Gemini API refuses), and errors use Google's body
``{"error": {"code", "message", "status", "details"}}``; a 429 carries a
``google.rpc.RetryInfo`` ``retryDelay`` and no rate-limit headers. An operation
finishes :attr:`VeoEmulator.job_faults` ``duration_s`` after submission; a prompt
with the word ``forbidden`` finishes with ``raiMediaFilteredCount: 1`` and no
videos. Post-acceptance faults (operations that end in an error or never finish)
are set with :attr:`VeoEmulator.job_faults` or ``POST /_sandbox/job_faults``.

:attr:`VeoEmulator.accepted` counts accepted operations per ``X-Client-Request-Id``
(one Switchman attempt), so tests can prove nothing was submitted twice.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import random
import re
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import msgspec
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from breakers.clock import Clock, SystemClock
from router.config import FaultsConfig
from router.sandbox.faults import Decision
from router.sandbox.google_oauth import TokenIssuer
from router.sandbox.mp4 import mp4_bytes
from router.sandbox.server import Emulator, Handler

__all__ = ["DEFAULT_API_KEY", "MODELS", "JobFaults", "JobFaultsMixin", "VeoEmulator"]

DEFAULT_API_KEY = "AIzaSandboxVeoKey"

MODELS = (
    "veo-3.1-generate-preview",
    "veo-3.1-fast-generate-preview",
    "veo-3.0-generate-001",
    "veo-3.0-fast-generate-001",
    "veo-2.0-generate-001",
)
_RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080)}
_COMMON_PARAMS = frozenset(
    {
        "aspectRatio",
        "durationSeconds",
        "negativePrompt",
        "personGeneration",
        "resolution",
        "sampleCount",
        "enhancePrompt",
        "numberOfVideos",
    }
)
#: Parameters only Vertex takes; the Gemini API refuses them (contracts §5a).
_VERTEX_PARAMS = frozenset(
    {
        "seed",
        "fps",
        "generateAudio",
        "storageUri",
        "compressionQuality",
        "resizeMode",
        "pubsubTopic",
    }
)
_INSTANCE_FIELDS = frozenset({"prompt", "image", "lastFrame", "referenceImages", "mask"})
_FORBIDDEN = re.compile(r"\bforbidden\b", re.IGNORECASE)
_FILE = re.compile(r"^vid-[0-9a-f]+-([0-9]{2,4})x([0-9]{2,4})-([0-9]{1,3})s:download$")
_JSON = "application/json"
_REMEMBERED = 10_000
_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_GRPC_STATUS = {3: "INVALID_ARGUMENT", 8: "RESOURCE_EXHAUSTED", 13: "INTERNAL", 14: "UNAVAILABLE"}


class JobFaults(msgspec.Struct, forbid_unknown_fields=True):
    """What happens to jobs *after* the emulator accepted them."""

    #: Seconds from acceptance to the end of a job.
    duration_s: Annotated[float, msgspec.Meta(ge=0)] = 0.3
    #: Share of accepted jobs that end in an error.
    error_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    #: Share of accepted jobs that never finish.
    stall_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    #: The error a faulted job ends with (a google.rpc.Code for Veo; 14 = UNAVAILABLE).
    error_code: int = 14


class JobFaultsMixin:
    """``job_faults`` plus ``GET``/``POST /_sandbox/job_faults`` and a seeded draw per job."""

    job_faults: JobFaults
    _job_rng: random.Random

    def _init_job_faults(self, seed: int) -> None:
        self.job_faults = JobFaults()
        self._job_rng = random.Random(seed)

    def draw_job_fate(self) -> str:
        """``ok``, ``error`` or ``stall`` for a newly accepted job."""
        f = self.job_faults
        if f.stall_ratio > 0 and self._job_rng.random() < f.stall_ratio:
            return "stall"
        if f.error_ratio > 0 and self._job_rng.random() < f.error_ratio:
            return "error"
        return "ok"

    def job_fault_routes(self) -> list[tuple[str, str, Handler]]:
        """The admin routes (served unfaulted, like the base class's ``/_sandbox/*``)."""
        return [
            ("GET", "/_sandbox/job_faults", self._get_job_faults),
            ("POST", "/_sandbox/job_faults", self._set_job_faults),
        ]

    async def _get_job_faults(self, _request: web.Request) -> web.Response:
        return web.json_response(body=msgspec.json.encode(self.job_faults))

    async def _set_job_faults(self, request: web.Request) -> web.Response:
        try:
            self.job_faults = msgspec.json.decode(await request.read(), type=JobFaults)
        except msgspec.DecodeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(body=msgspec.json.encode(self.job_faults))


@dataclass(slots=True)
class _Operation:
    name: str
    flavour: str  # gemini | vertex
    model: str
    created: float
    fate: str  # ok | error | stall | rai
    width: int
    height: int
    duration_s: int
    samples: int
    storage_uri: str | None


class _Invalid(Exception):
    """Raised inside validation; becomes a 400 INVALID_ARGUMENT."""


def google_error(
    code: int,
    message: str,
    *,
    status: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> web.Response:
    """Google's JSON error response."""
    body = {
        "error": {
            "code": code,
            "message": message,
            "status": status or _HTTP_STATUS.get(code, "UNKNOWN"),
            **({"details": details} if details else {}),
        }
    }
    return web.Response(status=code, body=msgspec.json.encode(body), content_type=_JSON)


class VeoEmulator(JobFaultsMixin, Emulator):
    """Veo on loopback; ``api_key`` is its only key, and Vertex's static bearer token."""

    provider: ClassVar[str] = "veo"

    def __init__(
        self,
        faults: FaultsConfig | None = None,
        *,
        api_key: str | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        recent: int = 50,
        service_accounts: Mapping[str, rsa.RSAPublicKey] | None = None,
        token_lifetime_s: int = 3600,
    ) -> None:
        super().__init__(faults, clock=clock, seed=seed, recent=recent)
        self._init_job_faults(seed)
        self.api_key = api_key or DEFAULT_API_KEY
        self._clock: Clock = clock or SystemClock()
        #: The token endpoint: trusted service accounts and the access tokens it issued.
        self.tokens = TokenIssuer(
            self._clock, accounts=service_accounts, lifetime_s=token_lifetime_s
        )
        self._prefix = os.urandom(3).hex()
        self._seq = 0
        self.operations: OrderedDict[str, _Operation] = OrderedDict()
        #: Accepted operations per ``X-Client-Request-Id`` (``-`` when absent).
        self.accepted: Counter[str] = Counter()

    # -- routes -----------------------------------------------------------------------

    def api_routes(self) -> list[tuple[str, str, Handler]]:
        vertex = "/v1/projects/{project}/locations/{location}/publishers/google/models/{action}"
        return [
            ("POST", "/v1beta/models/{action}", self._gemini_action),
            ("GET", "/v1beta/models/{model}", self._gemini_model),
            ("GET", "/v1beta/models/{model}/operations/{op}", self._gemini_operation),
            ("POST", vertex, self._vertex_action),
            ("GET", "/v1beta1/publishers/google/models/{model}", self._vertex_model),
        ]

    def plain_routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("GET", "/v1beta/files/{file}", self._download),
            ("POST", "/token", self._token),
            *self.job_fault_routes(),
        ]

    @property
    def token_uri(self) -> str:
        """The token endpoint's URL: a service-account key file's ``token_uri``."""
        return f"{self.base_url}/token"

    # -- hooks ------------------------------------------------------------------------

    def fault_response(self, decision: Decision) -> web.Response:
        status = decision.status or 500
        if status == 429:
            delay = math.ceil(decision.retry_after_s or 1.0)
            return google_error(
                429,
                "Resource has been exhausted (e.g. check quota).",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {
                                "quotaMetric": "generativelanguage.googleapis.com/"
                                "predict_long_running_requests",
                                "quotaId": "PredictLongRunningRequestsPerMinutePerProject",
                            }
                        ],
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{delay}s",
                    },
                ],
            )
        if status == 503:
            return google_error(503, "The service is currently unavailable.")
        if status >= 500:
            return google_error(status, "Internal error encountered.")
        return google_error(status, "Injected error.")

    def malformed_response(self) -> web.Response:
        return web.Response(status=200, body=b'{"name": "models/', content_type=_JSON)

    # -- auth -------------------------------------------------------------------------

    def _gemini_denied(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if key == self.api_key:
            return None
        if not key:
            return google_error(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        return google_error(
            400,
            "API key not valid. Please pass a valid API key.",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        )

    def _vertex_denied(self, request: web.Request) -> web.Response | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme == "Bearer" and (token == self.api_key or self.tokens.valid(token)):
            return None
        return google_error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential. See "
            "https://developers.google.com/identity/sign-in/web/devconsole-project.",
        )

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        status, body = self.tokens.exchange(form, self.token_uri)
        return web.Response(status=status, body=msgspec.json.encode(body), content_type=_JSON)

    # -- Gemini -----------------------------------------------------------------------

    async def _gemini_action(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._gemini_denied(request)) is not None:
            return denied
        model, _, verb = request.match_info["action"].partition(":")
        if verb != "predictLongRunning":
            return google_error(404, f"Method {verb or 'POST'} not found on models/{model}.")
        if model not in MODELS:
            return google_error(
                404,
                f"models/{model} is not found for API version v1beta, or is not supported "
                "for predictLongRunning. Call ListModels to see the list of available models "
                "and their supported methods.",
            )
        return await self._create(request, "gemini", model, f"models/{model}")

    async def _gemini_model(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._gemini_denied(request)) is not None:
            return denied
        return self._model_info(request.match_info["model"], "v1beta")

    async def _gemini_operation(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._gemini_denied(request)) is not None:
            return denied
        name = f"models/{request.match_info['model']}/operations/{request.match_info['op']}"
        op = self.operations.get(name)
        if op is None or op.flavour != "gemini":
            return google_error(404, f"Operation {name} not found.")
        return self._json(self._operation_body(op))

    # -- Vertex -----------------------------------------------------------------------

    async def _vertex_action(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._vertex_denied(request)) is not None:
            return denied
        m = request.match_info
        model, _, verb = m["action"].partition(":")
        resource = (
            f"projects/{m['project']}/locations/{m['location']}/publishers/google/models/{model}"
        )
        if model not in MODELS:
            return google_error(
                404,
                f"Publisher Model `{resource}` not found.",
            )
        if verb == "predictLongRunning":
            return await self._create(request, "vertex", model, resource)
        if verb == "fetchPredictOperation":
            return await self._fetch(request, resource)
        return google_error(404, f"Method {verb or 'POST'} not found on {resource}.")

    async def _vertex_model(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._vertex_denied(request)) is not None:
            return denied
        return self._model_info(request.match_info["model"], "v1beta1")

    async def _fetch(self, request: web.Request, resource: str) -> web.StreamResponse:
        try:
            raw = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return google_error(400, "Invalid JSON payload received.")
        name = raw.get("operationName") if isinstance(raw, dict) else None
        if not isinstance(name, str) or not name:
            return google_error(400, "operationName is required.")
        op = self.operations.get(name)
        if op is None or op.flavour != "vertex" or not name.startswith(f"{resource}/operations/"):
            return google_error(404, f"Operation {name} not found.")
        return self._json(self._operation_body(op))

    # -- shared -----------------------------------------------------------------------

    def _model_info(self, model: str, version: str) -> web.Response:
        if model not in MODELS:
            return google_error(404, f"models/{model} is not found for API version {version}.")
        return self._json(
            {
                "name": f"models/{model}",
                "displayName": model,
                "supportedGenerationMethods": ["predictLongRunning"],
            }
        )

    async def _create(
        self, request: web.Request, flavour: str, model: str, resource: str
    ) -> web.StreamResponse:
        try:
            raw = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return google_error(400, "Invalid JSON payload received. Unexpected token.")
        try:
            prompt, params = _validate(raw, flavour, model)
        except _Invalid as exc:
            return google_error(400, str(exc))
        self._seq += 1
        op_id = f"{self._prefix}{self._seq:08x}"
        name = f"{resource}/operations/{op_id}"
        long, short = _RESOLUTIONS[params["resolution"]]
        width, height = (long, short) if params["aspectRatio"] == "16:9" else (short, long)
        fate = "rai" if _FORBIDDEN.search(prompt) else self.draw_job_fate()
        self.operations[name] = _Operation(
            name=name,
            flavour=flavour,
            model=model,
            created=self._clock.monotonic(),
            fate=fate,
            width=width,
            height=height,
            duration_s=params["durationSeconds"],
            samples=params["sampleCount"],
            storage_uri=params.get("storageUri"),
        )
        while len(self.operations) > _REMEMBERED:
            self.operations.popitem(last=False)
        self.accepted[request.headers.get("X-Client-Request-Id", "-")] += 1
        return self._json({"name": name})

    def _operation_body(self, op: _Operation) -> dict[str, Any]:
        elapsed = self._clock.monotonic() - op.created
        total = self.job_faults.duration_s
        if op.fate == "stall" or elapsed < total:
            # Google leaves ``done`` out of a fresh operation and says false later.
            return {"name": op.name} if elapsed < total / 2 else {"name": op.name, "done": False}
        if op.fate == "error":
            code = self.job_faults.error_code
            return {
                "name": op.name,
                "done": True,
                "error": {
                    "code": code,
                    "message": f"Video generation failed ({_GRPC_STATUS.get(code, 'ERROR')}). "
                    "Please try again later.",
                },
            }
        if op.fate == "rai":
            payload: dict[str, Any] = {
                "raiMediaFilteredCount": op.samples,
                "raiMediaFilteredReasons": [
                    "Your prompt or input was blocked by our safety filters "
                    "(support code 58061214)."
                ],
            }
            samples: list[dict[str, Any]] = []
        else:
            payload = {"raiMediaFilteredCount": 0, "raiMediaFilteredReasons": []}
            samples = [self._sample(op, i) for i in range(op.samples)]
        if op.flavour == "gemini":
            if samples:
                payload["generatedSamples"] = samples
            response = {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                "PredictLongRunningResponse",
                "generateVideoResponse": payload,
            }
        else:
            if samples:
                payload["videos"] = samples
            response = {
                "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
                **payload,
            }
        return {"name": op.name, "done": True, "response": response}

    def _sample(self, op: _Operation, index: int) -> dict[str, Any]:
        op_id = op.name.rsplit("/", 1)[-1]
        if op.flavour == "gemini":
            name = f"vid-{op_id}{index:x}-{op.width}x{op.height}-{op.duration_s}s"
            return {"video": {"uri": f"{self.base_url}/v1beta/files/{name}:download?alt=media"}}
        if op.storage_uri:
            prefix = op.storage_uri.rstrip("/")
            return {"gcsUri": f"{prefix}/{op_id}/sample_{index}.mp4", "mimeType": "video/mp4"}
        video = mp4_bytes(op.width, op.height, float(op.duration_s))
        return {
            "bytesBase64Encoded": base64.b64encode(video).decode("ascii"),
            "mimeType": "video/mp4",
        }

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._gemini_denied(request)) is not None:
            return denied
        m = _FILE.match(request.match_info["file"])
        if m is None or request.query.get("alt") != "media":
            return google_error(404, "File not found.")
        width, height, seconds = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if not (16 <= width <= 4096 and 16 <= height <= 4096 and 1 <= seconds <= 60):
            return google_error(404, "File not found.")
        return web.Response(body=mp4_bytes(width, height, float(seconds)), content_type="video/mp4")

    @staticmethod
    def _json(body: dict[str, Any]) -> web.Response:
        return web.Response(body=msgspec.json.encode(body), content_type=_JSON)


def _validate(raw: Any, flavour: str, model: str) -> tuple[str, dict[str, Any]]:
    """The prompt and the parameters with defaults; :class:`_Invalid` as Veo words it."""
    if not isinstance(raw, dict):
        raise _Invalid("Invalid JSON payload received. Expected an object.")
    allowed_top = {"instances", "parameters"} | (
        {"webhookConfig"} if flavour == "gemini" else set()
    )
    if flavour == "vertex":
        allowed_top.add("labels")
    for key in raw:
        if key not in allowed_top:
            raise _Invalid(
                f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
            )
    instances = raw.get("instances")
    if not isinstance(instances, list) or len(instances) != 1 or not isinstance(instances[0], dict):
        raise _Invalid("instances must hold exactly one instance.")
    instance = instances[0]
    for key in instance:
        if key not in _INSTANCE_FIELDS or (key == "mask" and flavour == "gemini"):
            raise _Invalid(
                f"Invalid JSON payload received. Unknown name \"{key}\" at 'instances[0]': "
                "Cannot find field."
            )
    prompt = instance.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Invalid("The prompt is required for video generation.")
    image = instance.get("image")
    if image is not None:
        _check_image(image, flavour)
    params = raw.get("parameters", {})
    if not isinstance(params, dict):
        raise _Invalid("parameters must be an object.")
    allowed = _COMMON_PARAMS | (_VERTEX_PARAMS if flavour == "vertex" else frozenset())
    for key in params:
        if key not in allowed:
            if key in _VERTEX_PARAMS:
                raise _Invalid(f"`{key}` isn't supported by this model in the Gemini API.")
            raise _Invalid(
                f"Invalid JSON payload received. Unknown name \"{key}\" at 'parameters': "
                "Cannot find field."
            )
    aspect = params.setdefault("aspectRatio", "16:9")
    if aspect not in ("16:9", "9:16"):
        raise _Invalid(f"Unsupported aspect ratio: {aspect}. Supported: 16:9, 9:16.")
    durations = (5, 6, 8) if model.startswith("veo-2") else (4, 6, 8)
    duration = params.setdefault("durationSeconds", 8)
    if isinstance(duration, bool) or duration not in durations:
        raise _Invalid(
            f"The number value for `durationSeconds` is out of bound. Supported values: "
            f"{', '.join(map(str, durations))}."
        )
    params["durationSeconds"] = int(duration)
    resolution = params.setdefault("resolution", "720p")
    if resolution not in _RESOLUTIONS or (resolution == "1080p" and model.startswith("veo-2")):
        raise _Invalid(f"Unsupported resolution: {resolution}.")
    if resolution == "1080p" and model.startswith("veo-3.1") and duration != 8:
        raise _Invalid("1080p is only supported with 8 seconds duration.")
    samples = params.setdefault("sampleCount", 1)
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 4:
        raise _Invalid("sampleCount must be between 1 and 4.")
    person = params.get("personGeneration")
    if person is not None:
        allowed_people = {"allow_all", "allow_adult", "dont_allow"}
        if flavour == "gemini":
            allowed_people = {"allow_adult"} if image is not None else {"allow_all"}
        if person not in allowed_people:
            raise _Invalid(f"personGeneration {person!r} is not allowed for this request.")
    seed = params.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise _Invalid("seed must be a non-negative integer.")
    storage = params.get("storageUri")
    if storage is not None and (not isinstance(storage, str) or not storage.startswith("gs://")):
        raise _Invalid("storageUri must be a gs:// URI.")
    return prompt, params


def _check_image(image: Any, flavour: str) -> None:
    if not isinstance(image, dict):
        raise _Invalid("image must be an object.")
    mime = image.get("mimeType")
    if mime not in ("image/png", "image/jpeg", "image/webp"):
        raise _Invalid(f"Unsupported image mimeType: {mime}.")
    if "gcsUri" in image:
        if flavour == "gemini":
            raise _Invalid("gcsUri isn't supported in the Gemini API.")
        return
    data = image.get("bytesBase64Encoded")
    if not isinstance(data, str) or not data:
        raise _Invalid("image.bytesBase64Encoded is required.")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid("image.bytesBase64Encoded is not valid base64.") from None


#: The class :func:`router.sandbox.build_emulator` constructs for ``veo``.
EMULATOR = VeoEmulator
