"""The job store on SQLAlchemy 2 Core: SQLite by default, PostgreSQL for replicas.

The store write sits on the path of every request, so: no ORM, every statement built
once at import and executed with a parameter dict (SQLAlchemy's compiled cache then
skips compilation, and asyncpg reuses its prepared statements), one transaction per
logical write, and rows unpacked by position.

Each operation is one synchronous function over a :class:`~sqlalchemy.engine.Connection`,
run in a single transaction by a runner:

- PostgreSQL: an async engine on asyncpg, the function run with ``AsyncConnection.run_sync``.
- SQLite: a sync engine (the stdlib driver) on one connection, each function run inline
  on the event loop (see :class:`_SqliteRunner`). aiosqlite hops to its thread for every
  cursor, execute, fetch, close and commit (about eight hops per write): measured on a
  2-core box, ``create_job`` cost ~1.4 ms through it, ~0.7 ms with one hop to a worker
  thread, and ~0.35 ms inline. One connection also means the process never waits on
  its own SQLite write lock.

Leases (several replicas on one PostgreSQL): a non-final job's row names the replica
that runs it (``owner``) and until when (``lease_until``). Lease times are read from the
*database's* clock (PostgreSQL ``clock_timestamp()``, SQLite ``julianday('now')``),
never a replica's, so clock skew between replicas cannot make a lease look expired to
one of them early: every ``lease_until`` is written and compared by the same clock. A
claim is one conditional ``UPDATE … WHERE owner IS NULL OR lease_until <= now`` (rows
locked ``FOR UPDATE SKIP LOCKED``), so two replicas never both win a job. Once a store
is given an owner (:meth:`SqlJobStore.use_leases`), its job updates are fenced: they
only apply while the row's owner is this replica (or nobody), and raise
:class:`LeaseLost` otherwise, so a replica that lost a job (taken over after a pause,
or canceled through another replica) can neither overwrite its state nor record an
attempt, and therefore never submits one upstream.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, Final, ParamSpec, Protocol, TypeVar, cast

import msgspec
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from router.models import Output
from router.store import migrate
from router.store.protocol import DuplicateIdempotencyKey, StoreError
from router.store.records import (
    AssetRecord,
    AttemptRecord,
    EventRecord,
    IdempotencyRecord,
    JobRecord,
)
from router.store.sqlite_wal import checkpoint, checkpoint_executor
from router.store.tables import assets, attempts, idempotency_keys, job_events, jobs

__all__ = ["InvalidCursor", "LeaseLost", "SqlJobStore", "UnknownJob", "open_store"]


class InvalidCursor(StoreError, ValueError):
    """Raised when a ``cursor`` was not made by :meth:`SqlJobStore.list_jobs`."""


class UnknownJob(StoreError, LookupError):
    """Raised when saving a job that was never created."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id!r} to update")


class LeaseLost(StoreError):
    """Raised when a job update is refused because another replica owns the job now.

    The replica that gets it stops running the job without writing anything more: the
    job was taken over after this replica's lease expired, or canceled elsewhere.
    """

    def __init__(self, job_id: str, owner: str | None) -> None:
        self.job_id = job_id
        self.owner = owner
        super().__init__(f"job {job_id!r} is owned by {owner!r} now")


_P = ParamSpec("_P")
_T = TypeVar("_T")

_NONFINAL: Final = ("queued", "running")
_EMPTY_LIST: Final = "[]"
_encode = msgspec.json.Encoder().encode
_decode_outputs = msgspec.json.Decoder(list[Output]).decode
_decode_metadata = msgspec.json.Decoder(dict[str, Any]).decode
_decode_cursor = msgspec.json.Decoder(tuple[float, str]).decode

# Columns a job changes after creation; the rest are fixed at create_job.
_JOB_MUTABLE: Final = (
    "status",
    "progress",
    "provider",
    "outputs",
    "cost_usd",
    "error_code",
    "error_message",
    "updated_at",
    "completed_at",
    "deadline_at",
    "metadata",
    "callback_url",
    "duplicate_submissions",
    "callback_state",
)

_INSERT_JOB: Final = jobs.insert()
_INSERT_ATTEMPT: Final = attempts.insert()
_UPDATE_JOB: Final = (
    jobs.update()
    .where(jobs.c.id == sa.bindparam("job_id"))
    .values({name: sa.bindparam(name) for name in _JOB_MUTABLE})
)
_SELECT_JOB: Final = sa.select(jobs).where(jobs.c.id == sa.bindparam("id"))
_SELECT_TENANT_JOB: Final = _SELECT_JOB.where(jobs.c.tenant == sa.bindparam("tenant"))
_SELECT_ATTEMPTS: Final = (
    sa.select(attempts).where(attempts.c.job_id == sa.bindparam("job_id")).order_by(attempts.c.seq)
)
_SELECT_ATTEMPTS_OF: Final = (
    sa.select(attempts)
    .where(attempts.c.job_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(attempts.c.job_id, attempts.c.seq)
)
_NEWEST_FIRST: Final = (jobs.c.created_at.desc(), jobs.c.id.desc())
_AFTER_CURSOR: Final = sa.or_(
    jobs.c.created_at < sa.bindparam("c_at"),
    sa.and_(jobs.c.created_at == sa.bindparam("c_at"), jobs.c.id < sa.bindparam("c_id")),
)
_LIST_BASE: Final = (
    sa.select(jobs)
    .where(jobs.c.tenant == sa.bindparam("tenant"))
    .order_by(*_NEWEST_FIRST)
    .limit(sa.bindparam("limit"))
)
_STATUS_IS: Final = jobs.c.status == sa.bindparam("status")
# Four prebuilt variants: (status filter?, cursor?) -> statement.
_LIST: Final = {
    (False, False): _LIST_BASE,
    (True, False): _LIST_BASE.where(_STATUS_IS),
    (False, True): _LIST_BASE.where(_AFTER_CURSOR),
    (True, True): _LIST_BASE.where(_STATUS_IS, _AFTER_CURSOR),
}
_SELECT_NONFINAL: Final = (
    sa.select(jobs)
    .where(jobs.c.status.in_(_NONFINAL))
    .order_by(jobs.c.created_at, jobs.c.id)
    .limit(sa.bindparam("limit"))
)
_SELECT_BY_IDEMPOTENCY_KEY: Final = sa.select(jobs).where(
    jobs.c.tenant == sa.bindparam("tenant"), jobs.c.idempotency_key == sa.bindparam("key")
)
_SELECT_BY_UPSTREAM_ID: Final = (
    sa.select(jobs)
    .join(attempts, attempts.c.job_id == jobs.c.id)
    .where(
        attempts.c.provider == sa.bindparam("provider"),
        attempts.c.upstream_id == sa.bindparam("upstream_id"),
    )
    .order_by(attempts.c.started_at.desc())
    .limit(1)
)


_INSERT_EVENT: Final = job_events.insert()
_SELECT_EVENTS: Final = (
    sa.select(job_events)
    .where(job_events.c.job_id == sa.bindparam("job_id"), job_events.c.seq > sa.bindparam("after"))
    .order_by(job_events.c.seq)
    .limit(sa.bindparam("limit"))
)
_LAST_EVENT_SEQ: Final = sa.select(sa.func.max(job_events.c.seq)).where(
    job_events.c.job_id == sa.bindparam("job_id")
)
_SELECT_PENDING_CALLBACKS: Final = (
    sa.select(jobs)
    .where(jobs.c.callback_state == "pending", jobs.c.status.not_in(_NONFINAL))
    .order_by(jobs.c.created_at, jobs.c.id)
    .limit(sa.bindparam("limit"))
)
_OLDEST_NONFINAL: Final = sa.select(sa.func.min(jobs.c.created_at)).where(
    jobs.c.status.in_(_NONFINAL)
)
# ``k_`` names: an UPDATE may not bind a parameter named like one of its columns.
_KEY_IS: Final = sa.and_(
    idempotency_keys.c.tenant == sa.bindparam("k_tenant"),
    idempotency_keys.c.key == sa.bindparam("k_key"),
)
_SELECT_KEY: Final = sa.select(idempotency_keys).where(_KEY_IS)
_DELETE_KEY: Final = idempotency_keys.delete().where(_KEY_IS)
_FREE_JOB_KEY: Final = (
    jobs.update()
    .where(
        jobs.c.tenant == sa.bindparam("k_tenant"), jobs.c.idempotency_key == sa.bindparam("k_key")
    )
    .values(idempotency_key=None)
)
_PRUNE_KEYS: Final = idempotency_keys.delete().where(
    idempotency_keys.c.expires_at <= sa.bindparam("now")
)
_PRUNE_JOB_KEYS: Final = (
    jobs.update()
    .where(jobs.c.idempotency_key.is_not(None), jobs.c.created_at <= sa.bindparam("cutoff"))
    .values(idempotency_key=None)
)
_SELECT_ASSET: Final = sa.select(assets).where(
    assets.c.tenant == sa.bindparam("tenant"), assets.c.id == sa.bindparam("id")
)


def _build_insert_ignore(dialect: str, table: sa.Table) -> sa.Executable:
    """``INSERT … ON CONFLICT DO NOTHING``: the unique key decides who wins a race."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing()


_INSERT_KEY: Final = {
    name: _build_insert_ignore(name, idempotency_keys) for name in ("postgresql", "sqlite")
}
_INSERT_ASSET: Final = {
    name: _build_insert_ignore(name, assets) for name in ("postgresql", "sqlite")
}


#: What an attempt never changes once written: setting them again would rewrite the
#: ``(job_id, seq)`` index entry (on SQLite one more WAL page per save) for nothing.
_ATTEMPT_IDENTITY: Final = frozenset({"id", "job_id", "seq", "provider"})


def _build_upsert_attempt(dialect: str) -> sa.Executable:
    """``INSERT … ON CONFLICT (id) DO UPDATE``: one statement instead of select-then-write."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(attempts)
    return stmt.on_conflict_do_update(
        index_elements=[attempts.c.id],
        set_={c.name: stmt.excluded[c.name] for c in attempts.c if c.name not in _ATTEMPT_IDENTITY},
    )


_UPSERT_ATTEMPT: Final = {name: _build_upsert_attempt(name) for name in ("postgresql", "sqlite")}


def _job_params(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.id,
        "tenant": job.tenant,
        "kind": job.kind,
        "status": job.status,
        "request": job.request.decode(),
        "progress": job.progress,
        "provider": job.provider,
        "outputs": _encode(job.outputs).decode() if job.outputs else _EMPTY_LIST,
        "cost_usd": job.cost_usd,
        "error_code": job.error_code,
        "error_message": job.error_message,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "completed_at": job.completed_at,
        "deadline_at": job.deadline_at,
        "metadata": None if job.metadata is None else _encode(job.metadata).decode(),
        "idempotency_key": job.idempotency_key,
        "request_fingerprint": job.request_fingerprint,
        "callback_url": job.callback_url,
        "duplicate_submissions": job.duplicate_submissions,
        "callback_state": job.callback_state,
    }


def _job_update_params(job: JobRecord) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "status": job.status,
        "progress": job.progress,
        "provider": job.provider,
        "outputs": _encode(job.outputs).decode() if job.outputs else _EMPTY_LIST,
        "cost_usd": job.cost_usd,
        "error_code": job.error_code,
        "error_message": job.error_message,
        "updated_at": job.updated_at,
        "completed_at": job.completed_at,
        "deadline_at": job.deadline_at,
        "metadata": None if job.metadata is None else _encode(job.metadata).decode(),
        "callback_url": job.callback_url,
        "duplicate_submissions": job.duplicate_submissions,
        "callback_state": job.callback_state,
    }


def _attempt_params(a: AttemptRecord) -> dict[str, Any]:
    return {
        "id": a.id,
        "job_id": a.job_id,
        "seq": a.seq,
        "provider": a.provider,
        "status": a.status,
        "upstream_id": a.upstream_id,
        "error_kind": a.error_kind,
        "error_message": a.error_message,
        "http_status": a.http_status,
        "started_at": a.started_at,
        "ended_at": a.ended_at,
        "latency_s": a.latency_s,
        "cost_usd": a.cost_usd,
    }


def _job_from_row(row: Sequence[Any]) -> JobRecord:
    # Positional unpacking follows the column order of ``tables.jobs``.
    (
        id_,
        tenant,
        kind,
        status,
        request,
        progress,
        provider,
        outputs,
        cost_usd,
        error_code,
        error_message,
        created_at,
        updated_at,
        completed_at,
        deadline_at,
        metadata,
        idempotency_key,
        request_fingerprint,
        callback_url,
        duplicate_submissions,
        callback_state,
    ) = row[:21]  # the lease columns (revision 0004) follow; they are not the record's
    return JobRecord(
        id=id_,
        tenant=tenant,
        kind=kind,
        request=request.encode(),
        created_at=created_at,
        updated_at=updated_at,
        deadline_at=deadline_at,
        status=status,
        progress=progress,
        provider=provider,
        outputs=[] if outputs == _EMPTY_LIST else _decode_outputs(outputs),
        cost_usd=cost_usd,
        error_code=error_code,
        error_message=error_message,
        completed_at=completed_at,
        metadata=None if metadata is None else _decode_metadata(metadata),
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
        callback_url=callback_url,
        duplicate_submissions=duplicate_submissions,
        callback_state=callback_state,
    )


def _attempt_from_row(row: Sequence[Any]) -> AttemptRecord:
    return AttemptRecord(*row)


def encode_cursor(created_at: float, job_id: str) -> str:
    """The opaque cursor of the page that starts after ``(created_at, job_id)``."""
    return base64.urlsafe_b64encode(_encode((created_at, job_id))).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Undo :func:`encode_cursor`; raises :class:`InvalidCursor` on anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return _decode_cursor(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise InvalidCursor(f"invalid cursor {cursor!r}") from exc


# --- leases ----------------------------------------------------------------------------


class _DbNow(FunctionElement[float]):
    """The database's clock in unix seconds (rendered per dialect below)."""

    type = sa.Double()
    inherit_cache = True
    name = "db_now"


@compiles(_DbNow, "postgresql")
def _db_now_pg(_element: _DbNow, _compiler: SQLCompiler, **_kw: Any) -> str:
    return "CAST(extract(epoch FROM clock_timestamp()) AS DOUBLE PRECISION)"


@compiles(_DbNow, "sqlite")
def _db_now_sqlite(_element: _DbNow, _compiler: SQLCompiler, **_kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


# ``l_now`` is ``None`` in production (the database's clock); tests bind a fixed time.
_NOW: Final = sa.func.coalesce(sa.bindparam("l_now", type_=sa.Double), _DbNow())
_LEASE_END: Final = _NOW + sa.bindparam("l_lease_s", type_=sa.Double)
_MINE_OR_FREE: Final = sa.or_(jobs.c.owner.is_(None), jobs.c.owner == sa.bindparam("l_owner"))
_UPDATE_OWNED_JOB: Final = _UPDATE_JOB.where(_MINE_OR_FREE)
_INSERT_OWNED_JOB: Final = jobs.insert().values(
    owner=sa.bindparam("l_owner"), lease_until=_LEASE_END
)
_SELECT_OWNER: Final = sa.select(jobs.c.owner).where(jobs.c.id == sa.bindparam("id"))
_SELECT_LEASE: Final = sa.select(jobs.c.owner, jobs.c.lease_until).where(
    jobs.c.id == sa.bindparam("id")
)
_SELECT_DB_NOW: Final = sa.select(_NOW)
_SELECT_JOBS_BY_IDS: Final = (
    sa.select(jobs)
    .where(jobs.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(jobs.c.created_at, jobs.c.id)
)


def _build_claim(expired_only: bool) -> sa.Executable:
    """Take up to ``limit`` non-final jobs whose lease ran out (or all, at a lone start).

    The candidate rows are locked ``SKIP LOCKED``, so concurrent claimers split them
    instead of queueing, and the outer ``WHERE`` repeats the condition, so a row whose
    lease was renewed in between is left alone.
    """
    cond: sa.ColumnElement[bool] = jobs.c.status.in_(_NONFINAL)
    if expired_only:
        cond = sa.and_(cond, sa.or_(jobs.c.owner.is_(None), jobs.c.lease_until <= _NOW))
    candidates = (
        sa.select(jobs.c.id)
        .where(cond)
        .order_by(jobs.c.created_at, jobs.c.id)
        .limit(sa.bindparam("limit"))
        .with_for_update(skip_locked=True)
    )
    return (
        jobs.update()
        .where(jobs.c.id.in_(candidates), cond)
        .values(owner=sa.bindparam("l_owner"), lease_until=_LEASE_END)
        .returning(jobs.c.id)
    )


_CLAIM: Final = {True: _build_claim(True), False: _build_claim(False)}
_CLAIM_FROM: Final = (
    jobs.update()
    .where(jobs.c.owner == sa.bindparam("l_from"), jobs.c.status.in_(_NONFINAL))
    .values(owner=sa.bindparam("l_owner"), lease_until=_LEASE_END)
    .returning(jobs.c.id)
)
_SELECT_OWNERS: Final = (
    sa.select(jobs.c.owner)
    .where(jobs.c.status.in_(_NONFINAL), jobs.c.owner.is_not(None))
    .distinct()
)
_RENEW: Final = (
    jobs.update()
    .where(
        jobs.c.id.in_(sa.bindparam("ids", expanding=True)),
        jobs.c.owner == sa.bindparam("l_owner"),
    )
    .values(lease_until=_LEASE_END)
    .returning(jobs.c.id)
)
_RELEASE: Final = (
    jobs.update()
    .where(jobs.c.owner == sa.bindparam("l_owner"), jobs.c.status.in_(_NONFINAL))
    .values(lease_until=_NOW)
)
_TAKE: Final = (
    jobs.update()
    .where(
        jobs.c.id == sa.bindparam("l_id"),
        jobs.c.tenant == sa.bindparam("l_tenant"),
        jobs.c.status.in_(_NONFINAL),
    )
    .values(owner=sa.bindparam("l_owner"), lease_until=_LEASE_END)
    .returning(jobs.c.id)
)


def _claim(conn: Connection, params: dict[str, Any], expired_only: bool) -> list[JobRecord]:
    stmt = _CLAIM_FROM if params.get("l_from") else _CLAIM[expired_only]
    ids = [r[0] for r in conn.execute(stmt, params)]
    if not ids:
        return []
    return _select_jobs(conn, _SELECT_JOBS_BY_IDS, {"ids": ids})


def _select_owners(conn: Connection) -> list[str]:
    return [r[0] for r in conn.execute(_SELECT_OWNERS)]


def _renew(conn: Connection, params: dict[str, Any]) -> set[str]:
    return {r[0] for r in conn.execute(_RENEW, params)}


def _take(conn: Connection, params: dict[str, Any]) -> JobRecord | None:
    if conn.execute(_TAKE, params).first() is None:
        return None
    return _select_one(conn, _SELECT_JOB, {"id": params["l_id"]})


def _update_owned_job(
    conn: Connection,
    job: dict[str, Any],
    items: list[dict[str, Any]],
    events: list[dict[str, Any]] | None = None,
) -> tuple[bool, str | None]:
    """Like :func:`_update_job`, but only while the job is ours (or nobody's).

    Returns ``(True, None)`` when written, else ``(False, owner)``: the replica that
    holds the job now, or ``None`` when there is no such job.
    """
    if _write(conn, _UPDATE_OWNED_JOB, job) == 0:
        row = conn.execute(_SELECT_OWNER, {"id": job["job_id"]}).first()
        return False, None if row is None else str(row[0])
    for item in items:
        _write(conn, _UPSERT_ATTEMPT[conn.dialect.name], item)
    if events:
        _write(conn, _INSERT_EVENT, events)
    return True, None


def _insert_owned_job(
    conn: Connection,
    job: dict[str, Any],
    items: list[dict[str, Any]],
    events: list[dict[str, Any]] | None = None,
) -> None:
    """:func:`_insert_job` that also claims the new job for its creator."""
    _write(conn, _INSERT_OWNED_JOB, job)
    if len(items) == 1:
        _write(conn, _INSERT_ATTEMPT, items[0])
    elif items:
        _write(conn, _INSERT_ATTEMPT, items)
    if events:
        _write(conn, _INSERT_EVENT, events)


def _select_lease(conn: Connection, params: dict[str, Any]) -> tuple[str | None, float | None]:
    row = conn.execute(_SELECT_LEASE, params).first()
    return (None, None) if row is None else (row[0], row[1])


# --- operations: one transaction each, run by a runner ---------------------------------


def _event_params(e: EventRecord) -> dict[str, Any]:
    return {"job_id": e.job_id, "seq": e.seq, "type": e.type, "data": e.data.decode(), "at": e.at}


def _event_from_row(row: Sequence[Any]) -> EventRecord:
    job_id, seq, type_, data, at = row
    return EventRecord(job_id, seq, type_, data.encode(), at)


def _key_from_row(row: Sequence[Any]) -> IdempotencyRecord:
    tenant, key, fingerprint, job_id, status_code, response, created_at, expires_at = row
    return IdempotencyRecord(
        tenant=tenant,
        key=key,
        fingerprint=fingerprint,
        created_at=created_at,
        expires_at=expires_at,
        job_id=job_id,
        status_code=status_code,
        response=None if response is None else response.encode(),
    )


def _asset_params(a: AssetRecord) -> dict[str, Any]:
    return {
        "tenant": a.tenant,
        "id": a.id,
        "sha256": a.sha256,
        "job_id": a.job_id,
        "content_type": a.content_type,
        "bytes": a.bytes,
        "width": a.width,
        "height": a.height,
        "duration_s": a.duration_s,
        "created_at": a.created_at,
    }


def _asset_from_row(row: Sequence[Any]) -> AssetRecord:
    tenant, id_, sha, job_id, ctype, size, width, height, duration, created = row
    return AssetRecord(
        tenant=tenant,
        id=id_,
        sha256=sha,
        content_type=ctype,
        bytes=size,
        created_at=created,
        job_id=job_id,
        width=width,
        height=height,
        duration_s=duration,
    )


# --- SQLite fast path for the hot writes -------------------------------------------------

_NOT_FAST: Final = object()
_fast_sql: dict[tuple[int, tuple[str, ...]], Any] = {}


def _write(conn: Connection, stmt: Any, params: dict[str, Any] | list[dict[str, Any]]) -> int:
    """Execute a hot write; returns the rowcount.

    On SQLite the statement is compiled once per shape of ``params`` and run on the
    driver's own cursor, inside the transaction SQLAlchemy opened: its per-call
    machinery (cache keys, parameter construction, result objects) cost more than
    SQLite's own work on this path (measured: ~20 % of the service's CPU under load).
    Bind processors (``to_float`` on Double columns) are applied here; statements with
    expanding parameters take the ordinary path, and so does every other dialect.
    """
    if conn.dialect.name != "sqlite":
        return int(conn.execute(stmt, params).rowcount)
    rows: list[dict[str, Any]] = params if isinstance(params, list) else [params]
    first = rows[0]
    key = (id(stmt), tuple(first))
    entry = _fast_sql.get(key)
    if entry is None:
        compiled = stmt.compile(dialect=conn.dialect, column_keys=list(first))
        order = compiled.positiontup
        if order is None or compiled.literal_execute_params or compiled.post_compile_params:
            entry = _NOT_FAST
        else:
            procs = compiled._bind_processors  # e.g. to_float on Double columns
            entry = (compiled.string, tuple((k, procs.get(k)) for k in order))
        _fast_sql[key] = entry
    if entry is _NOT_FAST:
        return int(conn.execute(stmt, params).rowcount)
    sql, order = cast("tuple[str, tuple[tuple[str, Any], ...]]", entry)

    def bind(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row[k] if proc is None else proc(row[k]) for k, proc in order)

    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if len(rows) > 1:
            cursor.executemany(sql, [bind(row) for row in rows])
        else:
            cursor.execute(sql, bind(first))
        return int(cursor.rowcount)
    except sqlite3.DatabaseError as exc:
        # Callers catch SQLAlchemy's types (IntegrityError, OperationalError): keep them.
        raise sa.exc.DBAPIError.instance(sql, None, exc, sqlite3.DatabaseError) from exc
    finally:
        cursor.close()


def _insert_job(
    conn: Connection,
    job: dict[str, Any],
    items: list[dict[str, Any]],
    events: list[dict[str, Any]] | None = None,
) -> None:
    _write(conn, _INSERT_JOB, job)
    if len(items) == 1:
        _write(conn, _INSERT_ATTEMPT, items[0])
    elif items:
        _write(conn, _INSERT_ATTEMPT, items)
    if events:
        _write(conn, _INSERT_EVENT, events)


def _update_job(
    conn: Connection,
    job: dict[str, Any],
    items: list[dict[str, Any]],
    events: list[dict[str, Any]] | None = None,
) -> bool:
    if _write(conn, _UPDATE_JOB, job) == 0:
        return False
    for item in items:
        _write(conn, _UPSERT_ATTEMPT[conn.dialect.name], item)
    if events:
        _write(conn, _INSERT_EVENT, events)
    return True


def _select_events(conn: Connection, params: dict[str, Any]) -> list[EventRecord]:
    return [_event_from_row(r) for r in conn.execute(_SELECT_EVENTS, params)]


def _scalar(conn: Connection, stmt: sa.Executable, params: dict[str, Any]) -> Any:
    return conn.execute(stmt, params).scalar()


def _forget_key(conn: Connection, params: dict[str, Any]) -> None:
    conn.execute(_DELETE_KEY, params)
    conn.execute(_FREE_JOB_KEY, params)


def _prune_keys(conn: Connection, now: float, cutoff: float) -> int:
    count = int(conn.execute(_PRUNE_KEYS, {"now": now}).rowcount)
    return count + int(conn.execute(_PRUNE_JOB_KEYS, {"cutoff": cutoff}).rowcount)


def _select_key(conn: Connection, params: dict[str, Any]) -> IdempotencyRecord | None:
    row = conn.execute(_SELECT_KEY, params).first()
    return None if row is None else _key_from_row(row)


def _execute_count(conn: Connection, stmt: sa.Executable, params: dict[str, Any]) -> int:
    return int(conn.execute(stmt, params).rowcount)


def _select_asset(conn: Connection, params: dict[str, Any]) -> AssetRecord | None:
    row = conn.execute(_SELECT_ASSET, params).first()
    return None if row is None else _asset_from_row(row)


def _upsert_attempt_op(conn: Connection, item: dict[str, Any]) -> None:
    conn.execute(_UPSERT_ATTEMPT[conn.dialect.name], item)


def _load_attempts(conn: Connection, page: list[JobRecord]) -> list[JobRecord]:
    if len(page) == 1:
        rows = conn.execute(_SELECT_ATTEMPTS, {"job_id": page[0].id})
        page[0].attempts = [_attempt_from_row(r) for r in rows]
    elif page:
        by_id: Mapping[str, JobRecord] = {j.id: j for j in page}
        for r in conn.execute(_SELECT_ATTEMPTS_OF, {"ids": list(by_id)}):
            attempt = _attempt_from_row(r)
            by_id[attempt.job_id].attempts.append(attempt)
    return page


def _select_jobs(conn: Connection, stmt: sa.Executable, params: dict[str, Any]) -> list[JobRecord]:
    return _load_attempts(conn, [_job_from_row(r) for r in conn.execute(stmt, params)])


def _select_one(conn: Connection, stmt: sa.Executable, params: dict[str, Any]) -> JobRecord | None:
    row = conn.execute(stmt, params).first()
    return None if row is None else _load_attempts(conn, [_job_from_row(row)])[0]


def _ping(conn: Connection) -> None:
    conn.execute(sa.text("SELECT 1"))


# --- runners ---------------------------------------------------------------------------


class _Runner(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def run(
        self,
        write: bool,
        fn: Callable[Concatenate[Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T: ...


class _AsyncRunner:
    """PostgreSQL: the async engine's pool, each operation in ``run_sync``."""

    __slots__ = ("_engine", "_options", "_url")

    def __init__(self, url: URL, options: dict[str, Any]) -> None:
        self._url = url
        self._options = options
        self._engine: AsyncEngine | None = None

    async def start(self) -> None:
        self._engine = create_async_engine(self._url, **self._options)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def run(
        self,
        write: bool,
        fn: Callable[Concatenate[Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        if self._engine is None:
            raise RuntimeError("the store is not started")
        if write:
            async with self._engine.begin() as conn:
                return await conn.run_sync(fn, *args, **kwargs)
        async with self._engine.connect() as conn:
            return await conn.run_sync(fn, *args, **kwargs)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets other processes read beside the writer; NORMAL skips the fsync per commit
    # (durable at checkpoints, never corrupt); busy_timeout waits for another process's
    # write lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _is_memory_sqlite(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url)


class _SqliteRunner:
    """SQLite: one connection, used inline on the event loop; checkpoints in a thread.

    A SQLite statement and its commit take tens of microseconds and hold the GIL
    throughout, so a worker thread bought no parallelism, only two thread hops per
    operation (measured: 0.7 ms against 0.35 ms per write). Running inline also means
    a write whose awaiting task is cancelled still commits: nothing can interrupt it.

    What could stall the loop is moved off it: WAL checkpoints (the only fsyncs under
    ``synchronous=NORMAL``) run from a background thread on a connection of their own,
    and a write that finds another process holding the lock backs off with an
    ``await`` instead of SQLite's blocking busy wait.
    """

    __slots__ = (
        "_checkpoint_thread",
        "_checkpointer",
        "_conn",
        "_engine",
        "_options",
        "_url",
        "_writes",
        "_writes_at_checkpoint",
    )

    #: How long one inline attempt may wait for the write lock. SQLite's busy wait sleeps
    #: on the event loop's thread (1, 2, 5, 10 ms...): 20 ms stalled every request in
    #: flight at each WAL restart (p99 +10 ms at 200 req/s, measured); past 1 ms the
    #: operation backs off with an ``await`` instead (see :meth:`run`).
    BUSY_MS = 1
    #: How long an operation keeps retrying a locked database before it fails.
    LOCKED_GIVE_UP_S = 5.0
    #: Waits between those retries, doubling from the first to the cap. The lock is
    #: mostly the checkpointer's WAL restart, held for a few to tens of ms: a short cap
    #: resumes writers soon after it is released (with a 50 ms cap, a 20 ms hold
    #: delayed them by 30 ms), and a failed attempt costs microseconds.
    LOCKED_FIRST_WAIT_S = 0.001
    LOCKED_MAX_WAIT_S = 0.005
    CHECKPOINT_EVERY_S = 1.0
    #: A WAL larger than this is restarted after the passive checkpoint (see
    #: :func:`router.store.sqlite_wal.checkpoint`).
    WAL_RESTART_BYTES = 64 * 1024 * 1024

    def __init__(self, url: URL, options: dict[str, Any]) -> None:
        self._url = url.set(drivername="sqlite")
        self._options = options
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoint_thread: ThreadPoolExecutor | None = None
        #: Write operations run, and how many had run at the last checkpoint.
        self._writes = 0
        self._writes_at_checkpoint = 0

    async def start(self) -> None:
        options = dict(self._options)
        options.setdefault("connect_args", {"check_same_thread": False})
        if _is_memory_sqlite(self._url):
            options.setdefault("poolclass", StaticPool)  # each :memory: connection is empty
        else:
            options.setdefault("pool_size", 1)
            options.setdefault("max_overflow", 0)
        engine = sa.create_engine(self._url, **options)
        event.listen(engine, "connect", _on_sqlite_connect)
        self._engine = engine
        if not _is_memory_sqlite(self._url) and self._url.database:
            self._checkpoint_thread = checkpoint_executor()
            self._checkpointer = asyncio.create_task(
                self._checkpoint_loop(self._url.database), name="sqlite checkpoints"
            )

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        if self._checkpoint_thread is not None:
            # A round in progress ends first; wait for it off the loop.
            await asyncio.to_thread(self._checkpoint_thread.shutdown, wait=True)
            self._checkpoint_thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    async def run(
        self,
        write: bool,
        fn: Callable[Concatenate[Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        if self._engine is None:
            raise RuntimeError("the store is not started")
        self._writes += write
        delay = self.LOCKED_FIRST_WAIT_S
        give_up = time.monotonic() + self.LOCKED_GIVE_UP_S
        while True:
            try:
                return self._in_transaction(fn, *args, **kwargs)
            except sa.exc.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > give_up:
                    raise
            await asyncio.sleep(delay)  # another process writes: yield, then retry
            delay = min(delay * 2, self.LOCKED_MAX_WAIT_S)

    def _in_transaction(
        self, fn: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        conn = self._conn
        if conn is None:
            if self._engine is None:
                raise RuntimeError("the store is closed")
            conn = self._conn = self._engine.connect()
            conn.exec_driver_sql(f"PRAGMA busy_timeout={self.BUSY_MS}")
            conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")  # see _checkpoint_loop
            conn.commit()
        # Reads take the same path: the stdlib driver opens no SQLite transaction for a
        # SELECT, so their commit is free.
        with conn.begin():
            return fn(conn, *args, **kwargs)

    async def _checkpoint_loop(self, path: str) -> None:
        """Fold the WAL into the database from a thread, so its fsync never blocks the loop."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.CHECKPOINT_EVERY_S)
            if self._writes == self._writes_at_checkpoint:
                # Nothing new to copy: a round now would only rewrite the page that
                # began the current log (see sqlite_wal), once a second while idle.
                continue
            self._writes_at_checkpoint = self._writes
            with contextlib.suppress(Exception):  # best effort; the next round retries
                await loop.run_in_executor(
                    self._checkpoint_thread, checkpoint, path, self.WAL_RESTART_BYTES
                )


# --- the store -------------------------------------------------------------------------


class SqlJobStore:
    """:class:`~router.store.protocol.JobStore` on SQLAlchemy Core.

    ``engine_options`` go to SQLAlchemy's ``create_engine``/``create_async_engine``, e.g.
    ``connect_args={"server_settings": {"search_path": "tenant_a"}}`` for asyncpg.
    """

    __slots__ = ("_dialect", "_lease_s", "_owner", "_runner", "_url")

    def __init__(self, database_url: str, **engine_options: Any) -> None:
        self._url = make_url(database_url)
        self._owner: str | None = None
        self._lease_s = 15.0
        backend = self._url.get_backend_name()
        self._dialect = backend
        self._runner: _Runner
        if backend == "sqlite":
            self._runner = _SqliteRunner(self._url, engine_options)
        elif backend == "postgresql":
            self._runner = _AsyncRunner(self._url, engine_options)
        else:
            raise ValueError(f"unsupported database {backend!r}: use sqlite or postgresql")

    def __repr__(self) -> str:
        return f"SqlJobStore({self._url.render_as_string(hide_password=True)!r})"

    async def start(self) -> None:
        await self._runner.start()
        await self._runner.run(True, migrate.upgrade_connection)

    async def close(self) -> None:
        await self._runner.close()

    async def ping(self) -> bool:
        try:
            await self._runner.run(False, _ping)
        except (sa.exc.SQLAlchemyError, OSError, RuntimeError):
            return False
        return True

    async def create_job(self, job: JobRecord, events: Sequence[EventRecord] = ()) -> None:
        items = [_attempt_params(a) for a in job.attempts]
        evs = [_event_params(e) for e in events]
        try:
            if self._owner is None:
                await self._runner.run(True, _insert_job, _job_params(job), items, evs)
            else:
                params = _job_params(job)
                params.update(l_owner=self._owner, l_lease_s=self._lease_s, l_now=None)
                await self._runner.run(True, _insert_owned_job, params, items, evs)
        except sa.exc.IntegrityError as exc:
            key = job.idempotency_key
            if key is None or "idempotency_key" not in str(exc.orig):
                raise
            existing = await self.find_by_idempotency_key(job.tenant, key)
            raise DuplicateIdempotencyKey(
                job.tenant, key, None if existing is None else existing.id
            ) from exc

    async def get_job(self, tenant: str | None, job_id: str) -> JobRecord | None:
        if tenant is None:
            return await self._runner.run(False, _select_one, _SELECT_JOB, {"id": job_id})
        params = {"id": job_id, "tenant": tenant}
        return await self._runner.run(False, _select_one, _SELECT_TENANT_JOB, params)

    async def list_jobs(
        self, tenant: str, *, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[JobRecord], str | None]:
        params: dict[str, Any] = {"tenant": tenant, "limit": limit + 1}
        if status is not None:
            params["status"] = status
        if cursor is not None:
            params["c_at"], params["c_id"] = decode_cursor(cursor)
        stmt = _LIST[status is not None, cursor is not None]
        page = await self._runner.run(False, _select_jobs, stmt, params)
        if len(page) <= limit:
            return page, None
        # One row past the page tells there is a next one without a COUNT.
        del page[limit:]
        return page, encode_cursor(page[-1].created_at, page[-1].id)

    async def save_attempt(self, attempt: AttemptRecord) -> None:
        await self._runner.run(True, _upsert_attempt_op, _attempt_params(attempt))

    async def save_job(self, job: JobRecord) -> None:
        if self._owner is not None:
            await self._save_owned(job, [], [])
        elif not await self._runner.run(True, _update_job, _job_update_params(job), []):
            raise UnknownJob(job.id)

    async def save(
        self, job: JobRecord, *attempts: AttemptRecord, events: Sequence[EventRecord] = ()
    ) -> None:
        items = [_attempt_params(a) for a in attempts]
        evs = [_event_params(e) for e in events]
        if self._owner is not None:
            await self._save_owned(job, items, evs)
        elif not await self._runner.run(True, _update_job, _job_update_params(job), items, evs):
            raise UnknownJob(job.id)

    async def _save_owned(
        self, job: JobRecord, items: list[dict[str, Any]], evs: list[dict[str, Any]]
    ) -> None:
        params = _job_update_params(job)
        params["l_owner"] = self._owner
        written, owner = await self._runner.run(True, _update_owned_job, params, items, evs)
        if written:
            return
        if owner is None:
            raise UnknownJob(job.id)
        raise LeaseLost(job.id, owner)

    # -- leases (see the module doc) ----------------------------------------------------

    def use_leases(self, owner: str | None, lease_s: float = 15.0) -> None:
        """Own the jobs this store creates as ``owner`` for ``lease_s``, and fence updates.

        ``None`` turns leases off: jobs are created unowned and updates always apply.
        """
        self._owner = owner
        self._lease_s = lease_s

    @property
    def lease_owner(self) -> str | None:
        """The replica this store creates and updates jobs as, if leases are on."""
        return self._owner

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
        """Take non-final jobs nobody holds (lease expired or never owned), oldest first.

        ``expired_only=False`` takes every non-final job whatever its lease (a lone
        SQLite replica at start: whoever held them was this file's previous process).
        ``from_owner`` takes every non-final job of that owner (known dead), without
        ``limit``. ``now`` replaces the database's clock (tests).
        """
        params = {
            "l_owner": owner,
            "l_lease_s": lease_s,
            "l_now": now,
            "limit": limit,
            "l_from": from_owner,
        }
        return await self._runner.run(True, _claim, params, expired_only)

    async def lease_owners(self) -> list[str]:
        """The replicas that own non-final jobs (live or not)."""
        return await self._runner.run(False, _select_owners)

    async def renew_leases(
        self, owner: str, job_ids: Sequence[str], lease_s: float, *, now: float | None = None
    ) -> set[str]:
        """Extend ``owner``'s leases on ``job_ids`` in one statement; the ids still owned."""
        if not job_ids:
            return set()
        params = {"ids": list(job_ids), "l_owner": owner, "l_lease_s": lease_s, "l_now": now}
        return await self._runner.run(True, _renew, params)

    async def release_leases(self, owner: str, *, now: float | None = None) -> int:
        """End ``owner``'s leases on its non-final jobs now, so another replica takes them
        over at once (graceful shutdown); returns how many."""
        params = {"l_owner": owner, "l_now": now}
        return await self._runner.run(True, _execute_count, _RELEASE, params)

    async def take_job(
        self, tenant: str, job_id: str, owner: str, lease_s: float, *, now: float | None = None
    ) -> JobRecord | None:
        """Take a non-final job from whoever holds it, lease or not (a cancel through
        another replica); the job as it stands, ``None`` when it is final or absent.

        The previous owner's next update raises :class:`LeaseLost`.
        """
        params = {
            "l_id": job_id,
            "l_tenant": tenant,
            "l_owner": owner,
            "l_lease_s": lease_s,
            "l_now": now,
        }
        return await self._runner.run(True, _take, params)

    async def lease_of(self, job_id: str) -> tuple[str | None, float | None]:
        """``(owner, lease_until)`` of a job (``(None, None)`` when absent)."""
        return await self._runner.run(False, _select_lease, {"id": job_id})

    async def db_time(self) -> float:
        """The database's clock, in unix seconds (what leases are measured by)."""
        return float(await self._runner.run(False, _scalar, _SELECT_DB_NOW, {"l_now": None}))

    async def list_events(
        self, job_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        params = {"job_id": job_id, "after": after, "limit": limit}
        return await self._runner.run(False, _select_events, params)

    async def last_event_seq(self, job_id: str) -> int:
        seq = await self._runner.run(False, _scalar, _LAST_EVENT_SEQ, {"job_id": job_id})
        return int(seq or 0)

    async def pending_callbacks(self, limit: int = 1000) -> list[JobRecord]:
        return await self._runner.run(
            False, _select_jobs, _SELECT_PENDING_CALLBACKS, {"limit": limit}
        )

    async def oldest_nonfinal_created_at(self) -> float | None:
        at = await self._runner.run(False, _scalar, _OLDEST_NONFINAL, {})
        return None if at is None else float(at)

    async def record_idempotent_answer(self, record: IdempotencyRecord) -> bool:
        params = {
            "tenant": record.tenant,
            "key": record.key,
            "fingerprint": record.fingerprint,
            "job_id": record.job_id,
            "status_code": record.status_code,
            "response": None if record.response is None else record.response.decode(),
            "created_at": record.created_at,
            "expires_at": record.expires_at,
        }
        count = await self._runner.run(True, _execute_count, _INSERT_KEY[self._dialect], params)
        return count == 1

    async def get_idempotency_key(self, tenant: str, key: str) -> IdempotencyRecord | None:
        return await self._runner.run(False, _select_key, {"k_tenant": tenant, "k_key": key})

    async def forget_idempotency_key(self, tenant: str, key: str) -> None:
        await self._runner.run(True, _forget_key, {"k_tenant": tenant, "k_key": key})

    async def prune_idempotency_keys(self, now: float, retention_s: float) -> int:
        return await self._runner.run(True, _prune_keys, now, now - retention_s)

    async def save_asset(self, asset: AssetRecord) -> bool:
        params = _asset_params(asset)
        count = await self._runner.run(True, _execute_count, _INSERT_ASSET[self._dialect], params)
        return count == 1

    async def get_asset(self, tenant: str, asset_id: str) -> AssetRecord | None:
        return await self._runner.run(False, _select_asset, {"tenant": tenant, "id": asset_id})

    async def nonfinal_jobs(self, limit: int = 1000) -> list[JobRecord]:
        return await self._runner.run(False, _select_jobs, _SELECT_NONFINAL, {"limit": limit})

    async def find_by_idempotency_key(self, tenant: str, key: str) -> JobRecord | None:
        params = {"tenant": tenant, "key": key}
        return await self._runner.run(False, _select_one, _SELECT_BY_IDEMPOTENCY_KEY, params)

    async def find_by_upstream_id(self, provider: str, upstream_id: str) -> JobRecord | None:
        params = {"provider": provider, "upstream_id": upstream_id}
        return await self._runner.run(False, _select_one, _SELECT_BY_UPSTREAM_ID, params)


def open_store(database_url: str, **engine_options: Any) -> SqlJobStore:
    """A job store for ``sqlite+aiosqlite:///path`` (or ``:memory:``) or ``postgresql+asyncpg://…``.

    Any SQLite driver name is accepted and the stdlib driver used (see the module doc).
    Call :meth:`~SqlJobStore.start` before use and :meth:`~SqlJobStore.close` after.
    """
    return SqlJobStore(database_url, **engine_options)
