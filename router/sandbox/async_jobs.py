"""Shared plumbing for emulators of asynchronous (submit, then poll) providers.

An accepted job follows a timeline: queued for ``queue_s``, running for
``run_s``, then done, and its outcome is drawn when it is accepted. Besides the
request-level faults of :class:`~router.sandbox.faults.FaultInjector` (which hit
the HTTP call), these emulators inject **post-acceptance** faults, the ones only
polling or a webhook reveals:

- ``fail_ratio``: the job is accepted, runs, then fails with the provider's
  retryable error (Replicate ``E1000``, fal ``runner_disconnected``);
- ``stall_ratio``: the job is accepted and never progresses.

A prompt containing ``forbidden`` ends in the provider's content-policy refusal.
Set :attr:`AsyncJobEmulator.job_faults` in a test, or ``POST /_sandbox/job_faults``
with the :class:`JobFaults` fields to change (``GET`` reads it back;
``POST /_sandbox/reset`` restores the defaults).

Submissions are counted per Switchman attempt (from the ``attempt`` query of the
webhook URL, else the ``X-Client-Request-Id`` header), and per job when the
webhook URL names it, so tests can assert that nothing was submitted twice.

Completion webhooks are delivered to the URL given at submit, re-signed on each
try and retried with backoff on a non-2xx answer or a connection error. Timers
are real ``asyncio`` sleeps; a job's phase is read from the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import aiohttp
import msgspec
from aiohttp import web

from breakers.clock import Clock, SystemClock
from router.config import FaultsConfig
from router.sandbox.server import Emulator, Handler

__all__ = [
    "AsyncJobEmulator",
    "EmulatedJob",
    "JobFaults",
    "Outcome",
    "WebhookDelivery",
    "image_dims",
    "video_dims",
]

Phase = Literal["queued", "running", "done", "canceled"]
_FORBIDDEN = re.compile(r"\bforbidden\b", re.IGNORECASE)
_VIDEO_DIMS = {
    "16:9": (1280, 720),
    "9:16": (720, 1280),
    "1:1": (960, 960),
    "4:3": (960, 720),
    "3:4": (720, 960),
}


class JobFaults(msgspec.Struct, forbid_unknown_fields=True):
    """Post-acceptance faults and the timeline of every accepted job (mutable on purpose)."""

    fail_ratio: float = 0.0
    stall_ratio: float = 0.0
    #: Seconds a job spends queued, then running; kept short so tests are fast.
    queue_s: float = 0.05
    run_s: float = 0.15

    def __post_init__(self) -> None:
        for name in ("fail_ratio", "stall_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.queue_s < 0 or self.run_s < 0:
            raise ValueError("queue_s and run_s must be >= 0")


class Outcome(enum.Enum):
    """How an accepted job ends."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a retryable platform failure
    CONTENT_POLICY = "content_policy"
    STALLED = "stalled"  # never progresses


@dataclass(slots=True)
class EmulatedJob:
    """One accepted job: its request, outcome and timeline."""

    id: str
    kind: Literal["image", "video"]
    model: str
    params: dict[str, Any]
    outcome: Outcome
    created: float  # clock.monotonic()
    created_at: float  # clock.time()
    queue_s: float
    run_s: float
    webhook: str | None = None
    canceled_at: float | None = None
    timer: asyncio.Task[None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def phase(self, now: float) -> Phase:
        """Where the job is at monotonic time ``now``."""
        if self.canceled_at is not None:
            return "canceled"
        t = now - self.created
        if t < self.queue_s:
            return "queued"
        if self.outcome is Outcome.STALLED or t < self.queue_s + self.run_s:
            return "running"
        return "done"

    def run_fraction(self, now: float) -> float:
        """How far through its run the job is (0 when queued or stalled, 1 when done)."""
        if self.outcome is Outcome.STALLED:
            return 0.0
        t = now - self.created - self.queue_s
        if t <= 0:
            return 0.0
        return 1.0 if self.run_s <= 0 else min(1.0, t / self.run_s)

    @property
    def done_at(self) -> float:
        return self.created + self.queue_s + self.run_s


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One delivery try: where, which try, and the answer (``None``: no connection)."""

    url: str
    webhook_id: str
    attempt: int
    status: int | None


def image_dims(
    params: Mapping[str, Any], default: tuple[int, int] = (1024, 1024)
) -> tuple[int, int]:
    """Image size from ``width``/``height``, else ~1 MP in ``aspect_ratio``, else ``default``."""
    w, h = params.get("width"), params.get("height")
    if isinstance(w, int) and isinstance(h, int):
        return w, h
    ratio = params.get("aspect_ratio")
    if isinstance(ratio, str) and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", ratio):
        a, b = (int(x) for x in ratio.split(":"))
        scale = (1024 * 1024 / (a * b)) ** 0.5
        return max(16, round(a * scale / 16) * 16), max(16, round(b * scale / 16) * 16)
    return default


def video_dims(params: Mapping[str, Any]) -> tuple[int, int]:
    """Video size from ``width``/``height`` or ``aspect_ratio``; 1280×720 by default."""
    w, h = params.get("width"), params.get("height")
    if isinstance(w, int) and isinstance(h, int):
        return w, h
    ratio = params.get("aspect_ratio")
    if isinstance(ratio, str) and ratio in _VIDEO_DIMS:
        return _VIDEO_DIMS[ratio]
    if isinstance(ratio, str) and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", ratio):
        a, b = (int(x) for x in ratio.split(":"))
        scale = (1280 * 720 / (a * b)) ** 0.5
        return max(16, round(a * scale / 16) * 16), max(16, round(b * scale / 16) * 16)
    return 1280, 720


class AsyncJobEmulator(Emulator):
    """An :class:`Emulator` whose accepted jobs run on a timeline and report by webhook."""

    def __init__(
        self,
        faults: FaultsConfig | None = None,
        *,
        clock: Clock | None = None,
        seed: int = 0,
        recent: int = 50,
    ) -> None:
        super().__init__(faults, clock=clock, seed=seed, recent=recent)
        self._clock: Clock = clock or SystemClock()
        self._job_seed = seed + 7919
        self._job_rng = random.Random(self._job_seed)
        #: Post-acceptance faults and timeline; replace or mutate freely.
        self.job_faults = JobFaults()
        self.jobs: dict[str, EmulatedJob] = {}
        self.max_jobs = 20_000
        #: Submissions per Switchman attempt id, and per job id (when the webhook names it).
        self.submissions: Counter[str] = Counter()
        self.job_submissions: Counter[str] = Counter()
        self.webhook_deliveries: list[WebhookDelivery] = []
        #: Retries after the first delivery try, and the first backoff (doubling).
        self.webhook_retries = 4
        self.webhook_backoff_s = 0.05
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._accepted_total = 0
        self._accepted = asyncio.Event()

    # -- life cycle -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._closing = False
        await super().start(host, port)

    async def stop(self) -> None:
        self._closing = True  # no new deliveries (nor a new session) from here on
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._tasks.difference_update(tasks)
        if self._session is not None:
            await self._session.close()
            self._session = None
        await super().stop()

    def plain_routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("GET", "/_sandbox/job_faults", self._get_job_faults),
            ("POST", "/_sandbox/job_faults", self._set_job_faults),
        ]

    # -- accepting jobs ---------------------------------------------------------------

    def draw_outcome(self, prompt: str) -> Outcome:
        """The fate of a newly accepted job (content filter first, then seeded draws)."""
        if _FORBIDDEN.search(prompt):
            return Outcome.CONTENT_POLICY
        jf = self.job_faults
        if jf.stall_ratio > 0 and self._job_rng.random() < jf.stall_ratio:
            return Outcome.STALLED
        if jf.fail_ratio > 0 and self._job_rng.random() < jf.fail_ratio:
            return Outcome.FAILED
        return Outcome.SUCCEEDED

    def new_job(
        self,
        job_id: str,
        kind: Literal["image", "video"],
        model: str,
        params: dict[str, Any],
        webhook: str | None,
    ) -> EmulatedJob:
        """Record an accepted job and schedule its completion webhook."""
        prompt = params.get("prompt")
        job = EmulatedJob(
            id=job_id,
            kind=kind,
            model=model,
            params=params,
            outcome=self.draw_outcome(prompt if isinstance(prompt, str) else ""),
            created=self._clock.monotonic(),
            created_at=self._clock.time(),
            queue_s=self.job_faults.queue_s,
            run_s=self.job_faults.run_s,
            webhook=webhook,
        )
        self.jobs[job_id] = job
        self._accepted_total += 1
        self._accepted.set()
        while len(self.jobs) > self.max_jobs:  # a long benchmark must not grow memory
            self.jobs.pop(next(iter(self.jobs)))
        if webhook and job.outcome is not Outcome.STALLED:
            job.timer = self._spawn(self._complete_later(job))
        return job

    async def wait_accepted(self, count: int = 1, timeout_s: float = 10.0) -> None:
        """Return once ``count`` jobs have been accepted since start (for tests; no polling)."""
        async with asyncio.timeout(timeout_s):
            while self._accepted_total < count:
                self._accepted.clear()
                await self._accepted.wait()

    async def drain(self) -> None:
        """Wait until every pending completion timer and webhook delivery has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def count_submission(self, request: web.Request, webhook: str | None) -> None:
        """Count a submission under its Switchman attempt (and job, when known)."""
        attempt: str | None = None
        if webhook:
            query = parse_qs(urlsplit(webhook).query)
            attempt = next(iter(query.get("attempt", [])), None)
            job = next(iter(query.get("job", [])), None)
            if job:
                self.job_submissions[job] += 1
        attempt = attempt or request.headers.get("X-Client-Request-Id") or "unknown"
        self.submissions[attempt] += 1

    def cancel_job(self, job: EmulatedJob) -> None:
        """Mark ``job`` canceled now; its pending completion webhook is dropped."""
        job.canceled_at = self._clock.monotonic()
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None

    # -- webhooks ---------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _complete_later(self, job: EmulatedJob) -> None:
        await asyncio.sleep(max(0.0, job.done_at - self._clock.monotonic()))
        job.timer = None
        if job.phase(self._clock.monotonic()) == "done":
            await self.on_complete(job)

    async def on_complete(self, job: EmulatedJob) -> None:
        """Deliver ``job``'s completion webhook (subclasses build and sign it)."""

    def send_webhook(
        self,
        url: str,
        webhook_id: str,
        body: bytes,
        sign: Callable[[bytes], dict[str, str]],
    ) -> asyncio.Task[None]:
        """Deliver ``body`` in the background, signing each try afresh, retrying with backoff."""
        return self._spawn(self._deliver(url, webhook_id, body, sign))

    async def _deliver(
        self,
        url: str,
        webhook_id: str,
        body: bytes,
        sign: Callable[[bytes], dict[str, str]],
    ) -> None:
        backoff = self.webhook_backoff_s
        for attempt in range(1, self.webhook_retries + 2):
            status: int | None = None
            if not self._closing:
                if self._session is None:  # made on first use: most emulators never need one
                    self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
                headers = {"Content-Type": "application/json", **sign(body)}
                try:
                    async with self._session.post(
                        url, data=body, headers=headers, allow_redirects=False
                    ) as response:
                        status = response.status
                        await response.read()
                except (aiohttp.ClientError, TimeoutError):
                    status = None
            self.webhook_deliveries.append(WebhookDelivery(url, webhook_id, attempt, status))
            if status is not None and 200 <= status < 300:
                return
            await asyncio.sleep(backoff)
            backoff *= 2

    # -- admin ------------------------------------------------------------------------

    async def _get_job_faults(self, _request: web.Request) -> web.Response:
        return web.json_response(body=msgspec.json.encode(self.job_faults))

    async def _set_job_faults(self, request: web.Request) -> web.Response:
        try:
            changes = msgspec.json.decode(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            merged = msgspec.structs.asdict(self.job_faults) | changes
            self.job_faults = msgspec.convert(merged, JobFaults)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(body=msgspec.json.encode(self.job_faults))

    async def _reset(self, request: web.Request) -> web.Response:
        self.job_faults = JobFaults()
        self._job_rng = random.Random(self._job_seed)
        self.jobs.clear()
        self._accepted_total = 0
        self.submissions.clear()
        self.job_submissions.clear()
        self.webhook_deliveries.clear()
        return await super()._reset(request)
