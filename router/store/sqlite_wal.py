"""Keeping SQLite's write-ahead log small without stalling the event loop.

The service writes on the event loop's thread (see ``router.store.sql``), with
``synchronous=NORMAL``: a commit appends to the WAL and never waits for the disk. The
two things that do wait run here, on a thread of their own:

* **Checkpoints** copy the WAL into the database file and fsync it.
* **A new log's header.** Once a checkpoint has copied the whole log, the next write
  rewinds the WAL to its start and syncs its new header first. Left to chance, that
  write is the event loop's, and one fsync of a few ms stalls every request in flight
  (measured: the loop's only fsync at 200 req/s). :func:`checkpoint` makes that first
  write itself.

The thread runs at the lowest CPU priority (Linux: nice 19 for that thread only).
Copying a second's worth of log takes a few ms of CPU: at normal priority it competed
with the event loop for its core once a second and set the p99 (measured at 200 req/s
with the worker pinned to one core, two side-by-side runs: added p99 4.3 and 3.9 ms at
normal priority, 2.6 ms at nice 19 in both; SCHED_IDLE did no better).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Final

__all__ = ["WAL_FRAME_HEADER", "checkpoint", "checkpoint_executor", "lower_thread_priority"]

#: Bytes before each page in the WAL file (sqlite.org/fileformat.html, "WAL File Format").
WAL_FRAME_HEADER: Final = 24
#: The nice value of the checkpoint thread: the lowest priority there is.
LOWEST_PRIORITY: Final = 19


def checkpoint(path: str, restart_over_bytes: int) -> None:
    """Copy the WAL into the database; restart the WAL once its live part is over the limit.

    A passive checkpoint never blocks the writer, but under steady writes it never
    finds the log fully copied at the instant a write begins, so SQLite never rewinds
    it: the file grew by ~70 KB per job without bound (127 MB after 1,800 jobs,
    measured). After the passive pass almost nothing is left to copy, so a RESTART
    holds writers off only briefly (the event loop's writes back off with an
    ``await``, see ``_SqliteRunner.run``) and the next commit writes from the start
    of the file again, so it stays near the limit.

    The limit is on the frames in use, which the passive pass reports, not on the
    file's size: a restart rewinds the log without shrinking the file, so a size test
    stays true once passed and restarted every round (each one a writer stall).

    When the log ends up fully copied, this connection writes next (see the module doc).
    """
    conn = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")  # as the service's: no sync per commit
        busy, frames, copied = _checkpoint(conn, "PASSIVE")
        if frames <= 0:
            return
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        if frames * (page_size + WAL_FRAME_HEADER) > restart_over_bytes:
            busy, frames, copied = _checkpoint(conn, "RESTART")
        if busy == 0 and copied == frames:
            _begin_new_log(conn)
    finally:
        conn.close()


def _checkpoint(conn: sqlite3.Connection, mode: str) -> tuple[int, int, int]:
    """``(busy, frames in the log, frames copied)`` as ``PRAGMA wal_checkpoint`` reports."""
    row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    if row is None:
        return 1, 0, 0
    busy, frames, copied = (-1 if v is None else int(v) for v in row)
    return busy, frames, copied


def _begin_new_log(conn: sqlite3.Connection) -> None:
    """Write one page so that this connection, not the loop's next write, rewinds the
    fully copied log and syncs its header. ``user_version`` is free: migrations are
    Alembic's, in a table of their own; it is written back unchanged."""
    with contextlib.suppress(sqlite3.OperationalError):  # busy: the loop writes first
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        conn.execute(f"PRAGMA user_version = {version}")


def lower_thread_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux; elsewhere nothing).

    On Linux ``setpriority`` with a thread id applies to that thread alone; on other
    systems the same call would renice the whole process, so it is not made there.
    """
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)


def checkpoint_executor() -> ThreadPoolExecutor:
    """One thread at the lowest priority, for :func:`checkpoint` and nothing else."""
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="sqlite-checkpoint", initializer=lower_thread_priority
    )
