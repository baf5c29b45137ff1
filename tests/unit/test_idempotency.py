"""Idempotency keys against real SQLite and PostgreSQL stores, on a fake clock."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from breakers.clock import FakeClock
from router.errors import Conflict, NoProviderAvailable, ValidationFailed
from router.idempotency import Answer, IdempotencyKeys, fingerprint, validate_key
from router.store import JobRecord, SqlJobStore, new_job_id
from tests.unit import test_store

# The store suite's fixtures: every test here runs on SQLite and on PostgreSQL.
backend = test_store.backend
store = test_store.store

DAY = 86_400.0


class Creator:
    """What the API's create does: write a job carrying the key, answer 202 with it."""

    def __init__(self, store: SqlJobStore, clock: FakeClock, tenant: str = "acme") -> None:
        self.store = store
        self.clock = clock
        self.tenant = tenant
        self.calls = 0
        self.created: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, key: str, fp: str) -> Answer:
        self.calls += 1
        await self.gate.wait()
        now = self.clock.time()
        job = JobRecord(
            id=new_job_id(now),
            tenant=self.tenant,
            kind="image",
            request=b"{}",
            created_at=now,
            updated_at=now,
            deadline_at=now + 60,
            idempotency_key=key,
            request_fingerprint=fp,
        )
        await self.store.create_job(job)
        self.created.append(job.id)
        return Answer(202, msgspec.json.encode({"id": job.id}), job.id)


def test_fingerprint_ignores_key_order_and_whitespace() -> None:
    """Equal JSON documents fingerprint equally; a changed value does not."""
    a = fingerprint(b'{"kind":"image","prompt":"x","metadata":{"b":1,"a":2}}')
    b = fingerprint(b'{ "prompt": "x", "metadata": {"a": 2, "b": 1}, "kind": "image" }')
    c = fingerprint(b'{"kind":"image","prompt":"y","metadata":{"b":1,"a":2}}')
    assert a == b != c
    assert len(a) == 64


def test_validate_key_refuses_empty_and_oversized_keys() -> None:
    """Keys are 1..255 printable characters."""
    assert validate_key("order-17") == "order-17"
    for bad in ("", "x" * 256, "a\nb"):
        with pytest.raises(ValidationFailed):
            validate_key(bad)


async def test_same_key_same_body_replays_the_first_answer(store: SqlJobStore) -> None:
    """The second call does not create; it gets the stored status and body, marked replayed."""
    clock = FakeClock()
    keys = IdempotencyKeys(store, clock, DAY)
    create = Creator(store, clock)
    first = await keys.run("acme", "k", "f1", create)
    clock.advance(60)
    second = await keys.run("acme", "k", "f1", create)
    assert create.calls == 1
    assert (second.status, second.body, second.job_id) == (first.status, first.body, first.job_id)
    assert second.replayed
    assert not first.replayed


async def test_keys_are_scoped_to_the_tenant(store: SqlJobStore) -> None:
    """Two tenants may use the same key for different jobs."""
    clock = FakeClock()
    keys = IdempotencyKeys(store, clock, DAY)
    a = await keys.run("acme", "k", "f1", Creator(store, clock, "acme"))
    b = await keys.run("globex", "k", "f2", Creator(store, clock, "globex"))
    assert a.job_id != b.job_id


async def test_a_different_body_is_422(store: SqlJobStore) -> None:
    """Reusing a key for another request is refused, naming the header."""
    clock = FakeClock()
    keys = IdempotencyKeys(store, clock, DAY)
    await keys.run("acme", "k", "f1", Creator(store, clock))
    with pytest.raises(ValidationFailed) as info:
        await keys.run("acme", "k", "f2", Creator(store, clock))
    assert info.value.status == 422
    assert info.value.errors[0].field == "Idempotency-Key"


async def test_another_replica_gets_409_then_the_job(store: SqlJobStore) -> None:
    """Another replica (same store) gets 409 while the first is answered, then its answer."""
    clock = FakeClock()
    here, there = IdempotencyKeys(store, clock, DAY), IdempotencyKeys(store, clock, DAY)
    # The first request's job exists but its answer is not kept yet (still being answered).
    create = Creator(store, clock)
    await create("k", "f1")
    with pytest.raises(Conflict):
        await there.run("acme", "k", "f1", Creator(store, clock))
    clock.advance(here.in_flight_s)
    late = await there.run("acme", "k", "f1", Creator(store, clock))
    assert (late.job_id, late.status, late.replayed) == (create.created[0], 202, True)


async def test_a_replica_that_loses_the_race_answers_with_the_winners_job(
    store: SqlJobStore,
) -> None:
    """Both replicas create at once: the unique key lets one job in, both answer with it."""
    clock = FakeClock()
    a, b = IdempotencyKeys(store, clock, DAY), IdempotencyKeys(store, clock, DAY)
    slow = Creator(store, clock)
    slow.gate.clear()
    first = asyncio.create_task(a.run("acme", "k", "f1", slow))
    while slow.calls == 0:
        await asyncio.sleep(0)
    fast = Creator(store, clock)
    winner = await b.run("acme", "k", "f1", fast)
    slow.gate.set()
    clock.advance(a.in_flight_s)
    loser = await first
    assert fast.created == [winner.job_id]
    assert slow.created == []
    assert loser.job_id == winner.job_id


async def test_concurrent_requests_in_one_process_share_one_create(store: SqlJobStore) -> None:
    """50 concurrent calls with one key: create runs once, all 50 get its answer."""
    clock = FakeClock()
    keys = IdempotencyKeys(store, clock, DAY)
    create = Creator(store, clock)
    create.gate.clear()
    calls = [asyncio.create_task(keys.run("acme", "k", "f1", create)) for _ in range(50)]
    while create.calls == 0:
        await asyncio.sleep(0)
    create.gate.set()
    answers = await asyncio.gather(*calls)
    assert create.calls == 1
    assert {a.job_id for a in answers} == set(create.created)
    assert sum(a.replayed for a in answers) == 49


async def test_a_failed_create_leaves_the_key_free(store: SqlJobStore) -> None:
    """A create that raises (a 503) leaves no trace: the next call creates."""
    clock = FakeClock()
    keys = IdempotencyKeys(store, clock, DAY)

    async def refuse(_key: str, _fp: str) -> Answer:
        raise NoProviderAvailable("none")

    with pytest.raises(NoProviderAvailable):
        await keys.run("acme", "k", "f1", refuse)
    create = Creator(store, clock)
    await keys.run("acme", "k", "f1", create)
    assert create.calls == 1


async def test_keys_expire_after_the_retention_and_are_pruned(store: SqlJobStore) -> None:
    """After the retention the key is free again (even for another body); prune frees it."""
    clock = FakeClock()
    keys = IdempotencyKeys(store, clock, DAY)
    old = await keys.run("acme", "k", "f1", Creator(store, clock))
    await keys.run("acme", "other", "f1", Creator(store, clock))
    clock.advance(DAY - 1)
    assert (await keys.run("acme", "k", "f1", Creator(store, clock))).job_id == old.job_id
    clock.advance(1)
    fresh = await keys.run("acme", "k", "f2", Creator(store, clock))
    assert fresh.job_id != old.job_id
    assert not fresh.replayed
    assert await keys.prune() == 2  # "other": its answer and its job's key
    assert await store.get_idempotency_key("acme", "other") is None
    assert await store.find_by_idempotency_key("acme", "other") is None
    assert await store.get_idempotency_key("acme", "k") is not None
    old_job = await store.get_job("acme", old.job_id)
    assert old_job is not None
    assert old_job.idempotency_key is None
