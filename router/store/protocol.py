"""The seam between the job engine and wherever jobs are kept."""

from __future__ import annotations

from typing import Protocol

from router.errors import SwitchmanError
from router.store.records import AttemptRecord, JobRecord

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

    async def create_job(self, job: JobRecord) -> None:
        """Insert a job and the attempts it holds in one transaction.

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

    async def save(self, job: JobRecord, *attempts: AttemptRecord) -> None:
        """Update the job and upsert the given attempts in one transaction."""
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
