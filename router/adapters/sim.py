"""The ``sim`` adapter: a simulated provider in process, with no network at all.

For demos and for testing the job engine: images finish in ``submit`` (like
OpenAI), videos are accepted and finish after ``poll_steps`` polls (like
Replicate), and a seeded RNG fails a share of submits with a chosen error kind.
Outputs are ``sim://`` URLs that point nowhere.

Options (``ProviderConfig.options``): ``latency_s`` (0), ``error_ratio`` (0),
``error_kind`` (``upstream_unavailable``), ``seed`` (0), ``poll_steps`` (1).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Annotated, Final

import httpx
import msgspec

from breakers.clock import Clock
from router.adapters.base import (
    AttemptContext,
    PollResult,
    ProbeResult,
    SubmitResult,
    WebhookEvent,
)
from router.adapters.capabilities import capability_problem
from router.config import ProviderConfig
from router.errors import ConfigError, ErrorKind, UpstreamError
from router.models import GenerationRequest, Output

__all__ = ["SimAdapter", "SimOptions"]

_STATUS_KINDS: Final[dict[int, ErrorKind]] = {
    401: "auth",
    403: "auth",
    404: "not_found",
    429: "rate_limited",
}


class SimOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``options`` a ``sim`` provider accepts."""

    latency_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    error_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    error_kind: ErrorKind = "upstream_unavailable"
    seed: int = 0
    #: Polls that report ``running`` before a video succeeds.
    poll_steps: Annotated[int, msgspec.Meta(ge=0)] = 1


class SimAdapter:
    """A provider that answers from memory; deterministic for a given seed and call order."""

    def __init__(self, config: ProviderConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        try:
            self.options = msgspec.convert(config.options, SimOptions)
        except msgspec.ValidationError as exc:
            raise ConfigError([f"providers.{config.name}.options: {exc}"]) from exc
        self._rng = random.Random(self.options.seed)
        self._seq = 0
        #: upstream id → (polls so far, outputs, canceled)
        self._jobs: dict[str, tuple[int, tuple[Output, ...], bool]] = {}

    def supports(self, request: GenerationRequest) -> str | None:
        if request.kind not in self.config.kinds:
            return f"{self.config.name} does not serve {request.kind}"
        caps = self.config.capabilities
        return capability_problem(caps, request)

    def estimate_cost(self, request: GenerationRequest) -> float:
        cost = self.config.cost
        if request.kind == "video":
            return cost.per_video_s_usd * (request.duration_s or 5.0) * request.n
        return cost.per_image_usd * request.n

    def _outputs(self, request: GenerationRequest, upstream_id: str) -> tuple[Output, ...]:
        width = request.width or 1024
        height = request.height or 1024
        video = request.kind == "video"
        ext, ctype = ("mp4", "video/mp4") if video else ("png", "image/png")
        return tuple(
            Output(
                url=f"sim://{self.config.name}/{upstream_id}/{i}.{ext}",
                content_type=ctype,
                width=width,
                height=height,
                duration_s=(request.duration_s or 5.0) if video else None,
            )
            for i in range(request.n)
        )

    async def submit(self, request: GenerationRequest, ctx: AttemptContext) -> SubmitResult:
        if self.options.latency_s > 0:
            await asyncio.sleep(self.options.latency_s)
        if self.options.error_ratio > 0 and self._rng.random() < self.options.error_ratio:
            raise UpstreamError(
                self.options.error_kind, "simulated failure", provider=self.config.name
            )
        self._seq += 1
        upstream_id = f"sim-{self._seq}"
        outputs = self._outputs(request, upstream_id)
        cost = self.estimate_cost(request)
        if request.kind == "video" and self.options.poll_steps > 0:
            self._jobs[upstream_id] = (0, outputs, False)
            return SubmitResult(status="queued", upstream_id=upstream_id, progress=0, cost_usd=cost)
        return SubmitResult(
            status="succeeded",
            upstream_id=upstream_id,
            outputs=outputs,
            progress=100,
            cost_usd=cost,
        )

    async def poll(self, upstream_id: str, ctx: AttemptContext) -> PollResult:
        job = self._jobs.get(upstream_id)
        if job is None:
            raise UpstreamError(
                "not_found", "unknown sim job", provider=self.config.name, upstream_id=upstream_id
            )
        polls, outputs, canceled = job
        if canceled:
            return PollResult(status="canceled")
        polls += 1
        self._jobs[upstream_id] = (polls, outputs, False)
        steps = self.options.poll_steps
        if polls < steps:
            return PollResult(status="running", progress=100 * polls // steps)
        del self._jobs[upstream_id]
        return PollResult(status="succeeded", progress=100, outputs=outputs)

    async def cancel(self, upstream_id: str, ctx: AttemptContext) -> bool:
        job = self._jobs.get(upstream_id)
        if job is None:
            return False
        self._jobs[upstream_id] = (job[0], job[1], True)
        return True

    async def probe(self, client: httpx.AsyncClient, api_key: str | None) -> ProbeResult:
        return ProbeResult(ok=True, latency_s=0.0, detail="simulated")

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, now: float) -> bool:
        return False

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        return None

    def classify(self, status: int | None, body: bytes, headers: Mapping[str, str]) -> ErrorKind:
        if status is None or status >= 500:
            return "upstream_unavailable"
        return _STATUS_KINDS.get(status, "invalid_request")


#: The class :func:`router.adapters.registry.build_adapter` constructs for ``adapter: sim``.
ADAPTER = SimAdapter
