"""The SQLite WAL stays bounded under steady writes (``router.store.sql._checkpoint``)."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from router.store.sqlite_wal import LOWEST_PRIORITY, checkpoint_executor
from router.store.sqlite_wal import checkpoint as _checkpoint

ROW = b"x" * 2000


def _grow_while_checkpointing(path: Path, restart_over_bytes: int, seconds: float) -> int:
    """Write rows in a thread (as the event loop does) while checkpointing; the WAL's
    largest size seen."""
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, data BLOB)")
    setup.commit()
    setup.close()
    stop = threading.Event()

    def writer() -> None:
        conn = sqlite3.connect(path, timeout=5.0)
        conn.execute("PRAGMA wal_autocheckpoint=0")  # as the service's connection
        conn.execute("PRAGMA synchronous=NORMAL")
        while not stop.is_set():
            conn.execute("INSERT INTO t (data) VALUES (?)", (ROW,))
            conn.commit()
            time.sleep(0.0005)  # steady, never pausing long: a busy worker's commits
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    largest = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            _checkpoint(str(path), restart_over_bytes)
            wal = Path(f"{path}-wal")
            largest = max(largest, wal.stat().st_size if wal.exists() else 0)
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    return largest


def test_the_wal_is_restarted_once_over_the_limit(tmp_path: Path) -> None:
    """Passive checkpoints alone let the log grow without bound while writes never
    pause; restarting it past the limit keeps it near the limit."""
    limit = 1024 * 1024
    unbounded = _grow_while_checkpointing(tmp_path / "passive.db", 1 << 62, 1.5)
    bounded = _grow_while_checkpointing(tmp_path / "restart.db", limit, 1.5)
    print(
        f"\nWAL after 1.5 s of writes: passive only {unbounded >> 10} KiB,"
        f" restarted {bounded >> 10} KiB"
    )
    assert unbounded > 4 * limit  # the starvation this guards against
    assert bounded < 2.5 * limit


def _wal_frames(conn: sqlite3.Connection) -> int:
    """Frames of the log in use, as a passive checkpoint reports them."""
    return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


def _writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, data BLOB)")
    return conn


def _fill(conn: sqlite3.Connection, rows: int = 50) -> None:
    for _ in range(rows):
        conn.execute("INSERT INTO t (data) VALUES (?)", (ROW,))


def test_a_restart_rewinds_the_log_once_its_live_part_passes_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "rewind.db"
    conn = _writer(path)
    _fill(conn, 600)  # ~1.2 MB of frames
    _checkpoint(str(path), 1024 * 1024)
    conn.execute("INSERT INTO t (data) VALUES (?)", (ROW,))
    # Written from the start of the file again: the page that began the new log
    # (``_begin_new_log``), then the insert's (at most three).
    assert _wal_frames(conn) <= 4
    assert Path(f"{path}-wal").stat().st_size > 1024 * 1024  # the file keeps its size
    conn.close()


def test_a_rewound_log_is_not_restarted_again_while_small(tmp_path: Path) -> None:
    """The file stays large after a restart; only the frames in use decide the next one.

    A restart waits for a reader on an older snapshot (here up to its 1 s timeout), so a
    round that wrongly restarts again takes that long: it is what stalled writers once
    a second before.
    """
    path = tmp_path / "small.db"
    conn = _writer(path)
    _fill(conn, 600)
    _checkpoint(str(path), 1024 * 1024)
    conn.execute("INSERT INTO t (data) VALUES (?)", (ROW,))
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # holds this snapshot
    conn.execute("INSERT INTO t (data) VALUES (?)", (ROW,))
    started = time.monotonic()
    _checkpoint(str(path), 1024 * 1024)
    elapsed = time.monotonic() - started
    reader.execute("COMMIT")
    reader.close()
    conn.close()
    assert elapsed < 0.5, f"restarted a small log (waited {elapsed:.2f} s for the reader)"


def _wal_salts(path: Path) -> bytes:
    """The WAL header's salts: SQLite draws new ones each time it rewinds the log."""
    with open(f"{path}-wal", "rb") as wal:
        return wal.read(32)[16:24]


def test_the_writer_rewinds_a_fully_copied_log_when_left_to_itself(tmp_path: Path) -> None:
    """The hazard: after a checkpoint that copies everything, the next commit rewinds
    the log (new salts) and syncs its header, on the writer's thread, the event loop's."""
    path = tmp_path / "plain.db"
    conn = _writer(path)
    _fill(conn)
    other = sqlite3.connect(path, isolation_level=None)
    assert other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    other.close()
    before = _wal_salts(path)
    conn.execute("INSERT INTO t (data) VALUES (?)", (ROW,))
    assert _wal_salts(path) != before
    conn.close()


@pytest.mark.parametrize("restart_over_bytes", [1 << 62, 1024], ids=["passive", "restart"])
def test_the_checkpointer_begins_the_new_log_itself(
    tmp_path: Path, restart_over_bytes: int
) -> None:
    """After :func:`checkpoint` has copied everything, the writer's next commit appends
    to a log the checkpointer already rewound: it neither rewinds nor syncs."""
    path = tmp_path / "primed.db"
    conn = _writer(path)
    _fill(conn)
    salts = _wal_salts(path)
    _checkpoint(str(path), restart_over_bytes)
    rewound = _wal_salts(path)
    assert rewound != salts  # the checkpointer's own write began a new log
    conn.execute("INSERT INTO t (data) VALUES (?)", (ROW,))
    assert _wal_salts(path) == rewound
    assert _wal_frames(conn) > 0  # appended, not yet copied
    conn.close()


def test_the_checkpoint_thread_runs_at_the_lowest_priority() -> None:
    """Only that thread: the event loop's keeps the process's priority."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    executor = checkpoint_executor()
    try:
        theirs = executor.submit(
            lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        ).result(timeout=5)
    finally:
        executor.shutdown()
    if sys.platform == "linux":
        assert theirs == LOWEST_PRIORITY
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
