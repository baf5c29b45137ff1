"""An emulator of Runway's task API (provider-contracts §6), with fault injection.

Routes (faulted; ``Authorization: Bearer`` and ``X-Runway-Version: 2024-11-06``):

- ``POST /v1/image_to_video``, ``POST /v1/text_to_video``, ``POST /v1/text_to_image``:
  validated like Runway does (``{"error", "issues": [{path, message}]}`` on 400) and
  answered ``{"id"}``;
- ``GET /v1/tasks/{id}``: the task, ``PENDING`` for :attr:`JobFaults.queue_s`, then
  ``RUNNING`` with a 0–1 ``progress`` for ``run_s``, then ``SUCCEEDED`` with ``output``
  URLs (or ``FAILED`` with ``failure``/``failureCode``). Over ``max_concurrency``
  live tasks, new ones wait as ``THROTTLED``;
- ``DELETE /v1/tasks/{id}``: cancels a live task (then ``CANCELLED``), deletes a
  finished one (then 404). 204 either way.

``GET /files/{name}`` (unfaulted) serves the MP4s and PNGs that output URLs point
to, which expire after 24 h like Runway's signed URLs. A prompt containing
``forbidden`` fails its task with ``SAFETY.INPUT.TEXT``; a ``promptImage`` data URI
that is not an image fails it with ``ASSET.INVALID``. Over ``daily_limit`` tasks in
24 h, creates get 429.

Post-acceptance faults (fail with ``failure_code``, stall at a frozen progress,
fail ``SAFETY.OUTPUT.*``) are set in :attr:`RunwayEmulator.job_faults` or with
``POST /_sandbox/job_faults``; submissions are counted per ``X-Client-Request-Id``.
"""

from __future__ import annotations

import base64
import binascii
import math
import random
import re
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

import msgspec
from aiohttp import web

from breakers.clock import Clock, SystemClock
from router.config import FaultsConfig
from router.sandbox.faults import Decision
from router.sandbox.media import png_bytes
from router.sandbox.mp4 import mp4_bytes
from router.sandbox.server import Emulator, Handler

__all__ = ["API_VERSION", "DEFAULT_API_KEY", "JobFaults", "RunwayEmulator"]

DEFAULT_API_KEY = "key_" + "5a" * 64
API_VERSION = "2024-11-06"

Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]

_GEN4_RATIOS = ("1280:720", "720:1280", "1104:832", "832:1104", "960:960", "1584:672")
_VEO_RATIOS = ("1280:720", "720:1280", "1080:1920", "1920:1080")
#: model → (ratios, durations, default duration, text-to-video allowed)
_VIDEO: dict[str, tuple[tuple[str, ...], tuple[int, ...], int, bool]] = {
    "gen4_turbo": (_GEN4_RATIOS, (5, 10), 5, False),
    "gen4.5": (_GEN4_RATIOS, tuple(range(2, 11)), 5, True),
    "veo3.1": (_VEO_RATIOS, (4, 6, 8), 8, True),
    "veo3.1_fast": (_VEO_RATIOS, (4, 6, 8), 8, True),
}
_IMAGE_RATIOS = frozenset(
    {
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
    }
)
_IMAGE_MODELS = frozenset({"gen4_image", "gen4_image_turbo"})
_COMMON_KEYS = frozenset({"model", "promptText", "ratio", "seed", "contentModeration"})
_KEYS = {
    "image_to_video": _COMMON_KEYS | {"promptImage", "duration", "audio"},
    "text_to_video": _COMMON_KEYS | {"duration", "audio"},
    "text_to_image": _COMMON_KEYS | {"referenceImages"},
}
_MAX_PROMPT = 1000
_MAX_DATA_URI = 5 * 1024 * 1024
_MAX_SEED = 4_294_967_295
_URL_TTL_S = 86_400
_MAX_TASKS = 20_000
_FORBIDDEN = re.compile(r"\bforbidden\b", re.IGNORECASE)
_FILE = re.compile(r"^([0-9a-f-]{36})-([0-9]{2,4})x([0-9]{2,4})(?:-([0-9]{1,2})s)?\.(mp4|png)$")
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF")


class JobFaults(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What happens to accepted tasks: timing, throttling, injected failures."""

    #: Share of tasks that end ``FAILED`` with :attr:`failure_code`.
    fail_ratio: Ratio = 0.0
    #: Share of tasks that stay ``RUNNING`` with a frozen progress.
    stall_ratio: Ratio = 0.0
    #: Share of tasks that end ``FAILED`` with ``SAFETY.OUTPUT.*``.
    filter_ratio: Ratio = 0.0
    failure_code: str = "INTERNAL.BAD_OUTPUT.CODE01"
    queue_s: Annotated[float, msgspec.Meta(ge=0)] = 0.05
    run_s: Annotated[float, msgspec.Meta(ge=0)] = 0.25
    #: Live tasks allowed at once; more wait as ``THROTTLED``. ``None``: no limit.
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] | None = None
    #: Tasks allowed per rolling 24 h; more get 429. ``None``: no limit.
    daily_limit: Annotated[int, msgspec.Meta(ge=1)] | None = None


@dataclass(slots=True)
class _Task:
    id: str
    created: float
    created_at: str
    kind: str
    width: int
    height: int
    duration: int | None
    #: ok | fail | stall | filter | safety | asset
    fate: str
    failure_code: str
    #: When it leaves PENDING; ``None`` while THROTTLED.
    start: float | None
    canceled: bool = False


class _Invalid(Exception):
    def __init__(self, issues: list[dict[str, Any]]) -> None:
        super().__init__("invalid body")
        self.issues = issues


def _error(status: int, message: str, **extra: Any) -> web.Response:
    body = {"error": message, **extra}
    return web.json_response(body=msgspec.json.encode(body), status=status)


def _issue(path: str, message: str) -> dict[str, Any]:
    return {"path": [path] if path else [], "message": message}


class RunwayEmulator(Emulator):
    """Runway's API on loopback; ``api_key`` is the only key it accepts."""

    provider: ClassVar[str] = "runway"

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
        #: Task creations per ``X-Client-Request-Id``.
        self.submissions: Counter[str] = Counter()
        self.tasks: OrderedDict[str, _Task] = OrderedDict()
        self._daily: deque[float] = deque()

    def duplicate_submissions(self) -> dict[str, int]:
        """Attempt ids that reached the API more than once."""
        return {k: v for k, v in self.submissions.items() if v > 1}

    # -- routes -----------------------------------------------------------------------

    def api_routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/image_to_video", self._create),
            ("POST", "/v1/text_to_video", self._create),
            ("POST", "/v1/text_to_image", self._create),
            ("GET", "/v1/tasks/{id}", self._get_task),
            ("DELETE", "/v1/tasks/{id}", self._delete_task),
        ]

    def plain_routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("GET", "/files/{name}", self._file),
            ("GET", "/_sandbox/job_faults", self._get_job_faults),
            ("POST", "/_sandbox/job_faults", self._set_job_faults),
        ]

    # -- hooks ------------------------------------------------------------------------

    def fault_response(self, decision: Decision) -> web.Response:
        status = decision.status or 500
        response: web.Response
        if status == 429:
            response = _error(429, "Too many requests. Please slow down.")
        elif status >= 500:
            response = _error(status, "The service is temporarily unavailable. Please retry.")
        else:
            response = _error(status, "Injected error.")
        if decision.retry_after_s is not None:
            response.headers["retry-after"] = str(math.ceil(decision.retry_after_s))
        return response

    def malformed_response(self) -> web.Response:
        return web.Response(status=200, body=b'{"id": "', content_type="application/json")

    # -- guards -----------------------------------------------------------------------

    def _denied(self, request: web.Request) -> web.Response | None:
        got = request.headers.get("Authorization")
        if not got or not got.startswith("Bearer "):
            return _error(401, "An API key is required. Pass it as a Bearer token.")
        if got != self._auth:
            return _error(401, "Invalid API key.")
        version = request.headers.get("X-Runway-Version")
        if version is None:
            return _error(400, "The X-Runway-Version header is required.")
        if version != API_VERSION:
            return _error(400, f"Unsupported API version: {version}.")
        return None

    # -- tasks ------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        self.submissions[request.headers.get("X-Client-Request-Id", "")] += 1
        route = request.path.rsplit("/", 1)[-1]
        try:
            raw = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return _error(400, "The request body is not valid JSON.")
        try:
            spec = _validate(route, raw)
        except _Invalid as exc:
            return _error(400, "Validation of body failed", issues=exc.issues)
        now = self._clock.monotonic()
        jf = self.job_faults
        if jf.daily_limit is not None:
            while self._daily and self._daily[0] <= now - 86_400:
                self._daily.popleft()
            if len(self._daily) >= jf.daily_limit:
                return _error(429, "You have exceeded your daily generation limit.")
            self._daily.append(now)
        self._advance(now)
        task = self._new_task(now, route, raw, spec)
        self.tasks[task.id] = task
        while len(self.tasks) > _MAX_TASKS:
            self.tasks.popitem(last=False)
        return web.json_response(body=msgspec.json.encode({"id": task.id}))

    def _new_task(self, now: float, route: str, raw: dict[str, Any], spec: _Spec) -> _Task:
        jf = self.job_faults
        fate = "ok"
        code = ""
        if _FORBIDDEN.search(raw.get("promptText") or ""):
            fate, code = "safety", "SAFETY.INPUT.TEXT"
        elif spec.bad_asset:
            fate, code = "asset", "ASSET.INVALID"
        else:
            draw = self._rng.random()
            if draw < jf.stall_ratio:
                fate = "stall"
            elif draw < jf.stall_ratio + jf.fail_ratio:
                fate, code = "fail", jf.failure_code
            elif draw < jf.stall_ratio + jf.fail_ratio + jf.filter_ratio:
                kind = "IMAGE" if route == "text_to_image" else "VIDEO"
                fate, code = "filter", f"SAFETY.OUTPUT.{kind}"
        throttled = jf.max_concurrency is not None and self._live(now) >= jf.max_concurrency
        return _Task(
            id=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            created=now,
            created_at=datetime.fromtimestamp(self._clock.time(), UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            kind="image" if route == "text_to_image" else "video",
            width=spec.width,
            height=spec.height,
            duration=spec.duration,
            fate=fate,
            failure_code=code,
            start=None if throttled else now + jf.queue_s,
        )

    def _done(self, task: _Task, now: float) -> bool:
        if task.canceled:
            return True
        if task.start is None or now < task.start or task.fate == "stall":
            return False
        if task.fate in ("safety", "asset"):
            return True
        return now >= task.start + self.job_faults.run_s

    def _live(self, now: float) -> int:
        return sum(1 for t in self.tasks.values() if t.start is not None and not self._done(t, now))

    def _advance(self, now: float) -> None:
        """Let throttled tasks start, oldest first, as concurrency frees up."""
        limit = self.job_faults.max_concurrency
        waiting = [t for t in self.tasks.values() if t.start is None and not t.canceled]
        if not waiting:
            return
        live = self._live(now)
        for task in waiting:
            if limit is not None and live >= limit:
                break
            task.start = now + self.job_faults.queue_s
            live += 1

    def _render(self, task: _Task, now: float) -> dict[str, Any]:
        body: dict[str, Any] = {"id": task.id, "createdAt": task.created_at}
        if task.canceled:
            return body | {"status": "CANCELLED"}
        if task.start is None:
            return body | {"status": "THROTTLED"}
        if now < task.start:
            return body | {"status": "PENDING"}
        run_s = self.job_faults.run_s
        if task.fate == "safety":
            return body | {
                "status": "FAILED",
                "failure": "The prompt was flagged by content moderation.",
                "failureCode": task.failure_code,
            }
        if task.fate == "asset":
            return body | {
                "status": "FAILED",
                "failure": "An input asset could not be processed.",
                "failureCode": task.failure_code,
            }
        ramp = (now - task.start) / run_s if run_s > 0 else 1.0
        if task.fate == "stall":
            return body | {"status": "RUNNING", "progress": round(min(ramp, 0.42), 4)}
        if ramp < 1.0:
            return body | {"status": "RUNNING", "progress": round(ramp, 4)}
        if task.fate in ("fail", "filter"):
            failure = (
                "The output was flagged by content moderation."
                if task.fate == "filter"
                else "An internal error occurred while generating."
            )
            return body | {
                "status": "FAILED",
                "failure": failure,
                "failureCode": task.failure_code,
            }
        return body | {"status": "SUCCEEDED", "output": [self._output_url(task)]}

    def _output_url(self, task: _Task) -> str:
        expires = int(self._clock.time()) + _URL_TTL_S
        if task.kind == "image":
            name = f"{task.id}-{task.width}x{task.height}.png"
        else:
            name = f"{task.id}-{task.width}x{task.height}-{task.duration}s.mp4"
        return f"{self.base_url}/files/{name}?exp={expires}"

    async def _get_task(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        now = self._clock.monotonic()
        self._advance(now)
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return _error(404, "Task not found.")
        return web.json_response(body=msgspec.json.encode(self._render(task, now)))

    async def _delete_task(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        now = self._clock.monotonic()
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return _error(404, "Task not found.")
        if self._done(task, now):
            del self.tasks[task.id]
        else:
            task.canceled = True
        self._advance(now)
        return web.Response(status=204)

    async def _file(self, request: web.Request) -> web.Response:
        m = _FILE.match(request.match_info["name"])
        try:
            expires = int(request.query.get("exp", ""))
        except ValueError:
            expires = 0
        if m is None:
            return web.Response(status=404, text="Not Found")
        if expires < self._clock.time():
            return web.Response(status=403, text="Access denied: the URL has expired")
        width, height = int(m.group(2)), int(m.group(3))
        if m.group(5) == "png":
            return web.Response(body=png_bytes(width, height), content_type="image/png")
        duration = int(m.group(4) or 5)
        return web.Response(body=mp4_bytes(width, height, duration), content_type="video/mp4")

    # -- admin ------------------------------------------------------------------------

    async def _get_job_faults(self, _request: web.Request) -> web.Response:
        return web.json_response(body=msgspec.json.encode(self.job_faults))

    async def _reset(self, request: web.Request) -> web.Response:
        """Also restore the initial job faults and forget jobs and submissions."""
        self.job_faults = self._initial_job_faults
        self._rng = random.Random(self._seed)
        self.tasks.clear()
        self._daily.clear()
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


@dataclass(frozen=True, slots=True)
class _Spec:
    width: int
    height: int
    duration: int | None
    #: A data URI that is not an image: accepted, then the task fails ASSET.INVALID.
    bad_asset: bool = False


def _check_uri(value: Any, path: str, issues: list[dict[str, Any]]) -> bool:
    """Whether ``value`` is a usable asset URI; a bad data URI is found later (``False``)."""
    if not isinstance(value, str) or not value.startswith(("https://", "http://", "data:")):
        issues.append(_issue(path, "Expected an HTTPS URL or a data URI."))
        return True
    if not value.startswith("data:"):
        return True
    if len(value) > _MAX_DATA_URI:
        issues.append(_issue(path, "Data URIs must be at most 5 MB."))
        return True
    header, _, payload = value.partition(",")
    try:
        data = base64.b64decode(payload, validate=True) if header.endswith(";base64") else b""
    except (binascii.Error, ValueError):
        data = b""
    return data.startswith(_IMAGE_MAGIC)


def _validate(route: str, raw: Any) -> _Spec:
    """The task's shape; :class:`_Invalid` listing every issue when the body is invalid."""
    if not isinstance(raw, dict):
        raise _Invalid([_issue("", "Expected an object.")])
    issues = [_issue(k, f"Unrecognized key: '{k}'.") for k in raw if k not in _KEYS[route]]
    model = raw.get("model")
    prompt = raw.get("promptText")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > _MAX_PROMPT):
        issues.append(_issue("promptText", f"Expected a string of at most {_MAX_PROMPT} chars."))
    seed = raw.get("seed")
    if seed is not None and (
        not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _MAX_SEED
    ):
        issues.append(_issue("seed", f"Expected an integer between 0 and {_MAX_SEED}."))
    moderation = raw.get("contentModeration")
    if moderation is not None and (
        not isinstance(moderation, dict)
        or moderation.get("publicFigureThreshold", "auto") not in ("auto", "low")
    ):
        issues.append(_issue("contentModeration", "Invalid content moderation settings."))
    ratio = raw.get("ratio")
    good_asset = True
    duration: int | None = None
    if route == "text_to_image":
        if model not in _IMAGE_MODELS:
            issues.append(_issue("model", f"Invalid enum value '{model}'."))
        if not isinstance(prompt, str) or not prompt:
            issues.append(_issue("promptText", "Required."))
        if ratio not in _IMAGE_RATIOS:
            issues.append(_issue("ratio", f"Invalid enum value '{ratio}'."))
        refs = raw.get("referenceImages", [])
        if not isinstance(refs, list) or len(refs) > 3:
            issues.append(_issue("referenceImages", "Expected at most 3 reference images."))
        else:
            for ref in refs:
                uri = ref.get("uri") if isinstance(ref, dict) else None
                good_asset = _check_uri(uri, "referenceImages", issues) and good_asset
    else:
        video = _VIDEO.get(model) if isinstance(model, str) else None
        if video is None or (route == "text_to_video" and not video[3]):
            issues.append(_issue("model", f"Invalid enum value '{model}'."))
            video = _VIDEO["gen4_turbo"]
        ratios, durations, default, _text_ok = video
        if ratio not in ratios:
            issues.append(_issue("ratio", f"Invalid enum value '{ratio}'."))
        duration = raw.get("duration", default)
        if not isinstance(duration, int) or isinstance(duration, bool) or duration not in durations:
            allowed = ", ".join(str(d) for d in durations)
            issues.append(_issue("duration", f"Expected one of {allowed}."))
            duration = default
        if (route == "text_to_video" or model == "gen4.5") and not prompt:
            issues.append(_issue("promptText", "Required."))
        if "audio" in raw and (
            model not in ("veo3.1", "veo3.1_fast") or not isinstance(raw["audio"], bool)
        ):
            issues.append(_issue("audio", "Only veo3.1 models take a boolean audio."))
        if route == "image_to_video":
            image = raw.get("promptImage")
            if isinstance(image, list):
                if not image:
                    issues.append(_issue("promptImage", "Expected at least one image."))
                for item in image:
                    ok = isinstance(item, dict) and item.get("position", "first") in (
                        "first",
                        "last",
                    )
                    if not ok:
                        issues.append(_issue("promptImage", "Expected {uri, position}."))
                        continue
                    good_asset = _check_uri(item.get("uri"), "promptImage", issues) and good_asset
            elif image is None:
                issues.append(_issue("promptImage", "Required."))
            else:
                good_asset = _check_uri(image, "promptImage", issues)
    if issues:
        raise _Invalid(issues)
    assert isinstance(ratio, str)  # validated above
    w, h = ratio.split(":")
    return _Spec(int(w), int(h), duration, bad_asset=not good_asset)


#: The class :func:`router.sandbox.build_emulator` constructs for ``runway``.
EMULATOR = RunwayEmulator
