"""Job leases in the store (issue 8): claim, renew, take over, release, fence.

Two stores on one database play two replicas ("a" and "b"). Lease times are the
database's clock; a test moves time by passing ``now=`` (a fixed database time), so
nothing here waits for a lease to run out.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from router.service import dead_predecessors
from router.store import JobRecord, LeaseLost, SqlJobStore, new_job_id, open_store

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
LEASE_S = 15.0


async def _pg_execute(sql: str) -> None:
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


@pytest.fixture(params=["sqlite", "postgresql"])
async def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[SqlJobStore, SqlJobStore]]:
    """Two started stores on one fresh database: replica "a" and replica "b"."""
    options: dict[str, Any] = {}
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
        schema = None
    else:
        url, schema = PG_URL, f"l_{secrets.token_hex(6)}"
        await _pg_execute(f"CREATE SCHEMA {schema}")
        options = {"connect_args": {"server_settings": {"search_path": schema}}}
    a, b = open_store(url, **options), open_store(url, **options)
    await a.start()
    await b.start()
    a.use_leases("a", LEASE_S)
    b.use_leases("b", LEASE_S)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()
        if schema is not None:
            await _pg_execute(f"DROP SCHEMA {schema} CASCADE")


def make_job(created_at: float = 1_800_000_000.0, status: str = "running") -> JobRecord:
    return JobRecord(
        id=new_job_id(created_at),
        tenant="acme",
        kind="video",
        request=b'{"kind":"video","prompt":"waves"}',
        created_at=created_at,
        updated_at=created_at,
        deadline_at=created_at + 600,
        status=status,
    )


async def test_creating_a_job_claims_it_on_the_database_clock(
    pair: tuple[SqlJobStore, SqlJobStore],
) -> None:
    """A job is created owned by its creator, its lease ending lease_s after the DB's now."""
    a, _ = pair
    job = make_job()
    before = await a.db_time()
    await a.create_job(job)
    after = await a.db_time()
    owner, until = await a.lease_of(job.id)
    assert owner == "a"
    assert until is not None
    assert before + LEASE_S - 0.01 <= until <= after + LEASE_S + 0.01


async def test_a_live_lease_is_not_claimed_and_an_expired_one_is(
    pair: tuple[SqlJobStore, SqlJobStore],
) -> None:
    """B claims nothing while A's lease runs; after it expires B gets the job, once."""
    a, b = pair
    job = make_job()
    await a.create_job(job)
    _, until = await a.lease_of(job.id)
    assert until is not None
    assert await b.claim_jobs("b", LEASE_S, now=until - 0.5) == []
    claimed = await b.claim_jobs("b", LEASE_S, now=until + 0.5)
    assert [j.id for j in claimed] == [job.id]
    assert claimed[0].status == "running"
    assert await b.lease_of(job.id) == ("b", until + 0.5 + LEASE_S)
    # Claimed again at the same moment: B's lease is live, nobody (not even B) re-claims.
    assert await a.claim_jobs("a", LEASE_S, now=until + 0.5) == []


async def test_final_jobs_are_never_claimed(pair: tuple[SqlJobStore, SqlJobStore]) -> None:
    """Succeeded, failed and canceled jobs stay with nobody, whatever their lease."""
    a, b = pair
    for status in ("succeeded", "failed", "canceled"):
        await a.create_job(make_job(status=status))
    far = await a.db_time() + 10 * LEASE_S
    assert await b.claim_jobs("b", LEASE_S, now=far) == []
    assert await b.claim_jobs("b", LEASE_S, expired_only=False) == []


async def test_renewal_extends_only_the_leases_still_held(
    pair: tuple[SqlJobStore, SqlJobStore],
) -> None:
    """A renews its jobs in one statement; one B took over is missing from the answer."""
    a, b = pair
    jobs = [make_job(1_800_000_000.0 + i) for i in range(3)]
    for job in jobs:
        await a.create_job(job)
    _, until = await a.lease_of(jobs[0].id)
    assert until is not None
    later = until + 1.0
    taken = await b.take_job("acme", jobs[1].id, "b", LEASE_S, now=later)
    assert taken is not None
    kept = await a.renew_leases("a", [j.id for j in jobs], LEASE_S, now=later)
    assert kept == {jobs[0].id, jobs[2].id}
    assert await a.lease_of(jobs[0].id) == ("a", later + LEASE_S)
    assert await a.lease_of(jobs[1].id) == ("b", later + LEASE_S)
    assert await a.renew_leases("a", [], LEASE_S) == set()


async def test_a_renewed_lease_is_not_taken_over(pair: tuple[SqlJobStore, SqlJobStore]) -> None:
    """Renewing before expiry keeps the job: B's claim after the first expiry finds nothing."""
    a, b = pair
    job = make_job()
    await a.create_job(job)
    _, until = await a.lease_of(job.id)
    assert until is not None
    await a.renew_leases("a", [job.id], LEASE_S, now=until - 1.0)
    assert await b.claim_jobs("b", LEASE_S, now=until + 1.0) == []
    assert [j.id for j in await b.claim_jobs("b", LEASE_S, now=until + LEASE_S)] == [job.id]


async def test_updates_are_fenced_once_another_replica_owns_the_job(
    pair: tuple[SqlJobStore, SqlJobStore],
) -> None:
    """After B takes the job over, A's writes raise LeaseLost and change nothing; B's apply."""
    a, b = pair
    job = make_job()
    await a.create_job(job)
    _, until = await a.lease_of(job.id)
    assert until is not None
    [mine] = await b.claim_jobs("b", LEASE_S, now=until + 0.1)
    job.status, job.progress = "succeeded", 100
    with pytest.raises(LeaseLost) as lost:
        await a.save(job)
    assert lost.value.owner == "b"
    with pytest.raises(LeaseLost):
        await a.save_job(job)
    stored = await b.get_job(None, job.id)
    assert stored is not None
    assert (stored.status, stored.progress) == ("running", 0)
    mine.progress = 40
    await b.save(mine)
    stored = await a.get_job(None, job.id)
    assert stored is not None
    assert stored.progress == 40


async def test_take_job_overrides_a_live_lease_for_a_cancel(
    pair: tuple[SqlJobStore, SqlJobStore],
) -> None:
    """B takes A's job without waiting for expiry; a final or other tenant's job is refused."""
    a, b = pair
    job = make_job()
    await a.create_job(job)
    assert await b.take_job("other-tenant", job.id, "b", LEASE_S) is None
    taken = await b.take_job("acme", job.id, "b", LEASE_S)
    assert taken is not None
    assert taken.id == job.id
    assert (await b.lease_of(job.id))[0] == "b"
    taken.status = "canceled"
    await b.save(taken)
    job.status = "succeeded"
    with pytest.raises(LeaseLost):
        await a.save(job)
    assert await a.take_job("acme", job.id, "a", LEASE_S) is None  # final now


async def test_release_hands_jobs_over_at_once(pair: tuple[SqlJobStore, SqlJobStore]) -> None:
    """A graceful stop expires A's leases: B claims them on the database clock right away."""
    a, b = pair
    jobs = [make_job(1_800_000_000.0 + i) for i in range(4)]
    for job in jobs:
        await a.create_job(job)
    assert await b.claim_jobs("b", LEASE_S) == []
    assert await a.release_leases("a") == 4
    claimed = await b.claim_jobs("b", LEASE_S)
    assert [j.id for j in claimed] == [j.id for j in jobs]  # oldest first


async def test_claim_all_takes_live_leases_too(pair: tuple[SqlJobStore, SqlJobStore]) -> None:
    """``expired_only=False`` (a lone replica starting on its own file) takes every job."""
    a, b = pair
    job = make_job()
    await a.create_job(job)
    claimed = await b.claim_jobs("b", LEASE_S, expired_only=False)
    assert [j.id for j in claimed] == [job.id]


async def test_unowned_jobs_are_claimable(pair: tuple[SqlJobStore, SqlJobStore]) -> None:
    """A job written without an owner (before leases existed) goes to the first claimer."""
    a, b = pair
    a.use_leases(None)
    job = make_job()
    await a.create_job(job)
    assert await a.lease_of(job.id) == (None, None)
    job.progress = 10
    await a.save(job)  # leases off: no fence
    assert [j.id for j in await b.claim_jobs("b", LEASE_S)] == [job.id]


async def test_concurrent_claimers_split_the_jobs(pair: tuple[SqlJobStore, SqlJobStore]) -> None:
    """Two replicas claiming at once never both win a job; together they take them all."""
    a, b = pair
    a.use_leases(None)
    jobs = [make_job(1_800_000_000.0 + i) for i in range(60)]
    for job in jobs:
        await a.create_job(job)
    rounds = [
        await asyncio.gather(
            a.claim_jobs("a", LEASE_S, limit=10), b.claim_jobs("b", LEASE_S, limit=10)
        )
        for _ in range(4)
    ]
    got_a = {j.id for r in rounds for j in r[0]}
    got_b = {j.id for r in rounds for j in r[1]}
    assert not got_a & got_b
    assert got_a | got_b == {j.id for j in jobs}
    for job_id in got_a:
        assert (await a.lease_of(job_id))[0] == "a"


async def test_a_dead_owners_jobs_are_taken_at_once(pair: tuple[SqlJobStore, SqlJobStore]) -> None:
    """``from_owner`` takes every non-final job of a known-dead owner, live lease or not."""
    a, b = pair
    jobs = [make_job(1_800_000_000.0 + i) for i in range(3)]
    for job in jobs:
        await a.create_job(job)
    await b.create_job(make_job(1_800_000_100.0))
    assert sorted(await b.lease_owners()) == ["a", "b"]
    claimed = await b.claim_jobs("b", LEASE_S, from_owner="a")
    assert [j.id for j in claimed] == [j.id for j in jobs]
    assert await b.lease_owners() == ["b"]


def test_dead_predecessors_are_this_hosts_gone_processes() -> None:
    """Same host and a pid that no longer runs (or this very pid): dead; others: alive."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    me = f"host-1:{os.getpid()}:aaaa"
    owners = [
        me,
        f"host-1:{os.getpid()}:bbbb",  # this pid, another process: a restarted container
        f"host-1:{gone.pid}:cccc",  # exited
        f"host-1:{os.getppid()}:dddd",  # alive
        f"host-2:{gone.pid}:eeee",  # another host: cannot tell, wait for its lease
        "not-a-replica-id",
    ]
    assert dead_predecessors(owners, me) == [owners[1], owners[2]]
