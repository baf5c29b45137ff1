"""An emulator of Stability AI's REST v2beta (provider-contracts §4), with fault injection.

Routes (faulted, ``authorization: Bearer`` auth):

- ``POST /v2beta/stable-image/generate/{ultra,core,sd3}``: multipart, synchronous; the
  PNG's bytes (``Accept: image/*``, headers ``finish-reason``/``seed``) or
  ``{"image","finish_reason","seed"}`` (``Accept: application/json``);
- ``POST /v2beta/image-to-video``: multipart with a 1024x576, 576x1024 or 768x768
  ``image``; ``{"id"}``;
- ``GET /v2beta/image-to-video/result/{id}`` and ``GET /v2beta/results/{id}``: 202
  ``in-progress`` for :attr:`JobFaults.run_s`, then 200 with an MP4 (404 once expired).

Errors use Stability's body ``{"id", "name", "errors": [...]}``. A prompt containing
``forbidden`` is refused with 403 ``content_moderation``; one containing ``borderline``
succeeds with ``finish-reason: CONTENT_FILTERED``. More than
:attr:`JobFaults.rate_limit_requests` requests in ``rate_limit_window_s`` lock the
key out for ``lockout_s`` (429, no ``Retry-After``, as the real API does).

Beyond the shared :class:`~router.sandbox.faults.FaultInjector` faults, accepted
image-to-video generations can be made to fail (500 on their result), stall
(202 forever) or be filtered, at ratios set in :attr:`StabilityEmulator.job_faults`
or over HTTP with ``POST /_sandbox/job_faults``. Submissions are counted per
``X-Client-Request-Id`` (:attr:`StabilityEmulator.submissions`) so tests can prove
an attempt was never sent twice.
"""

from __future__ import annotations

import base64
import math
import random
import re
import struct
from collections import Counter, deque
from dataclasses import dataclass
from typing import Annotated, ClassVar

import msgspec
from aiohttp import web

from breakers.clock import Clock, SystemClock
from router.config import FaultsConfig
from router.sandbox.faults import Decision
from router.sandbox.media import png_bytes, png_size
from router.sandbox.mp4 import mp4_bytes
from router.sandbox.server import Emulator, Handler

__all__ = [
    "DEFAULT_API_KEY",
    "VIDEO_DURATION_S",
    "JobFaults",
    "Part",
    "StabilityEmulator",
    "image_size",
    "parse_multipart",
]

DEFAULT_API_KEY = "sk-stability-sandbox"

Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]

_RATIOS = {
    "21:9": 21 / 9,
    "16:9": 16 / 9,
    "3:2": 3 / 2,
    "5:4": 5 / 4,
    "1:1": 1.0,
    "4:5": 4 / 5,
    "2:3": 2 / 3,
    "9:16": 9 / 16,
    "9:21": 9 / 21,
}
_STYLES = frozenset(
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
_SD3_MODELS = frozenset(
    {
        "sd3.5-large",
        "sd3.5-large-turbo",
        "sd3.5-medium",
        "sd3-large",
        "sd3-large-turbo",
        "sd3-medium",
    }
)
_CORE_FIELDS = frozenset(
    {"prompt", "aspect_ratio", "negative_prompt", "seed", "style_preset", "output_format"}
)
_FIELDS = {
    "core": _CORE_FIELDS,
    "ultra": _CORE_FIELDS | {"image", "strength"},
    "sd3": _CORE_FIELDS | {"image", "strength", "mode", "model", "cfg_scale"},
}
#: Output size in megapixels per endpoint (contracts §4).
_MEGAPIXELS = {"ultra": 1.0, "core": 1.5, "sd3": 1.0}
_VIDEO_FIELDS = frozenset({"image", "seed", "cfg_scale", "motion_bucket_id"})
_VIDEO_SIZES = ((1024, 576), (576, 1024), (768, 768))
#: SVD-XT renders 25 frames; the adapter bills the same ~4 s.
VIDEO_DURATION_S = 4.0
_MAX_SEED = 4_294_967_294
_FORBIDDEN = re.compile(r"\bforbidden\b", re.IGNORECASE)
_BORDERLINE = re.compile(r"\bborderline\b", re.IGNORECASE)
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_DISPOSITION_PARAM = re.compile(r'(\w+)="([^"]*)"')
_ID = re.compile(r"^[0-9a-f]{64}$")
_ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    413: "payload_too_large",
    422: "invalid_request",
    429: "rate_limit_exceeded",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


class JobFaults(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What happens to accepted image-to-video generations, and the native rate limit."""

    #: Share of generations whose result is a 500 ``internal_error`` (retryable).
    fail_ratio: Ratio = 0.0
    #: Share of generations that stay ``in-progress`` forever.
    stall_ratio: Ratio = 0.0
    #: Share of generations that end ``CONTENT_FILTERED``.
    filter_ratio: Ratio = 0.0
    #: Seconds a generation is ``in-progress``.
    run_s: Annotated[float, msgspec.Meta(ge=0)] = 0.3
    #: Requests allowed per window before the lockout; ``None`` turns it off.
    rate_limit_requests: Annotated[int, msgspec.Meta(ge=1)] | None = 150
    rate_limit_window_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    lockout_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    #: How long results stay fetchable.
    retention_s: Annotated[float, msgspec.Meta(gt=0)] = 86_400.0


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a multipart/form-data body."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None

    @property
    def text(self) -> str:
        """The part as UTF-8 text."""
        return self.data.decode("utf-8", "replace")


def parse_multipart(content_type: str, body: bytes) -> dict[str, Part]:
    """The parts of a multipart/form-data body by field name; ``ValueError`` when malformed."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ValueError("content-type: must be multipart/form-data")
    m = _BOUNDARY.search(content_type)
    if m is None:
        raise ValueError("content-type: multipart boundary is missing")
    delimiter = b"--" + m.group(1).encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise ValueError("body: malformed multipart/form-data")
    parts: dict[str, Part] = {}
    for chunk in chunks[1:-1]:
        chunk = chunk.removeprefix(b"\r\n").removesuffix(b"\r\n")
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("body: malformed multipart part")
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        params = dict(_DISPOSITION_PARAM.findall(headers.get("content-disposition", "")))
        if "name" not in params:
            raise ValueError("body: multipart part without a name")
        parts[params["name"]] = Part(data, params.get("filename"), headers.get("content-type"))
    return parts


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(width), int(height)
        pos += 2 + length
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a PNG or JPEG; ``None`` for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        try:
            return png_size(data)
        except ValueError:
            return None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def _output_size(family: str, ratio: str) -> tuple[int, int]:
    """A size near the endpoint's megapixels with ``ratio``'s shape, in multiples of 64."""
    area = _MEGAPIXELS[family] * 1024 * 1024
    shape = _RATIOS[ratio]
    height = math.sqrt(area / shape)
    width = height * shape
    return max(64, round(width / 64) * 64), max(64, round(height / 64) * 64)


@dataclass(slots=True)
class _Generation:
    created: float
    width: int
    height: int
    seed: int
    fate: str  # ok | fail | stall | filter


class StabilityEmulator(Emulator):
    """Stability AI v2beta on loopback; ``api_key`` is the only key it accepts."""

    provider: ClassVar[str] = "stability"

    def __init__(
        self,
        faults: FaultsConfig | None = None,
        *,
        api_key: str | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        recent: int = 50,
        job_faults: JobFaults | None = None,
    ) -> None:
        super().__init__(faults, clock=clock, seed=seed, recent=recent)
        self.api_key = api_key or DEFAULT_API_KEY
        self._auth = f"Bearer {self.api_key}"
        self._clock: Clock = clock or SystemClock()
        self._rng = random.Random(seed)
        self.job_faults = job_faults or JobFaults()
        self._initial_job_faults = self.job_faults
        self._seed = seed
        #: Submissions (image generations and video creations) per ``X-Client-Request-Id``.
        self.submissions: Counter[str] = Counter()
        self.generations: dict[str, _Generation] = {}
        self._window: deque[float] = deque()
        self._locked_until = -math.inf

    def duplicate_submissions(self) -> dict[str, int]:
        """Attempt ids that reached the API more than once."""
        return {k: v for k, v in self.submissions.items() if v > 1}

    # -- routes -----------------------------------------------------------------------

    def api_routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v2beta/stable-image/generate/{family}", self._generate),
            ("POST", "/v2beta/image-to-video", self._create_video),
            ("GET", "/v2beta/image-to-video/result/{id}", self._result),
            ("GET", "/v2beta/results/{id}", self._result),
        ]

    def plain_routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("GET", "/_sandbox/job_faults", self._get_job_faults),
            ("POST", "/_sandbox/job_faults", self._set_job_faults),
        ]

    # -- hooks ------------------------------------------------------------------------

    def _error(
        self, status: int, errors: list[str], name: str | None = None, **headers: str
    ) -> web.Response:
        body = {
            "id": f"{self._rng.getrandbits(128):032x}",
            "name": name or _ERROR_NAMES.get(status, "error"),
            "errors": errors,
        }
        return web.json_response(body=msgspec.json.encode(body), status=status, headers=headers)

    def fault_response(self, decision: Decision) -> web.Response:
        status = decision.status or 500
        headers: dict[str, str] = {}
        if decision.retry_after_s is not None:
            headers["retry-after"] = str(math.ceil(decision.retry_after_s))
        if status == 429:
            return self._error(
                429, ["You have exceeded the rate limit; please try again later."], **headers
            )
        if status >= 500:
            return self._error(
                status, ["An unexpected server error has occurred, please try again."], **headers
            )
        return self._error(status, ["Injected error."])

    def malformed_response(self) -> web.Response:
        return web.Response(
            status=200, body=b'{"image": "iVBORw0KGgoAAAANSUhEUg', content_type="application/json"
        )

    def decorate(self, response: web.StreamResponse, decision: Decision) -> None:
        response.headers.setdefault("x-request-id", f"{self._rng.getrandbits(128):032x}")

    # -- guards -----------------------------------------------------------------------

    def _denied(self, request: web.Request) -> web.Response | None:
        """The rate-limit lockout, then bearer auth."""
        jf = self.job_faults
        if jf.rate_limit_requests is not None:
            now = self._clock.monotonic()
            if now < self._locked_until:
                return self._locked_out()
            window = self._window
            while window and window[0] <= now - jf.rate_limit_window_s:
                window.popleft()
            window.append(now)
            if len(window) > jf.rate_limit_requests:
                self._locked_until = now + jf.lockout_s
                window.clear()
                return self._locked_out()
        got = request.headers.get("authorization")
        if got == self._auth:
            return None
        if not got:
            return self._error(401, ["authorization: missing"])
        return self._error(401, ["authorization: invalid API key"])

    def _locked_out(self) -> web.Response:
        jf = self.job_faults
        return self._error(
            429,
            [
                f"You have exceeded the rate limit of {jf.rate_limit_requests} requests within "
                f"a {jf.rate_limit_window_s:g} second period, and have been timed out for "
                f"{jf.lockout_s:g} seconds."
            ],
        )

    def _count_submission(self, request: web.Request) -> None:
        self.submissions[request.headers.get("X-Client-Request-Id", "")] += 1

    # -- images -----------------------------------------------------------------------

    async def _generate(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        self._count_submission(request)
        family = request.match_info["family"]
        if family not in _FIELDS:
            return self._error(404, [f"path: unknown endpoint generate/{family}"])
        accept = request.headers.get("accept", "image/*")
        if accept not in ("image/*", "application/json", "*/*"):
            return self._error(400, ["accept: must be image/* or application/json"])
        try:
            parts = parse_multipart(request.headers.get("content-type", ""), await request.read())
        except ValueError as exc:
            return self._error(400, [str(exc)])
        errors = _validate_image(family, parts)
        if errors:
            return self._error(400, errors)
        prompt = parts["prompt"].text
        if _FORBIDDEN.search(prompt):
            return self._error(
                403,
                [
                    "Your request was flagged by our content moderation system, as a result "
                    "your request was denied and you were not charged."
                ],
                name="content_moderation",
            )
        if "image" in parts:
            width, height = image_size(parts["image"].data) or (1024, 1024)
        else:
            ratio = parts["aspect_ratio"].text if "aspect_ratio" in parts else "1:1"
            width, height = _output_size(family, ratio)
        seed = int(parts["seed"].text) if "seed" in parts else 0
        seed = seed or self._rng.randint(1, _MAX_SEED)
        finish = "CONTENT_FILTERED" if _BORDERLINE.search(prompt) else "SUCCESS"
        data = png_bytes(width, height)
        if accept == "application/json":
            body = {
                "image": base64.b64encode(data).decode("ascii"),
                "finish_reason": finish,
                "seed": seed,
            }
            return web.json_response(body=msgspec.json.encode(body))
        return web.Response(
            body=data,
            content_type="image/png",
            headers={"finish-reason": finish, "seed": str(seed)},
        )

    # -- image-to-video ---------------------------------------------------------------

    async def _create_video(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        self._count_submission(request)
        try:
            parts = parse_multipart(request.headers.get("content-type", ""), await request.read())
        except ValueError as exc:
            return self._error(400, [str(exc)])
        errors, size = _validate_video(parts)
        if errors or size is None:
            return self._error(400, errors)
        seed = int(parts["seed"].text) if "seed" in parts else 0
        jf = self.job_faults
        draw = self._rng.random()
        if draw < jf.stall_ratio:
            fate = "stall"
        elif draw < jf.stall_ratio + jf.fail_ratio:
            fate = "fail"
        elif draw < jf.stall_ratio + jf.fail_ratio + jf.filter_ratio:
            fate = "filter"
        else:
            fate = "ok"
        gen_id = f"{self._rng.getrandbits(256):064x}"
        self._expire()
        self.generations[gen_id] = _Generation(
            self._clock.monotonic(),
            size[0],
            size[1],
            seed or self._rng.randint(1, _MAX_SEED),
            fate,
        )
        return web.json_response(body=msgspec.json.encode({"id": gen_id}))

    def _expire(self) -> None:
        cutoff = self._clock.monotonic() - self.job_faults.retention_s
        for gen_id in [k for k, g in self.generations.items() if g.created < cutoff]:
            del self.generations[gen_id]

    async def _result(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        accept = request.headers.get("accept", "video/*")
        if accept not in ("video/*", "application/json", "*/*"):
            return self._error(400, ["accept: must be video/* or application/json"])
        gen_id = request.match_info["id"]
        self._expire()
        gen = self.generations.get(gen_id)
        if gen is None:
            return self._error(404, [f"id: generation {gen_id} was not found or has expired"])
        elapsed = self._clock.monotonic() - gen.created
        if gen.fate == "stall" or elapsed < self.job_faults.run_s:
            return web.json_response(
                body=msgspec.json.encode({"id": gen_id, "status": "in-progress"}), status=202
            )
        if gen.fate == "fail":
            return self._error(500, ["An unexpected server error has occurred, please try again."])
        finish = "CONTENT_FILTERED" if gen.fate == "filter" else "SUCCESS"
        data = mp4_bytes(gen.width, gen.height, VIDEO_DURATION_S)
        if accept == "application/json":
            body = {
                "video": base64.b64encode(data).decode("ascii"),
                "finish_reason": finish,
                "seed": gen.seed,
            }
            return web.json_response(body=msgspec.json.encode(body))
        return web.Response(
            body=data,
            content_type="video/mp4",
            headers={"finish-reason": finish, "seed": str(gen.seed)},
        )

    # -- admin ------------------------------------------------------------------------

    async def _get_job_faults(self, _request: web.Request) -> web.Response:
        return web.json_response(body=msgspec.json.encode(self.job_faults))

    async def _reset(self, request: web.Request) -> web.Response:
        """Also restore the initial job faults and forget jobs and submissions."""
        self.job_faults = self._initial_job_faults
        self._rng = random.Random(self._seed)
        self.generations.clear()
        self._window.clear()
        self._locked_until = -math.inf
        self.submissions.clear()
        return await super()._reset(request)

    async def _set_job_faults(self, request: web.Request) -> web.Response:
        try:
            changes = msgspec.json.decode(await request.read())
            if not isinstance(changes, dict):
                raise TypeError("expected a JSON object")
            merged = msgspec.structs.asdict(self.job_faults) | changes
            self.job_faults = msgspec.convert(merged, JobFaults)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(body=msgspec.json.encode(self.job_faults))


def _number(parts: dict[str, Part], name: str, low: float, high: float, errors: list[str]) -> None:
    if name not in parts:
        return
    try:
        value = float(parts[name].text)
    except ValueError:
        errors.append(f"{name}: must be a number")
        return
    if not low <= value <= high:
        errors.append(f"{name}: must be between {low:g} and {high:g}")


def _integer(parts: dict[str, Part], name: str, low: int, high: int, errors: list[str]) -> None:
    if name not in parts:
        return
    text = parts[name].text
    if not text.isdigit() or not low <= int(text) <= high:
        errors.append(f"{name}: must be an integer between {low} and {high}")


def _validate_image(family: str, parts: dict[str, Part]) -> list[str]:
    """Every problem with an image request, in Stability's ``field: message`` form."""
    errors = [f"{name}: unknown field" for name in parts if name not in _FIELDS[family]]
    prompt = parts.get("prompt")
    if prompt is None or not prompt.text.strip():
        errors.append("prompt: is required")
    elif len(prompt.text) > 10_000:
        errors.append("prompt: must be at most 10000 characters")
    if "negative_prompt" in parts and len(parts["negative_prompt"].text) > 10_000:
        errors.append("negative_prompt: must be at most 10000 characters")
    if "aspect_ratio" in parts and parts["aspect_ratio"].text not in _RATIOS:
        errors.append(f"aspect_ratio: must be one of {', '.join(_RATIOS)}")
    formats = ("png", "jpeg") if family == "sd3" else ("png", "jpeg", "webp")
    if "output_format" in parts and parts["output_format"].text not in formats:
        errors.append(f"output_format: must be one of {', '.join(formats)}")
    if "style_preset" in parts and parts["style_preset"].text not in _STYLES:
        errors.append("style_preset: is not a known style preset")
    _integer(parts, "seed", 0, _MAX_SEED, errors)
    _number(parts, "strength", 0, 1, errors)
    _number(parts, "cfg_scale", 1, 10, errors)
    if family == "sd3" and "model" in parts and parts["model"].text not in _SD3_MODELS:
        errors.append(f"model: must be one of {', '.join(sorted(_SD3_MODELS))}")
    mode = parts["mode"].text if "mode" in parts else "text-to-image"
    if family == "sd3" and mode not in ("text-to-image", "image-to-image"):
        errors.append("mode: must be text-to-image or image-to-image")
    has_image = "image" in parts
    if family == "sd3" and mode == "image-to-image" and not has_image:
        errors.append("image: is required for image-to-image")
    if family == "sd3" and mode == "text-to-image" and has_image:
        errors.append("image: is only allowed with mode image-to-image")
    if has_image:
        if "strength" not in parts:
            errors.append("strength: is required when image is provided")
        size = image_size(parts["image"].data)
        if size is None:
            errors.append("image: must be a png or jpeg")
        elif min(size) < 64:
            errors.append("image: each side must be at least 64 pixels")
    return errors


def _validate_video(parts: dict[str, Part]) -> tuple[list[str], tuple[int, int] | None]:
    """Every problem with an image-to-video request, and the input image's size."""
    errors = [f"{name}: unknown field" for name in parts if name not in _VIDEO_FIELDS]
    _integer(parts, "seed", 0, _MAX_SEED, errors)
    _number(parts, "cfg_scale", 0, 10, errors)
    _integer(parts, "motion_bucket_id", 1, 255, errors)
    image = parts.get("image")
    size = None
    if image is None:
        errors.append("image: is required")
    else:
        size = image_size(image.data)
        if size is None:
            errors.append("image: must be a png or jpeg")
        elif size not in _VIDEO_SIZES:
            errors.append("image: dimensions must be one of 1024x576, 576x1024, 768x768")
            size = None
    return errors, size


#: The class :func:`router.sandbox.build_emulator` constructs for ``stability``.
EMULATOR = StabilityEmulator
