"""The job store against real SQLite and PostgreSQL (DESIGN §6)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from router.models import Output
from router.store import (
    AttemptRecord,
    DuplicateIdempotencyKey,
    InvalidCursor,
    JobRecord,
    SqlJobStore,
    UnknownJob,
    format_timestamp,
    migrate,
    new_attempt_id,
    new_job_id,
    open_store,
    to_api_job,
)

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
T0 = 1_800_000_000.0


async def _pg_execute(sql: str) -> None:
    """Run one admin statement on PostgreSQL, or skip (fail when CI=true) if it is absent."""
    engine = create_async_engine(
        PG_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"timeout": 3}
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(sql))
    except (OSError, sa.exc.DBAPIError) as exc:
        reason = f"PostgreSQL at {PG_URL} unreachable: {exc!r}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: PostgreSQL is required)")
        pytest.skip(reason)
    finally:
        await engine.dispose()


class Backend:
    """Where a test's store lives, so a test can open a second store on the same data."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.url = url
        self.options = options

    def open(self) -> SqlJobStore:
        return open_store(self.url, **self.options)


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A fresh database: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield Backend(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}", {})
        return
    schema = f"t_{secrets.token_hex(6)}"
    await _pg_execute(f"CREATE SCHEMA {schema}")
    try:
        yield Backend(PG_URL, {"connect_args": {"server_settings": {"search_path": schema}}})
    finally:
        await _pg_execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[SqlJobStore]:
    """A started store on the backend, closed afterwards."""
    s = backend.open()
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def make_job(
    tenant: str = "acme",
    *,
    created_at: float = T0,
    status: str = "queued",
    key: str | None = None,
    attempts: int = 0,
) -> JobRecord:
    job_id = new_job_id(created_at)
    job = JobRecord(
        id=job_id,
        tenant=tenant,
        kind="image",
        request=b'{"kind":"image","prompt":"a lighthouse at dusk"}',
        created_at=created_at,
        updated_at=created_at,
        deadline_at=created_at + 60,
        status=status,
        idempotency_key=key,
    )
    for seq in range(1, attempts + 1):
        job.attempts.append(make_attempt(job, seq))
    return job


def make_attempt(job: JobRecord, seq: int, **fields: Any) -> AttemptRecord:
    return AttemptRecord(
        id=new_attempt_id(job.created_at),
        job_id=job.id,
        seq=seq,
        provider=f"p{seq}",
        status="running",
        started_at=job.created_at + seq,
        **fields,
    )


async def test_create_then_get_round_trips_every_field(store: SqlJobStore) -> None:
    """Every job and attempt field, outputs and metadata included, reads back as written."""
    job = make_job(status="succeeded")
    job.progress = 100
    job.provider = "fal"
    job.outputs = [
        Output(url="https://a/1.png", content_type="image/png", width=1024, height=576),
        Output(url="https://a/2.mp4", duration_s=5.5, bytes=81234, sha256="ab" * 32),
    ]
    job.cost_usd = 0.0125
    job.error_code = "timeout"
    job.error_message = "took too long"
    job.completed_at = T0 + 4.25
    job.metadata = {"order": "A-17", "nested": {"n": [1, 2.5, None, True]}}
    job.request_fingerprint = "f" * 64
    job.callback_url = "https://svc.internal/hooks/gen"
    job.idempotency_key = "key-1"
    failed = make_attempt(
        job,
        1,
        upstream_id="x7",
        error_kind="upstream_unavailable",
        error_message="503 from upstream",
        http_status=503,
        ended_at=T0 + 1.5,
        latency_s=0.5,
    )
    failed.status = "failed"
    ok = make_attempt(job, 2, upstream_id="y8", ended_at=T0 + 4, latency_s=2.0, cost_usd=0.0125)
    ok.status = "succeeded"
    job.attempts = [ok, failed]  # stored order must not matter: reads come back by seq

    await store.create_job(job)
    got = await store.get_job("acme", job.id)

    assert got is not None
    expected_attempts = [failed, ok]
    assert got.attempts == expected_attempts
    got.attempts = job.attempts = []
    assert got == job
    assert isinstance(got.request, bytes)


async def test_get_job_is_scoped_to_the_tenant(store: SqlJobStore) -> None:
    """Another tenant's id reads as absent; tenant None (internal use) finds any job."""
    job = make_job("acme")
    await store.create_job(job)

    assert await store.get_job("globex", job.id) is None
    assert await store.get_job("acme", "gen_missing") is None
    found = await store.get_job(None, job.id)
    assert found is not None
    assert found.tenant == "acme"


async def test_list_jobs_pages_newest_first_with_a_cursor(store: SqlJobStore) -> None:
    """Pages concatenate to every job of the tenant, newest first, with no repeats."""
    created = [make_job(created_at=T0 + i) for i in range(7)]
    # Two jobs in the same instant: the id breaks the tie.
    created.append(make_job(created_at=T0 + 3))
    for job in created:
        await store.create_job(job)
    await store.create_job(make_job("globex", created_at=T0 + 100))

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = await store.list_jobs("acme", status=None, limit=3, cursor=cursor)
        pages += 1
        seen.extend(j.id for j in page)
        if cursor is None:
            break

    expected = [j.id for j in sorted(created, key=lambda j: (j.created_at, j.id), reverse=True)]
    assert seen == expected
    assert pages == 3


async def test_list_jobs_is_stable_when_newer_jobs_arrive_between_pages(
    store: SqlJobStore,
) -> None:
    """A job created after the first page does not shift or repeat items on the next."""
    for i in range(4):
        await store.create_job(make_job(created_at=T0 + i))
    first, cursor = await store.list_jobs("acme", status=None, limit=2, cursor=None)
    await store.create_job(make_job(created_at=T0 + 50))

    second, end = await store.list_jobs("acme", status=None, limit=2, cursor=cursor)

    assert [j.created_at for j in first] == [T0 + 3, T0 + 2]
    assert [j.created_at for j in second] == [T0 + 1, T0]
    assert end is None


async def test_list_jobs_filters_by_status_and_loads_attempts(store: SqlJobStore) -> None:
    """The status filter applies across pages and each listed job carries its attempts."""
    for i in range(5):
        await store.create_job(
            make_job(created_at=T0 + i, status="running" if i % 2 else "queued", attempts=i % 3)
        )

    page, cursor = await store.list_jobs("acme", status="queued", limit=2, cursor=None)
    rest, end = await store.list_jobs("acme", status="queued", limit=2, cursor=cursor)

    assert [(j.created_at, j.status) for j in page + rest] == [
        (T0 + 4, "queued"),
        (T0 + 2, "queued"),
        (T0, "queued"),
    ]
    assert end is None
    assert [[a.seq for a in j.attempts] for j in page + rest] == [[1], [1, 2], []]


async def test_list_jobs_rejects_a_forged_cursor(store: SqlJobStore) -> None:
    """A cursor the store did not make raises InvalidCursor, which is a ValueError."""
    with pytest.raises(InvalidCursor):
        await store.list_jobs("acme", status=None, limit=2, cursor="not-a-cursor!")
    with pytest.raises(ValueError, match="invalid cursor"):
        await store.list_jobs("acme", status=None, limit=2, cursor="W10")  # base64 of "[]"


async def test_save_attempt_inserts_then_updates(store: SqlJobStore) -> None:
    """save_attempt adds a new attempt and overwrites one whose id already exists."""
    job = make_job(attempts=1)
    await store.create_job(job)
    second = make_attempt(job, 2)
    await store.save_attempt(second)
    second.status = "succeeded"
    second.upstream_id = "up-2"
    second.ended_at = T0 + 9
    second.cost_usd = 0.04
    await store.save_attempt(second)

    got = await store.get_job("acme", job.id)

    assert got is not None
    assert got.attempts == [job.attempts[0], second]


async def test_save_writes_job_and_attempts_together(store: SqlJobStore) -> None:
    """save() updates the job row and upserts the attempts it is given."""
    job = make_job(attempts=1)
    await store.create_job(job)
    job.status = "succeeded"
    job.progress = 100
    job.outputs = [Output(url="https://a/1.png")]
    job.updated_at = job.completed_at = T0 + 5
    job.attempts[0].status = "succeeded"
    job.attempts.append(make_attempt(job, 2))

    await store.save(job, *job.attempts)
    got = await store.get_job("acme", job.id)

    assert got == job


async def test_save_is_atomic_when_an_attempt_fails(store: SqlJobStore) -> None:
    """When one attempt cannot be written, the job row keeps its previous state."""
    job = make_job(attempts=1)
    await store.create_job(job)
    job.status = "failed"
    clash = make_attempt(job, 1)  # a second attempt claiming seq 1

    with pytest.raises(sa.exc.IntegrityError):
        await store.save(job, clash)
    got = await store.get_job("acme", job.id)

    assert got is not None
    assert got.status == "queued"
    assert [a.id for a in got.attempts] == [job.attempts[0].id]


async def test_save_job_updates_only_the_job_row(store: SqlJobStore) -> None:
    """save_job persists job fields and leaves attempts alone; an unknown job raises."""
    job = make_job(attempts=1)
    await store.create_job(job)
    job.progress = 40
    job.attempts[0].status = "succeeded"  # not saved by save_job

    await store.save_job(job)
    got = await store.get_job("acme", job.id)

    assert got is not None
    assert got.progress == 40
    assert got.attempts[0].status == "running"
    with pytest.raises(UnknownJob):
        await store.save_job(make_job())


async def test_nonfinal_jobs_lists_queued_and_running_oldest_first(store: SqlJobStore) -> None:
    """Jobs to resume after a restart: not final, any tenant, oldest first, with attempts."""
    await store.create_job(make_job(created_at=T0 + 3, status="running", attempts=2))
    await store.create_job(make_job("globex", created_at=T0 + 1, status="queued"))
    for status in ("succeeded", "failed", "canceled"):
        await store.create_job(make_job(created_at=T0 + 2, status=status))

    jobs = await store.nonfinal_jobs()

    assert [(j.tenant, j.status, len(j.attempts)) for j in jobs] == [
        ("globex", "queued", 0),
        ("acme", "running", 2),
    ]
    assert len(await store.nonfinal_jobs(limit=1)) == 1


async def test_idempotency_key_is_unique_per_tenant(store: SqlJobStore) -> None:
    """A reused key raises DuplicateIdempotencyKey naming the first job; other tenants may too."""
    first = make_job(key="k-1")
    await store.create_job(first)

    with pytest.raises(DuplicateIdempotencyKey) as caught:
        await store.create_job(make_job(key="k-1", attempts=1))
    await store.create_job(make_job("globex", key="k-1"))
    await store.create_job(make_job())  # jobs without keys never clash
    await store.create_job(make_job())

    assert caught.value.job_id == first.id
    assert caught.value.tenant == "acme"
    found = await store.find_by_idempotency_key("acme", "k-1")
    assert found is not None
    assert found.id == first.id
    assert await store.find_by_idempotency_key("acme", "k-2") is None
    listed, _ = await store.list_jobs("acme", status=None, limit=10, cursor=None)
    assert len(listed) == 3  # the refused job left nothing behind


async def test_find_by_upstream_id_returns_the_owning_job(store: SqlJobStore) -> None:
    """A webhook's (provider, upstream id) leads back to its job."""
    job = make_job()
    job.attempts.append(make_attempt(job, 1, upstream_id="abc"))
    await store.create_job(job)

    found = await store.find_by_upstream_id("p1", "abc")

    assert found is not None
    assert found.id == job.id
    assert await store.find_by_upstream_id("p2", "abc") is None


async def test_migrations_run_twice_are_a_no_op(backend: Backend) -> None:
    """Starting a second store on a migrated database keeps the schema and the data."""
    first = backend.open()
    await first.start()
    job = make_job(attempts=1)
    await first.create_job(job)
    await first.close()

    second = backend.open()
    await second.start()
    try:
        got = await second.get_job("acme", job.id)
    finally:
        await second.close()
    engine = create_async_engine(backend.url, poolclass=NullPool, **backend.options)
    try:
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            revision = await conn.run_sync(migrate.current_revision)
    finally:
        await engine.dispose()

    assert revision == migrate.head_revision() == "0005"
    assert got == job


async def test_ping_reports_reachability(store: SqlJobStore) -> None:
    """ping is True while started and False after close, never raising."""
    assert await store.ping()
    await store.close()
    assert not await store.ping()


async def test_in_memory_sqlite_keeps_data_across_operations() -> None:
    """sqlite :memory: shares one connection, so what one call writes the next reads."""
    store = open_store("sqlite+aiosqlite:///:memory:")
    await store.start()
    try:
        job = make_job(attempts=1)
        await store.create_job(job)
        assert await store.get_job("acme", job.id) == job
    finally:
        await store.close()


def test_open_store_rejects_other_databases() -> None:
    """Only SQLite and PostgreSQL are supported."""
    with pytest.raises(ValueError, match="unsupported database"):
        open_store("mysql+aiomysql://localhost/db")


def test_ids_sort_in_creation_order() -> None:
    """Ids made in a row sort as made, even within one millisecond, and by time across them."""
    ids = [new_job_id(T0) for _ in range(1000)]
    later = new_job_id(T0 + 1)
    earlier_attempt, later_attempt = new_attempt_id(T0), new_attempt_id(T0 + 0.002)

    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("gen_") and len(i) == 30 for i in ids)
    assert later > ids[-1]
    assert earlier_attempt < later_attempt


def test_to_api_job_shapes_the_public_job() -> None:
    """Timestamps become RFC 3339 UTC with milliseconds; errors become nested objects."""
    job = make_job(status="failed")
    job.error_code = "no_provider"
    job.error_message = "all breakers open"
    job.completed_at = T0 + 1.5
    attempt = make_attempt(job, 1, error_kind="timeout", error_message="slow", http_status=None)
    attempt.status = "failed"
    job.attempts.append(attempt)

    api = to_api_job(job)

    assert api.created_at == "2027-01-15T08:00:00.000Z"
    assert api.completed_at == "2027-01-15T08:00:01.500Z"
    assert api.error is not None
    assert (api.error.code, api.error.message) == ("no_provider", "all breakers open")
    assert api.attempts[0].error is not None
    assert api.attempts[0].error.kind == "timeout"
    assert api.attempts[0].started_at == "2027-01-15T08:00:01.000Z"
    assert api.attempts[0].ended_at is None
    assert format_timestamp(0.9999) == "1970-01-01T00:00:00.999Z"
