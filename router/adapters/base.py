"""The adapter protocol (DESIGN §5): one provider's API behind one interface.

An adapter maps a :class:`~router.models.GenerationRequest` to a provider's API
and back. Provider field names, statuses and error bodies never leave the
adapter: everything above it sees :class:`SubmitResult`, :class:`PollResult`
and :class:`~router.errors.UpstreamError` with a DESIGN §3 error kind.

Adapters do no retries, no failover and no rate limiting: the job engine and the
guards own those. They also never log a credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from router.config import ProviderConfig
from router.errors import ErrorKind
from router.models import GenerationRequest, Output

__all__ = [
    "Adapter",
    "AttemptContext",
    "PollResult",
    "ProbeResult",
    "RateLimitHint",
    "SubmitResult",
    "UpstreamStatus",
    "WebhookEvent",
]

UpstreamStatus = str  # one of: queued | running | succeeded | failed | canceled


@dataclass(frozen=True, slots=True)
class RateLimitHint:
    """What an upstream response said about its rate limit (``x-ratelimit-*`` and kin)."""

    remaining: float | None = None
    limit: float | None = None
    reset_s: float | None = None


@dataclass(frozen=True, slots=True)
class AttemptContext:
    """Everything one attempt needs besides the request itself."""

    client: httpx.AsyncClient
    job_id: str
    attempt_id: str
    #: Absolute ``Clock.monotonic()`` deadline for this attempt.
    deadline: float
    #: The credential to use (a tenant's own key or the platform's).
    api_key: str | None = None
    #: Where the provider should send its completion webhook, if it sends any.
    webhook_url: str | None = None
    #: ``traceparent``/``tracestate`` to propagate upstream.
    trace_headers: Mapping[str, str] = field(default_factory=dict)
    #: The client for caller-supplied URLs (``input_image_url``): every connection it
    #: makes is checked against the SSRF policy, so a name that passed admission and
    #: then rebinds to an internal address is never reached. ``None``: ``client``.
    input_client: httpx.AsyncClient | None = None


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The answer to a submission.

    Synchronous providers return ``status="succeeded"`` with outputs; asynchronous
    ones return ``queued``/``running`` with an ``upstream_id`` to poll.
    """

    status: UpstreamStatus
    upstream_id: str | None = None
    outputs: tuple[Output, ...] = ()
    progress: int | None = None
    cost_usd: float = 0.0
    rate_limit: RateLimitHint | None = None
    #: Suggested seconds before the first poll, when the provider says.
    poll_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class PollResult:
    """The state of an accepted upstream job."""

    status: UpstreamStatus
    progress: int | None = None
    outputs: tuple[Output, ...] = ()
    error_kind: ErrorKind | None = None
    error_message: str | None = None
    cost_usd: float = 0.0
    poll_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A verified upstream webhook, matched to an attempt by upstream id."""

    upstream_id: str
    result: PollResult


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """A live credentials/connectivity check."""

    ok: bool
    latency_s: float
    detail: str = ""


class Adapter(Protocol):
    """One provider's API. Instances are built from a :class:`ProviderConfig`."""

    config: ProviderConfig

    def supports(self, request: GenerationRequest) -> str | None:
        """``None`` when the provider can serve ``request``; otherwise why not (before any call)."""
        ...

    def estimate_cost(self, request: GenerationRequest) -> float:
        """Expected cost in USD, in the provider's pricing unit, from config."""
        ...

    async def submit(self, request: GenerationRequest, ctx: AttemptContext) -> SubmitResult:
        """Start a generation; raise :class:`~router.errors.UpstreamError` on failure."""
        ...

    async def poll(self, upstream_id: str, ctx: AttemptContext) -> PollResult:
        """Fetch an accepted job's state; raise ``UpstreamError`` when the poll itself fails."""
        ...

    async def cancel(self, upstream_id: str, ctx: AttemptContext) -> bool:
        """Cancel upstream where the provider allows; ``False`` when it cannot."""
        ...

    async def probe(self, client: httpx.AsyncClient, api_key: str | None) -> ProbeResult:
        """A cheap authenticated call that proves credentials and connectivity."""
        ...

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, now: float) -> bool:
        """Whether a webhook's signature is valid and fresh (``now`` in unix seconds)."""
        ...

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """The event a verified webhook carries, or ``None`` when it is not a state change."""
        ...

    def classify(self, status: int | None, body: bytes, headers: Mapping[str, str]) -> ErrorKind:
        """The DESIGN §3 error kind of a failed upstream HTTP response."""
        ...
