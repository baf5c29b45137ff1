"""The SQLite WAL stays bounded under steady writes (``router.store.sql._checkpoint``)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from router.store.sql import _checkpoint

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
