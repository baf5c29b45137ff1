"""Indexes over rows with a value only, and what a job's writes touch on SQLite.

``jobs.callback_state`` and ``attempts.upstream_id`` are NULL for most rows; revision
0005 indexes only the rows with a value, which every query on them asks for, and the
attempt upsert no longer re-sets the columns an attempt never changes. Each page an
index write touches is one more WAL frame per commit on SQLite.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from router.store import SqlJobStore
from router.store.sql import _SELECT_BY_UPSTREAM_ID, _SELECT_PENDING_CALLBACKS
from tests.unit import test_store
from tests.unit.test_store import Backend, make_job

backend = test_store.backend

PARTIAL = {
    "ix_jobs_callback_state": "callback_state IS NOT NULL",
    "ix_attempts_provider_upstream": "upstream_id IS NOT NULL",
}


async def test_the_null_heavy_indexes_cover_only_rows_with_a_value(backend: Backend) -> None:
    store = backend.open()
    await store.start()  # migrates to head
    await store.close()
    engine = create_async_engine(backend.url, **backend.options)
    try:
        async with engine.connect() as conn:
            for name, predicate in PARTIAL.items():
                if conn.dialect.name == "sqlite":
                    query = "SELECT sql FROM sqlite_master WHERE name = :n"
                else:
                    query = (
                        "SELECT indexdef FROM pg_indexes"
                        " WHERE schemaname = current_schema() AND indexname = :n"
                    )
                definition = (await conn.execute(sa.text(query), {"n": name})).scalar_one()
                assert "WHERE" in definition.upper(), definition
                assert predicate in definition, definition
    finally:
        await engine.dispose()


def _plan(path: Path, stmt: sa.Select[tuple[object, ...]], params: dict[str, object]) -> str:
    compiled = stmt.compile(dialect=sa.dialects.sqlite.dialect())
    state = compiled.construct_expanded_state(params)  # the NOT IN list, expanded
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            f"EXPLAIN QUERY PLAN {state.statement}", state.positional_parameters
        ).fetchall()
    return " | ".join(str(r[-1]) for r in rows)


async def test_lookups_by_upstream_id_and_pending_callbacks_still_use_them(tmp_path: Path) -> None:
    path = tmp_path / "plan.db"
    store = SqlJobStore(f"sqlite+aiosqlite:///{path}")
    await store.start()
    await store.close()
    plan = _plan(path, _SELECT_BY_UPSTREAM_ID, {"provider": "p1", "upstream_id": "u1"})
    assert "ix_attempts_provider_upstream" in plan, plan
    plan = _plan(path, _SELECT_PENDING_CALLBACKS, {"limit": 10})
    assert "ix_jobs_callback_state" in plan, plan


def _wal_size(path: Path) -> int:
    return os.path.getsize(f"{path}-wal")


def _pages_written(path: Path, since: int) -> set[str]:
    """The b-trees whose pages the WAL frames after byte ``since`` hold."""
    with sqlite3.connect(path) as conn:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        owner = {int(p): str(n) for n, p in conn.execute("SELECT name, pageno FROM dbstat")}
    data = Path(f"{path}-wal").read_bytes()
    names = set()
    for offset in range(max(since, 32), len(data) - page_size - 23, page_size + 24):
        (page,) = struct.unpack(">I", data[offset : offset + 4])
        names.add(owner.get(page, str(page)))
    return names


async def test_a_job_without_callback_or_upstream_id_leaves_those_indexes_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "frames.db"
    store = SqlJobStore(f"sqlite+aiosqlite:///{path}")
    await store.start()
    try:
        for _ in range(20):  # past the first pages' allocation
            job = make_job(attempts=1)
            await store.create_job(job)
            await store.save(job, job.attempts[0])
        job = make_job(attempts=1)
        before = _wal_size(path)
        await store.create_job(job)
        created = _pages_written(path, before)
        attempt = job.attempts[0]
        attempt.status = "succeeded"
        job.status = "succeeded"
        before = _wal_size(path)
        await store.save(job, attempt)
        saved = _pages_written(path, before)
    finally:
        await store.close()
    assert {"jobs", "attempts"} <= created  # the frames are read right
    assert not created & {"ix_jobs_callback_state", "ix_attempts_provider_upstream"}, created
    assert "attempts" in saved
    assert not saved & {"ix_jobs_callback_state", "uq_attempts_job_seq"}, saved
