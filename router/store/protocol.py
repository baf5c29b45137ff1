"""The seam between the job engine and wherever jobs are kept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from router.errors import SwitchmanError
from router.store.records import (
    AssetRecord,
    AttemptRecord,
    EventRecord,
    IdempotencyRecord,
    JobRecord,
)

__all__ = ["DuplicateIdempotencyKey", "JobStore", "StoreError"]


class StoreError(SwitchmanError):
    """Raised when the job store refuses a write for a reason the caller can act on."""


class DuplicateIdempotencyKey(StoreError):
    """Raised when a tenant already has a job under the same ``Idempotency-Key``.

    ``job_id`` is the existing job's id (``None`` if it vanished since), so the API can
    answer with that job instead of a second one.
    """

    def __init__(self, tenant: str, key: str, job_id: str | None) -> None:
        self.tenant = tenant
        self.key = key
        self.job_id = job_id
        super().__init__(f"tenant {tenant!r} already has a job with idempotency key {key!r}")


class JobStore(Protocol):
    """Durable jobs and attempts (DESIGN §6).

    A job is written before any upstream call and each attempt before its submit, so a
    restarted replica resumes polling (:meth:`nonfinal_jobs`) instead of re-submitting.
    """

    async def start(self) -> None:
        """Connect and migrate the schema to the newest revision."""
        ...

    async def close(self) -> None:
        """Release every connection."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers a trivial query right now (for ``/readyz``)."""
        ...

    async def create_job(self, job: JobRecord, events: Sequence[EventRecord] = ()) -> None:
        """Insert a job, the attempts it holds and its first events in one transaction.

        The job row carries its ``Idempotency-Key``: the unique ``(tenant, key)`` index
        makes creating the job and claiming the key one atomic step across replicas.

        Raises :class:`DuplicateIdempotencyKey` when the tenant already used the key.
        """
        ...

    async def get_job(self, tenant: str | None, job_id: str) -> JobRecord | None:
        """The job with its attempts ordered by ``seq``; ``tenant=None`` matches any tenant."""
        ...

    async def list_jobs(
        self, tenant: str, *, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[JobRecord], str | None]:
        """A page of the tenant's jobs, newest first, and the cursor of the next page."""
        ...

    async def save_attempt(self, attempt: AttemptRecord) -> None:
        """Insert the attempt, or update it when its id exists."""
        ...

    async def save_job(self, job: JobRecord) -> None:
        """Update the job's own fields (not its attempts)."""
        ...

    async def save(
        self, job: JobRecord, *attempts: AttemptRecord, events: Sequence[EventRecord] = ()
    ) -> None:
        """Update the job, upsert the given attempts and append ``events``, in one transaction."""
        ...

    async def list_events(
        self, job_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        """The job's events with ``seq > after``, in order (an SSE replay)."""
        ...

    async def last_event_seq(self, job_id: str) -> int:
        """The highest event ``seq`` of the job, 0 when it has none."""
        ...

    async def pending_callbacks(self, limit: int = 1000) -> list[JobRecord]:
        """Final jobs whose callback is still to be delivered (to resume after a restart)."""
        ...

    async def oldest_nonfinal_created_at(self) -> float | None:
        """When the oldest queued or running job was created, ``None`` when there is none."""
        ...

    async def record_idempotent_answer(self, record: IdempotencyRecord) -> bool:
        """Keep the first answer given under a key; ``False`` when one was already kept."""
        ...

    async def get_idempotency_key(self, tenant: str, key: str) -> IdempotencyRecord | None:
        """The first answer kept under the key, if any."""
        ...

    async def forget_idempotency_key(self, tenant: str, key: str) -> None:
        """Free an expired key: drop its answer and unlink it from its job."""
        ...

    async def prune_idempotency_keys(self, now: float, retention_s: float) -> int:
        """Free every key older than the retention; returns how many rows changed."""
        ...

    async def save_asset(self, asset: AssetRecord) -> bool:
        """Record a stored output; ``False`` when the tenant already had it (a no-op)."""
        ...

    async def get_asset(self, tenant: str, asset_id: str) -> AssetRecord | None:
        """The tenant's asset; another tenant's id reads as absent."""
        ...

    async def nonfinal_jobs(self, limit: int = 1000) -> list[JobRecord]:
        """Queued and running jobs, oldest first, to resume after a restart."""
        ...

    async def find_by_idempotency_key(self, tenant: str, key: str) -> JobRecord | None:
        """The tenant's job created under ``key``, if any."""
        ...

    async def find_by_upstream_id(self, provider: str, upstream_id: str) -> JobRecord | None:
        """The job owning the attempt ``provider`` knows as ``upstream_id`` (for webhooks)."""
        ...

    # -- leases: which replica runs a non-final job (several replicas on one database)

    def use_leases(self, owner: str | None, lease_s: float = 15.0) -> None:
        """Create jobs owned by ``owner`` for ``lease_s`` and refuse updates to jobs that
        another replica owns (raising ``LeaseLost``); ``None`` turns this off."""
        ...

    async def claim_jobs(
        self,
        owner: str,
        lease_s: float,
        *,
        limit: int = 100,
        expired_only: bool = True,
        from_owner: str | None = None,
        now: float | None = None,
    ) -> list[JobRecord]:
        """Take up to ``limit`` non-final jobs whose lease expired (or that nobody owns);
        ``from_owner``: every non-final job of that (dead) owner."""
        ...

    async def lease_owners(self) -> list[str]:
        """The replicas that own non-final jobs."""
        ...

    async def renew_leases(
        self, owner: str, job_ids: Sequence[str], lease_s: float, *, now: float | None = None
    ) -> set[str]:
        """Extend ``owner``'s leases on ``job_ids``; the ids it still owns."""
        ...

    async def release_leases(self, owner: str, *, now: float | None = None) -> int:
        """Expire ``owner``'s leases now (graceful shutdown); returns how many."""
        ...

    async def take_job(
        self, tenant: str, job_id: str, owner: str, lease_s: float, *, now: float | None = None
    ) -> JobRecord | None:
        """Take a non-final job from any owner (cancel); ``None`` when final or absent."""
        ...
