"""The HTTP API's values (DESIGN §3), as msgspec Structs.

Constraints live on the types so that decoding *is* validation: a request that
decodes is one Switchman can route.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "Attempt",
    "AttemptError",
    "GenerationRequest",
    "Job",
    "JobError",
    "JobList",
    "JobStatus",
    "Kind",
    "Output",
    "Routing",
]

Kind = Literal["image", "video"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
AttemptStatus = Literal["pending", "running", "succeeded", "failed", "canceled"]
FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})

ProviderName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Routing(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Per-request routing preferences; all optional."""

    strategy: Literal["balanced", "cheapest", "fastest", "priority", "weighted"] | None = None
    providers: Annotated[list[ProviderName], msgspec.Meta(max_length=64)] | None = None
    exclude: Annotated[list[ProviderName], msgspec.Meta(max_length=64)] | None = None
    max_cost_usd: Annotated[float, msgspec.Meta(ge=0, le=1_000_000)] | None = None


class GenerationRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``POST /v1/generations`` body."""

    kind: Kind
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    negative_prompt: Annotated[str, msgspec.Meta(max_length=4000)] | None = None
    aspect_ratio: (
        Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{0,2}:[1-9][0-9]{0,2}$")] | None
    ) = None
    width: Annotated[int, msgspec.Meta(ge=64, le=8192)] | None = None
    height: Annotated[int, msgspec.Meta(ge=64, le=8192)] | None = None
    duration_s: Annotated[float, msgspec.Meta(ge=1, le=120)] | None = None
    fps: Annotated[int, msgspec.Meta(ge=6, le=60)] | None = None
    input_image_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1
    seed: Annotated[int, msgspec.Meta(ge=0, le=999_999_999)] | None = None
    quality: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    style: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    motion_intensity: Annotated[int, msgspec.Meta(ge=1, le=10)] | None = None
    model: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    routing: Routing | None = None
    callback_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    metadata: Annotated[dict[str, Any], msgspec.Meta(max_length=64)] | None = None


class AttemptError(msgspec.Struct, omit_defaults=True):
    """Why one attempt failed."""

    kind: str
    message: str
    http_status: int | None = None


class Output(msgspec.Struct, omit_defaults=True):
    """One generated file."""

    url: str
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    bytes: int | None = None
    sha256: str | None = None


class Attempt(msgspec.Struct):
    """One try at one provider."""

    id: str
    provider: str
    status: AttemptStatus
    upstream_id: str | None = None
    error: AttemptError | None = None
    http_status: int | None = None
    started_at: str | None = None
    ended_at: str | None = None
    latency_s: float | None = None
    cost_usd: float = 0.0


class JobError(msgspec.Struct):
    """Why a job failed."""

    code: str
    message: str


class Job(msgspec.Struct):
    """A generation job as callers see it."""

    id: str
    kind: Kind
    status: JobStatus
    created_at: str
    updated_at: str
    progress: int = 0
    provider: str | None = None
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    outputs: list[Output] = msgspec.field(default_factory=list)
    cost_usd: float = 0.0
    error: JobError | None = None
    completed_at: str | None = None
    metadata: dict[str, Any] | None = None
    #: Upstream submissions found duplicated by crash recovery (each canceled upstream).
    duplicate_submissions: int = 0


class JobList(msgspec.Struct):
    """A page of a tenant's jobs, newest first."""

    data: list[Job]
    next_cursor: str | None = None
