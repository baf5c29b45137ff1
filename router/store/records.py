"""What the job store keeps: jobs, their attempts, and the ids that name them.

Records are mutable slotted dataclasses, not frozen ones, on purpose: the job engine
owns exactly one record per in-flight job, changes its status, progress and outputs as
the upstream reports them, and hands it to the store to persist. Copying a frozen record
on every progress tick would be work on the hot path that buys nothing, because a
record is never shared between tasks. Treat a record you did not create as read-only.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from router.models import Attempt, AttemptError, Job, JobError, Output

__all__ = [
    "AssetRecord",
    "AttemptRecord",
    "EventRecord",
    "IdempotencyRecord",
    "JobRecord",
    "format_timestamp",
    "new_attempt_id",
    "new_job_id",
    "new_request_id",
    "to_api_attempt",
    "to_api_job",
]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1


class _UlidSource:
    """Monotonic ULIDs: 48 bits of milliseconds then 80 random bits, Crockford base32.

    Within one millisecond the random part is incremented instead of redrawn, so ids
    made by one process sort in the order they were made (ULID's monotonic mode), and
    ids made by different replicas still sort by time to the millisecond.
    """

    __slots__ = ("_last_ms", "_last_rand", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def next(self, now: float | None = None) -> str:
        ms = int((time.time() if now is None else now) * 1000)
        with self._lock:
            if ms <= self._last_ms:
                # Same millisecond, or the wall clock stepped back: stay monotonic.
                ms = self._last_ms
                rand = self._last_rand + 1
                if rand > _RANDOM_MAX:
                    ms += 1
                    rand = int.from_bytes(os.urandom(10), "big") >> 1
            else:
                # Halve the fresh draw so that increments within a millisecond cannot overflow.
                rand = int.from_bytes(os.urandom(10), "big") >> 1
            self._last_ms = ms
            self._last_rand = rand
        return _crockford26((ms << _RANDOM_BITS) | rand)


def _crockford26(value: int) -> str:
    """A 128-bit integer as 26 Crockford base32 digits, most significant first."""
    # Ten bits at a time through a 1,024-entry table: a quarter of the loop turns.
    pairs = _PAIRS
    out = [pairs[value & 1023]]
    for _ in range(12):
        value >>= 10
        out.append(pairs[value & 1023])
    out.reverse()
    return "".join(out)


_PAIRS: tuple[str, ...] = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)


_ULIDS = _UlidSource()


def new_job_id(now: float | None = None) -> str:
    """A new job id, ``gen_`` plus a 26-character time-sortable ULID.

    ``now`` (unix seconds) lets a caller with an injected clock pin the time part.
    """
    return "gen_" + _ULIDS.next(now)


def new_attempt_id(now: float | None = None) -> str:
    """A new attempt id, ``att_`` plus a 26-character time-sortable ULID."""
    return "att_" + _ULIDS.next(now)


def new_request_id() -> str:
    """A new ``X-Request-Id`` value, ``req_`` plus a 26-character time-sortable ULID."""
    return "req_" + _ULIDS.next()


@dataclass(slots=True, eq=True)
class AttemptRecord:
    """One try at one provider, as stored (DESIGN §6: written before submit, updated after)."""

    id: str
    job_id: str
    seq: int
    provider: str
    status: str = "pending"
    upstream_id: str | None = None
    error_kind: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    latency_s: float | None = None
    cost_usd: float = 0.0


@dataclass(slots=True, eq=True)
class JobRecord:
    """A generation job as stored; timestamps are unix seconds.

    ``request`` is the msgspec JSON of the :class:`~router.models.GenerationRequest`, kept
    as bytes so that a restarted replica can resume the job without the caller.
    """

    id: str
    tenant: str
    kind: str
    request: bytes
    created_at: float
    updated_at: float
    deadline_at: float
    status: str = "queued"
    progress: int = 0
    provider: str | None = None
    outputs: list[Output] = field(default_factory=list)
    cost_usd: float = 0.0
    error_code: str | None = None
    error_message: str | None = None
    completed_at: float | None = None
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = None
    request_fingerprint: str | None = None
    callback_url: str | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    #: Upstream submissions found to duplicate an attempt (a crash between a provider
    #: accepting and Switchman recording it); each was canceled upstream where possible.
    duplicate_submissions: int = 0
    #: ``None`` (no callback), ``pending``, ``delivered`` or ``failed``.
    callback_state: str | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One entry of a job's event log (the SSE stream); ``seq`` is the SSE id, from 1."""

    job_id: str
    seq: int
    type: str
    data: bytes
    at: float


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """The first answer given under a tenant's ``Idempotency-Key``, kept for replays.

    The key itself is claimed by the job row (``jobs.idempotency_key``, unique per
    tenant) in the job's creating transaction; this record only adds the answer.
    """

    tenant: str
    key: str
    fingerprint: str
    created_at: float
    expires_at: float
    job_id: str | None = None
    status_code: int | None = None
    response: bytes | None = None


@dataclass(frozen=True, slots=True)
class AssetRecord:
    """A stored output, content-addressed: one record per tenant and content hash."""

    tenant: str
    id: str
    sha256: str
    content_type: str
    bytes: int
    created_at: float
    job_id: str | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


_last_second: tuple[int, str] = (-1, "")


def format_timestamp(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds, e.g. ``2025-01-02T03:04:05.678Z``."""
    global _last_second  # a one-entry cache, swapped whole, so threads never see half
    whole = int(ts // 1)
    ms = min(int((ts - whole) * 1000), 999)
    # A job's timestamps mostly fall in the same second: format that second once.
    second, text = _last_second
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _last_second = (whole, text)
    return f"{text}.{ms:03d}Z"


def to_api_attempt(a: AttemptRecord) -> Attempt:
    """The public shape of one attempt (DESIGN §3)."""
    return _api_attempt(a)


def _api_attempt(a: AttemptRecord) -> Attempt:
    error = (
        AttemptError(kind=a.error_kind, message=a.error_message or "", http_status=a.http_status)
        if a.error_kind is not None
        else None
    )
    return Attempt(
        id=a.id,
        provider=a.provider,
        status=a.status,  # type: ignore[arg-type]  # the store only writes valid statuses
        upstream_id=a.upstream_id,
        error=error,
        http_status=a.http_status,
        started_at=None if a.started_at is None else format_timestamp(a.started_at),
        ended_at=None if a.ended_at is None else format_timestamp(a.ended_at),
        latency_s=a.latency_s,
        cost_usd=a.cost_usd,
    )


def to_api_job(record: JobRecord) -> Job:
    """The public shape of a job (DESIGN §3); attempts in the order they were made."""
    error = (
        JobError(code=record.error_code, message=record.error_message or "")
        if record.error_code is not None
        else None
    )
    return Job(
        id=record.id,
        kind=record.kind,  # type: ignore[arg-type]  # validated when the request was decoded
        status=record.status,  # type: ignore[arg-type]  # the store only writes valid statuses
        created_at=format_timestamp(record.created_at),
        updated_at=format_timestamp(record.updated_at),
        progress=record.progress,
        provider=record.provider,
        attempts=[_api_attempt(a) for a in record.attempts],
        outputs=list(record.outputs),
        cost_usd=record.cost_usd,
        error=error,
        completed_at=None if record.completed_at is None else format_timestamp(record.completed_at),
        metadata=record.metadata,
        duplicate_submissions=record.duplicate_submissions,
    )
