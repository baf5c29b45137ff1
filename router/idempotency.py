"""``Idempotency-Key`` for ``POST /v1/generations`` (Stripe's semantics, IETF draft).

No upstream provider documents idempotency keys, so Switchman's own records are what
keep a retried request from paying twice:

- a key is scoped to the tenant and kept ``storage.idempotency_retention_s`` (24 h);
- the request is fingerprinted (SHA-256 of its canonical JSON: keys sorted, no
  whitespace), so the same key with a different body is refused with 422;
- the key is claimed by the job itself: the job row carries it under a unique
  ``(tenant, key)`` index and is written in one transaction before any upstream call,
  so there is never a key without its job (a crash cannot strand one) and two
  replicas racing on one key make one job (the loser's write fails before it submits
  anything, and it answers with the winner's job);
- the first answer (status code and body) is kept and replayed verbatim, with
  ``Idempotent-Replayed: true``; when the process died before keeping it, a retry
  gets the job's current state instead;
- requests arriving while the first with their key is still being answered wait for
  that answer when the first runs in this process (so 50 concurrent duplicates all
  get the one job); on another replica they get 409 for ``in_flight_s`` after the
  job's creation (the first is still being answered there), the job after that;
- a first request that fails before creating a job (a 503, say) leaves no trace, so a
  retry is a fresh attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import msgspec
import structlog

from breakers.clock import Clock
from router.errors import Conflict, FieldError, ValidationFailed
from router.models import FINAL_STATUSES
from router.store import DuplicateIdempotencyKey, IdempotencyRecord, JobStore, to_api_job

__all__ = ["Answer", "IdempotencyKeys", "fingerprint", "validate_key"]

_log = structlog.get_logger("switchman.idempotency")
_MAX_KEY: Final = 255
_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
_encode_sorted = msgspec.json.Encoder(order="sorted").encode


@dataclass(frozen=True, slots=True)
class Answer:
    """The response given to the first request under a key."""

    status: int
    body: bytes
    job_id: str
    replayed: bool = False


def fingerprint(body: bytes) -> str:
    """SHA-256 (hex) of the body's canonical JSON: equal documents fingerprint equally."""
    try:
        canonical = _encode_sorted(_decode_any(body))
    except msgspec.DecodeError:
        canonical = body
    return hashlib.sha256(canonical).hexdigest()


def validate_key(key: str) -> str:
    """The key itself, or a 400 naming the header when it is empty or too long."""
    if not key or len(key) > _MAX_KEY or not key.isprintable():
        raise ValidationFailed(
            [FieldError("Idempotency-Key", f"expected 1..{_MAX_KEY} printable characters")],
            status=400,
        )
    return key


@dataclass(slots=True)
class _Pending:
    fingerprint: str
    answer: asyncio.Future[Answer]


class IdempotencyKeys:
    """Runs a create under a key at most once per retention window."""

    def __init__(
        self,
        store: JobStore,
        clock: Clock,
        retention_s: float,
        *,
        in_flight_s: float = 2.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.retention_s = retention_s
        self.in_flight_s = in_flight_s
        self._pending: dict[tuple[str, str], _Pending] = {}

    async def run(
        self,
        tenant: str,
        key: str,
        fp: str,
        create: Callable[[str, str], Awaitable[Answer]],
    ) -> Answer:
        """The first answer under ``(tenant, key)``.

        ``create(key, fingerprint)`` is called only when the key is free; it must write
        the job with both (the engine's ``submit(idempotency_key=, fingerprint=)``).
        """
        slot = (tenant, key)
        while True:
            pending = self._pending.get(slot)
            if pending is None:
                break
            if pending.fingerprint != fp:
                raise _mismatch()
            try:
                answer = await asyncio.shield(pending.answer)
            except asyncio.CancelledError:
                if not pending.answer.cancelled():
                    raise  # we were cancelled, not the first request
                continue
            except Exception as exc:
                # The first request failed without creating a job: try ourselves.
                _log.info("idempotency.first_failed", error=type(exc).__name__)
                continue
            return _replay(answer)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[slot] = _Pending(fp, future)
        try:
            answer = await self._answer(tenant, key, fp, create)
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning without waiters
            else:
                future.cancel()
            raise
        else:
            future.set_result(answer)
            return answer
        finally:
            self._pending.pop(slot, None)

    async def _answer(
        self, tenant: str, key: str, fp: str, create: Callable[[str, str], Awaitable[Answer]]
    ) -> Answer:
        for _ in range(3):
            existing = await self._existing(tenant, key, fp)
            if existing is not None:
                return existing
            try:
                answer = await create(key, fp)
            except DuplicateIdempotencyKey:
                _log.info("idempotency.lost_race")
                continue  # another replica created the job first: answer with it
            now = self.clock.time()
            await asyncio.shield(
                self.store.record_idempotent_answer(
                    IdempotencyRecord(
                        tenant=tenant,
                        key=key,
                        fingerprint=fp,
                        created_at=now,
                        expires_at=now + self.retention_s,
                        job_id=answer.job_id,
                        status_code=answer.status,
                        response=answer.body,
                    )
                )
            )
            return answer
        raise Conflict("this Idempotency-Key is contended; retry later", retry_after_s=1.0)

    async def _existing(self, tenant: str, key: str, fp: str) -> Answer | None:
        """The answer for a key already used within the retention, if it was."""
        job = await self.store.find_by_idempotency_key(tenant, key)
        if job is None:
            return None
        now = self.clock.time()
        if now - job.created_at >= self.retention_s:
            await self.store.forget_idempotency_key(tenant, key)  # expired: free again
            return None
        if job.request_fingerprint != fp:
            raise _mismatch()
        kept = await self.store.get_idempotency_key(tenant, key)
        if kept is not None and kept.job_id == job.id and kept.status_code and kept.response:
            _log.info("idempotency.replayed", job_id=job.id)
            return Answer(kept.status_code, kept.response, job.id, True)
        if now - job.created_at < self.in_flight_s:
            raise Conflict(
                "a request with this Idempotency-Key is still being processed; retry later",
                retry_after_s=1.0,
            )
        # The first answer was never kept (its process died): answer with the job now.
        status = 200 if job.status in FINAL_STATUSES else 202
        return Answer(status, _encode(to_api_job(job)), job.id, True)

    async def prune(self) -> int:
        """Free every key older than the retention, with its answer; returns how many."""
        count = await self.store.prune_idempotency_keys(self.clock.time(), self.retention_s)
        if count:
            _log.info("idempotency.pruned", keys=count)
        return count


def _replay(answer: Answer) -> Answer:
    return Answer(answer.status, answer.body, answer.job_id, True)


def _mismatch() -> ValidationFailed:
    return ValidationFailed(
        [
            FieldError(
                "Idempotency-Key",
                "this key was used with a different request body; use a new key",
            )
        ]
    )
