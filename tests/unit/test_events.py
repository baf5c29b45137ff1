"""The job event log and its SSE stream, on real SQLite and PostgreSQL stores."""

from __future__ import annotations

import asyncio

import pytest

from breakers.clock import FakeClock
from router.events import EventHub, format_sse, make_event, parse_last_event_id, stream_events
from router.store import SqlJobStore
from tests.unit import test_store

backend = test_store.backend
store = test_store.store


def test_format_sse_writes_id_event_and_one_line_of_json() -> None:
    """The wire format: id, event, data, blank line."""
    event = make_event("gen_1", 7, "progress", {"progress": 40}, 1.0)
    assert format_sse(event) == b'id: 7\nevent: progress\ndata: {"progress":40}\n\n'


@pytest.mark.parametrize(
    ("header", "seq"), [(None, 0), ("", 0), ("12", 12), (" 3 ", 3), ("x", 0), ("-4", 0)]
)
def test_last_event_id_is_parsed_leniently(header: str | None, seq: int) -> None:
    """Anything that is not a non-negative integer replays from the start."""
    assert parse_last_event_id(header) == seq


async def test_events_are_written_with_the_job_and_read_back_in_order(
    store: SqlJobStore,
) -> None:
    """create_job and save append events atomically; list_events pages after a seq."""
    job = test_store.make_job(attempts=1)
    await store.create_job(job, [make_event(job.id, 1, "status", {"status": "running"}, 1.0)])
    job.progress = 50
    await store.save(
        job,
        events=[
            make_event(job.id, 2, "progress", {"progress": 50}, 2.0),
            make_event(job.id, 3, "progress", {"progress": 60}, 3.0),
        ],
    )
    assert [e.seq for e in await store.list_events(job.id)] == [1, 2, 3]
    assert [e.seq for e in await store.list_events(job.id, after=1, limit=1)] == [2]
    assert await store.last_event_seq(job.id) == 3
    assert await store.last_event_seq("gen_other") == 0


async def test_the_stream_replays_then_follows_and_ends_after_final(store: SqlJobStore) -> None:
    """A stream from Last-Event-ID 1 gets 2.., waits for the hub, ends after ``final``."""
    hub = EventHub()
    job = test_store.make_job(status="running")
    await store.create_job(
        job,
        [
            make_event(job.id, 1, "status", {"status": "running"}, 1.0),
            make_event(job.id, 2, "progress", {"progress": 10}, 2.0),
        ],
    )
    received: list[bytes] = []

    async def consume() -> None:
        async for chunk in stream_events(store, hub, job.id, after=1, clock=FakeClock()):
            received.append(chunk)

    task = asyncio.create_task(consume())
    while not received:
        await asyncio.sleep(0)
    job.status = "succeeded"
    await store.save(
        job,
        events=[
            make_event(job.id, 3, "status", {"status": "succeeded"}, 3.0),
            make_event(job.id, 4, "final", {"id": job.id}, 3.0),
        ],
    )
    hub.notify(job.id)
    async with asyncio.timeout(10):
        await task
    assert [c.split(b"\n")[0] for c in received] == [b"id: 2", b"id: 3", b"id: 4"]


async def test_a_stream_past_the_final_event_ends_at_once(store: SqlJobStore) -> None:
    """Last-Event-ID at the final event: an empty stream, not a hang."""
    job = test_store.make_job(status="succeeded")
    await store.create_job(job, [make_event(job.id, 1, "final", {"id": job.id}, 1.0)])
    chunks = [c async for c in stream_events(store, EventHub(), job.id, after=1, clock=FakeClock())]
    assert chunks == []
