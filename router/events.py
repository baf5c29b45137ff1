"""A job's event log and its Server-Sent Events stream (DESIGN §3).

The engine appends events (``status``, ``progress``, ``attempt``, ``output`` and, last,
``final`` with the whole job) to the job store in the same transaction as the job
change they describe, numbering them 1, 2, 3… per job. The SSE stream is a replay of
that log: a client reconnecting with ``Last-Event-ID: N`` gets every event after ``N``,
from whichever replica it reaches, because nothing lives only in memory. The in-process
:class:`EventHub` only rings a bell so a stream on the replica running the job sends
new events at once instead of at its next store poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import msgspec

from breakers.clock import Clock
from router.models import FINAL_STATUSES
from router.store import EventRecord, JobStore

__all__ = [
    "EVENT_TYPES",
    "FINAL_EVENT",
    "EventHub",
    "format_sse",
    "make_event",
    "parse_last_event_id",
    "stream_events",
]

#: The event names a stream carries; ``final`` is always the last one.
EVENT_TYPES: Final = ("status", "progress", "attempt", "output", "final")
FINAL_EVENT: Final = "final"
_encode = msgspec.json.Encoder().encode
#: A comment line sent when nothing happened for a while, so proxies keep the stream.
_KEEPALIVE: Final = b": keep-alive\n\n"


def make_event(job_id: str, seq: int, type_: str, data: Any, at: float) -> EventRecord:
    """An event whose ``data`` (any msgspec-encodable value) is stored as JSON."""
    return EventRecord(job_id=job_id, seq=seq, type=type_, data=_encode(data), at=at)


def format_sse(event: EventRecord) -> bytes:
    """One event in the ``text/event-stream`` wire format (its JSON is one line)."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), event.data)


def parse_last_event_id(value: str | None) -> int:
    """The ``Last-Event-ID`` a reconnecting client sent, 0 when absent or not ours."""
    if not value:
        return 0
    try:
        seq = int(value.strip())
    except ValueError:
        return 0
    return max(seq, 0)


class EventHub:
    """Wakes streams waiting on a job when the engine writes its events (in process)."""

    __slots__ = ("_bells",)

    def __init__(self) -> None:
        self._bells: dict[str, asyncio.Event] = {}

    def notify(self, job_id: str) -> None:
        """Ring every stream waiting on ``job_id``."""
        bell = self._bells.pop(job_id, None)
        if bell is not None:
            bell.set()

    def bell(self, job_id: str) -> asyncio.Event:
        """The event the next :meth:`notify` of ``job_id`` sets.

        Take it *before* reading the store, so a notify between the read and the wait
        is not missed.
        """
        bell = self._bells.get(job_id)
        if bell is None:
            bell = self._bells[job_id] = asyncio.Event()
        return bell

    @staticmethod
    async def wait(bell: asyncio.Event, timeout_s: float) -> None:
        """Return when ``bell`` rings, or after ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await bell.wait()


async def stream_events(
    store: JobStore,
    hub: EventHub,
    job_id: str,
    *,
    after: int = 0,
    clock: Clock,
    poll_s: float = 1.0,
    keepalive_s: float = 15.0,
    stop: Callable[[], bool] | None = None,
) -> AsyncIterator[bytes]:
    """The job's events after ``after`` as SSE bytes, ending after the ``final`` event.

    New events are read from the store when the hub rings, or every ``poll_s`` (the
    job may be running on another replica). ``stop`` ends the stream early (graceful
    shutdown); the client reconnects elsewhere with ``Last-Event-ID``.
    """
    last_sent = clock.monotonic()
    job_ended = False
    while stop is None or not stop():
        bell = hub.bell(job_id)
        events = await store.list_events(job_id, after=after)
        for event in events:
            after = event.seq
            yield format_sse(event)
            if event.type == FINAL_EVENT:
                return
        if events:
            last_sent = clock.monotonic()
            continue  # there may be more than one page
        if job_ended:
            return  # the client already had the final event (Last-Event-ID past it)
        # A final job's events are written with its status, so one more read (above)
        # after seeing it final finds the final event if the client has not had it.
        job = await store.get_job(None, job_id)
        if job is None or job.status in FINAL_STATUSES:
            job_ended = True
            continue
        if clock.monotonic() - last_sent >= keepalive_s:
            last_sent = clock.monotonic()
            yield _KEEPALIVE
        await hub.wait(bell, poll_s)
