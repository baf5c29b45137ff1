"""The job store on SQLAlchemy 2 Core: SQLite by default, PostgreSQL for replicas.

The store write sits on the path of every request, so: no ORM, every statement built
once at import and executed with a parameter dict (SQLAlchemy's compiled cache then
skips compilation, and asyncpg reuses its prepared statements), one transaction per
logical write, and rows unpacked by position.

Each operation is one synchronous function over a :class:`~sqlalchemy.engine.Connection`,
run in a single transaction by a runner:

- PostgreSQL: an async engine on asyncpg, the function run with ``AsyncConnection.run_sync``.
- SQLite: a sync engine (the stdlib driver) on one dedicated worker thread, the whole
  function in one thread hop. aiosqlite hops to its thread for every cursor, execute,
  fetch, close and commit (about eight hops per write); measured on a 2-core box that
  made ``create_job`` cost ~1.4 ms against ~0.3 ms here. One thread also means one
  connection, so the process never waits on its own SQLite write lock.

Parameters are built on the event loop before the hop, so the engine may keep mutating
its records while a write is in flight.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, Final, ParamSpec, Protocol, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

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
from router.store.tables import assets, attempts, idempotency_keys, job_events, jobs

__all__ = ["InvalidCursor", "SqlJobStore", "UnknownJob", "open_store"]


class InvalidCursor(StoreError, ValueError):
    """Raised when a ``cursor`` was not made by :meth:`SqlJobStore.list_jobs`."""


class UnknownJob(StoreError, LookupError):
    """Raised when saving a job that was never created."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id!r} to update")


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


def _build_upsert_attempt(dialect: str) -> sa.Executable:
    """``INSERT … ON CONFLICT (id) DO UPDATE``: one statement instead of select-then-write."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(attempts)
    return stmt.on_conflict_do_update(
        index_elements=[attempts.c.id],
        set_={c.name: stmt.excluded[c.name] for c in attempts.c if c.name not in ("id", "job_id")},
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
    ) = row
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


def _insert_job(
    conn: Connection,
    job: dict[str, Any],
    items: list[dict[str, Any]],
    events: list[dict[str, Any]] | None = None,
) -> None:
    conn.execute(_INSERT_JOB, job)
    if len(items) == 1:
        conn.execute(_INSERT_ATTEMPT, items[0])
    elif items:
        conn.execute(_INSERT_ATTEMPT, items)
    if events:
        conn.execute(_INSERT_EVENT, events)


def _update_job(
    conn: Connection,
    job: dict[str, Any],
    items: list[dict[str, Any]],
    events: list[dict[str, Any]] | None = None,
) -> bool:
    if conn.execute(_UPDATE_JOB, job).rowcount == 0:
        return False
    for item in items:
        conn.execute(_UPSERT_ATTEMPT[conn.dialect.name], item)
    if events:
        conn.execute(_INSERT_EVENT, events)
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


class _ThreadRunner:
    """SQLite: a sync engine and one connection, used only from one worker thread.

    The connection stays checked out for the runner's life, which saves a pool checkout
    and return per operation. A write whose awaiting task is cancelled still runs to its
    commit: the thread cannot be interrupted, and a half-known write is worse than a
    late one.
    """

    __slots__ = ("_conn", "_engine", "_executor", "_options", "_url")

    def __init__(self, url: URL, options: dict[str, Any]) -> None:
        self._url = url.set(drivername="sqlite")
        self._options = options
        self._engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._conn: Connection | None = None  # touched only by the worker thread

    async def start(self) -> None:
        options = dict(self._options)
        # The connection is made in the worker thread but may be disposed of from another.
        options.setdefault("connect_args", {"check_same_thread": False})
        if _is_memory_sqlite(self._url):
            options.setdefault("poolclass", StaticPool)  # each :memory: connection is empty
        else:
            options.setdefault("pool_size", 1)
            options.setdefault("max_overflow", 0)
        engine = sa.create_engine(self._url, **options)
        event.listen(engine, "connect", _on_sqlite_connect)
        self._engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="switchman-sqlite")

    async def close(self) -> None:
        executor = self._executor
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._dispose)
            executor.shutdown(wait=True)
            self._executor = None

    def _dispose(self) -> None:
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
        if self._executor is None:
            raise RuntimeError("the store is not started")
        call = functools.partial(self._in_transaction, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _in_transaction(
        self, fn: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        conn = self._conn
        if conn is None:
            if self._engine is None:
                raise RuntimeError("the store is closed")
            conn = self._conn = self._engine.connect()
        # Reads take the same path: the stdlib driver opens no SQLite transaction for a
        # SELECT, so their commit is free.
        with conn.begin():
            return fn(conn, *args, **kwargs)


# --- the store -------------------------------------------------------------------------


class SqlJobStore:
    """:class:`~router.store.protocol.JobStore` on SQLAlchemy Core.

    ``engine_options`` go to SQLAlchemy's ``create_engine``/``create_async_engine``, e.g.
    ``connect_args={"server_settings": {"search_path": "tenant_a"}}`` for asyncpg.
    """

    __slots__ = ("_dialect", "_runner", "_url")

    def __init__(self, database_url: str, **engine_options: Any) -> None:
        self._url = make_url(database_url)
        backend = self._url.get_backend_name()
        self._dialect = backend
        self._runner: _Runner
        if backend == "sqlite":
            self._runner = _ThreadRunner(self._url, engine_options)
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
            await self._runner.run(True, _insert_job, _job_params(job), items, evs)
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
        if not await self._runner.run(True, _update_job, _job_update_params(job), []):
            raise UnknownJob(job.id)

    async def save(
        self, job: JobRecord, *attempts: AttemptRecord, events: Sequence[EventRecord] = ()
    ) -> None:
        items = [_attempt_params(a) for a in attempts]
        evs = [_event_params(e) for e in events]
        if not await self._runner.run(True, _update_job, _job_update_params(job), items, evs):
            raise UnknownJob(job.id)

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
