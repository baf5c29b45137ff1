"""An emulator of a simple in-house generation service, for the ``http`` adapter.

There is no public contract here: this is the kind of API a platform team
writes, and the ``http`` adapter's example config (``deploy/config/http.yaml``)
describes it. Bearer auth; JSON in and out; errors as
``{"error": {"message": …}}``; 429 and 503 carry ``Retry-After``.

- ``POST /generate`` → 202 ``{"id", "status": "pending", "progress": 0}``; the job
  goes ``pending`` → ``working`` (with ``progress``) → ``done`` over
  :attr:`HttpEmulator.job_faults` ``duration_s``.
- ``POST /generate/sync`` → 200 with the finished job at once.
- ``GET /jobs/{id}`` → ``{"id", "status", "progress", "result": {"urls": […]}, "error"}``.
- ``POST /jobs/{id}/cancel`` → the job, ``cancelled``.
- ``GET /healthz``; ``GET /files/{name}`` serves the PNGs and MP4s (unfaulted).

Body fields: ``prompt`` (required), ``kind`` (image|video), ``width``, ``height``,
``seconds``, ``n``, ``seed``, ``negative_prompt``, ``model``, ``aspect_ratio``;
anything else is a 422. A prompt with the word ``forbidden`` is refused by the
"safety filter" (422 on the sync route, a job ending in ``error`` otherwise).
Post-acceptance faults come from ``job_faults`` / ``POST /_sandbox/job_faults``;
:attr:`HttpEmulator.accepted` counts accepted jobs per ``X-Client-Request-Id``.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
from aiohttp import web

from breakers.clock import Clock, SystemClock
from router.config import FaultsConfig
from router.sandbox.faults import Decision
from router.sandbox.media import png_bytes
from router.sandbox.mp4 import mp4_bytes
from router.sandbox.server import Emulator, Handler
from router.sandbox.veo import JobFaultsMixin

__all__ = ["DEFAULT_API_KEY", "HttpEmulator"]

DEFAULT_API_KEY = "inhouse-sandbox-token"

_FIELDS: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "kind": (str,),
    "width": (int,),
    "height": (int,),
    "seconds": (int, float),
    "n": (int,),
    "seed": (int,),
    "negative_prompt": (str,),
    "model": (str,),
    "aspect_ratio": (str,),
}
_FORBIDDEN = re.compile(r"\bforbidden\b", re.IGNORECASE)
_FILE = re.compile(r"^(img|vid)-[0-9a-f]+-([0-9]{2,4})x([0-9]{2,4})(?:-([0-9]{1,2})s)?\.(png|mp4)$")
_JSON = "application/json"
_REMEMBERED = 10_000


@dataclass(slots=True)
class _Job:
    id: str
    kind: str
    created: float
    fate: str  # ok | error | stall | blocked
    width: int
    height: int
    seconds: int
    n: int
    cancelled: bool = False


class _Invalid(Exception):
    """Raised inside validation; becomes a 422."""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=msgspec.json.encode({"error": {"message": message}}),
        content_type=_JSON,
        headers=headers,
    )


class HttpEmulator(JobFaultsMixin, Emulator):
    """The in-house service on loopback; ``api_key`` is the only bearer token it accepts."""

    provider: ClassVar[str] = "http"

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
        self._init_job_faults(seed)
        self.api_key = api_key or DEFAULT_API_KEY
        self._auth = f"Bearer {self.api_key}"
        self._clock: Clock = clock or SystemClock()
        self._prefix = os.urandom(3).hex()
        self._seq = 0
        self.jobs: OrderedDict[str, _Job] = OrderedDict()
        #: Accepted jobs per ``X-Client-Request-Id`` (``-`` when absent).
        self.accepted: Counter[str] = Counter()

    def api_routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/generate", self._generate_async),
            ("POST", "/generate/sync", self._generate_sync),
            ("GET", "/jobs/{id}", self._get_job),
            ("POST", "/jobs/{id}/cancel", self._cancel_job),
            ("GET", "/healthz", self._healthz),
        ]

    def plain_routes(self) -> list[tuple[str, str, Handler]]:
        return [("GET", "/files/{name}", self._file), *self.job_fault_routes()]

    def fault_response(self, decision: Decision) -> web.Response:
        status = decision.status or 500
        headers = {}
        if decision.retry_after_s is not None and status in (429, 503):
            headers["Retry-After"] = str(math.ceil(decision.retry_after_s))
        if status == 429:
            return _error(429, "too many requests", headers)
        if status >= 500:
            return _error(status, "backend unavailable", headers)
        return _error(status, "injected error")

    def malformed_response(self) -> web.Response:
        return web.Response(status=200, body=b'{"id": "', content_type=_JSON)

    def decorate(self, response: web.StreamResponse, decision: Decision) -> None:
        if decision.limit is not None:
            response.headers["X-RateLimit-Limit"] = str(int(decision.limit))
            response.headers["X-RateLimit-Remaining"] = str(int(decision.remaining or 0))

    # -- handlers ---------------------------------------------------------------------

    def _denied(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == self._auth:
            return None
        return _error(401, "missing or invalid bearer token")

    async def _healthz(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        return web.json_response({"ok": True})

    async def _accept(self, request: web.Request) -> _Job | web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        try:
            raw = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return _error(400, "body is not valid JSON")
        try:
            params = _validate(raw)
        except _Invalid as exc:
            return _error(422, str(exc))
        self._seq += 1
        video = params["kind"] == "video"
        job = _Job(
            id=f"job_{self._prefix}{self._seq:08x}",
            kind=params["kind"],
            created=self._clock.monotonic(),
            fate="blocked" if _FORBIDDEN.search(params["prompt"]) else self.draw_job_fate(),
            width=params.get("width") or (640 if video else 512),
            height=params.get("height") or (360 if video else 512),
            seconds=max(1, round(params.get("seconds") or 4)),
            n=params.get("n") or 1,
        )
        self.jobs[job.id] = job
        while len(self.jobs) > _REMEMBERED:
            self.jobs.popitem(last=False)
        self.accepted[request.headers.get("X-Client-Request-Id", "-")] += 1
        return job

    async def _generate_async(self, request: web.Request) -> web.Response:
        job = await self._accept(request)
        if isinstance(job, web.Response):
            return job
        return self._json({"id": job.id, "status": "pending", "progress": 0}, status=202)

    async def _generate_sync(self, request: web.Request) -> web.Response:
        job = await self._accept(request)
        if isinstance(job, web.Response):
            return job
        if job.fate == "blocked":
            return _error(422, "prompt rejected by safety filter")
        if job.fate == "error":
            return _error(500, "worker crashed (exit 137)")
        job.created -= self.job_faults.duration_s  # a synchronous job is done when answered
        return self._json(self._body(job))

    async def _get_job(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return _error(404, "no such job")
        return self._json(self._body(job))

    async def _cancel_job(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return _error(404, "no such job")
        body = self._body(job)
        if body["status"] in ("done", "error"):
            return _error(409, f"job already {body['status']}")
        job.cancelled = True
        return self._json(self._body(job))

    def _body(self, job: _Job) -> dict[str, Any]:
        body: dict[str, Any] = {"id": job.id, "kind": job.kind}
        if job.cancelled:
            return body | {"status": "cancelled", "progress": 0}
        total = self.job_faults.duration_s
        elapsed = self._clock.monotonic() - job.created
        if job.fate == "stall":
            return body | {"status": "working", "progress": 10}
        if elapsed < total:
            if elapsed < total / 4:
                return body | {"status": "pending", "progress": 0}
            return body | {"status": "working", "progress": min(99, int(100 * elapsed / total))}
        if job.fate in ("error", "blocked"):
            message = (
                "output blocked by safety filter"
                if job.fate == "blocked"
                else "worker crashed (exit 137)"
            )
            return body | {"status": "error", "progress": 100, "error": {"message": message}}
        return body | {
            "status": "done",
            "progress": 100,
            "result": {"urls": [self._url(job, i) for i in range(job.n)]},
        }

    def _url(self, job: _Job, index: int) -> str:
        tag = f"{job.id.removeprefix('job_')}{index:x}"
        if job.kind == "video":
            return f"{self.base_url}/files/vid-{tag}-{job.width}x{job.height}-{job.seconds}s.mp4"
        return f"{self.base_url}/files/img-{tag}-{job.width}x{job.height}.png"

    async def _file(self, request: web.Request) -> web.Response:
        m = _FILE.match(request.match_info["name"])
        if m is None:
            return _error(404, "no such file")
        width, height = int(m.group(2)), int(m.group(3))
        if not (16 <= width <= 4096 and 16 <= height <= 4096):
            return _error(404, "no such file")
        if m.group(1) == "vid" and m.group(4) and m.group(5) == "mp4":
            return web.Response(
                body=mp4_bytes(width, height, float(m.group(4))), content_type="video/mp4"
            )
        if m.group(1) == "img" and m.group(5) == "png":
            return web.Response(body=png_bytes(width, height), content_type="image/png")
        return _error(404, "no such file")

    @staticmethod
    def _json(body: dict[str, Any], status: int = 200) -> web.Response:
        return web.Response(status=status, body=msgspec.json.encode(body), content_type=_JSON)


def _validate(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _Invalid("body must be a JSON object")
    for key, value in raw.items():
        types = _FIELDS.get(key)
        if types is None:
            raise _Invalid(f"unknown field {key!r}")
        if isinstance(value, bool) or not isinstance(value, types):
            raise _Invalid(f"field {key!r} has the wrong type")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Invalid("field 'prompt' is required")
    raw.setdefault("kind", "image")
    if raw["kind"] not in ("image", "video"):
        raise _Invalid("field 'kind' must be image or video")
    for side in ("width", "height"):
        if side in raw and not 64 <= raw[side] <= 4096:
            raise _Invalid(f"field {side!r} must be between 64 and 4096")
    if "seconds" in raw and not 1 <= raw["seconds"] <= 60:
        raise _Invalid("field 'seconds' must be between 1 and 60")
    if "n" in raw and not 1 <= raw["n"] <= 4:
        raise _Invalid("field 'n' must be between 1 and 4")
    return raw


#: The class :func:`router.sandbox.build_emulator` constructs for ``http``.
EMULATOR = HttpEmulator
