"""A SQLite write that finds the database locked by another connection waits with an
``await`` and goes on once the lock is released (``router.store.sql._SqliteRunner.run``)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from router.store import SqlJobStore
from router.store.sql import _SqliteRunner
from tests.unit import test_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[SqlJobStore, Path]]:
    path = tmp_path / "locked.db"
    s = SqlJobStore(f"sqlite+aiosqlite:///{path}")
    await s.start()
    try:
        yield s, path
    finally:
        await s.close()


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another process's writer, as the checkpointer's WAL restart is to the loop."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


async def test_a_locked_write_yields_to_the_loop_and_lands_after_the_release(
    store: tuple[SqlJobStore, Path],
) -> None:
    s, path = store
    other = _hold_write_lock(path)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    job = test_store.make_job()
    write = asyncio.create_task(s.create_job(job))
    while ticks < 200:  # the loop keeps running other work while the write waits
        await asyncio.sleep(0)
    assert not write.done()
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(write, timeout=2.0)
    ticking.cancel()
    stored = await s.get_job(None, job.id)
    assert stored is not None
    assert stored.id == job.id


async def test_a_write_locked_past_the_limit_fails(
    store: tuple[SqlJobStore, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, path = store
    monkeypatch.setattr(_SqliteRunner, "LOCKED_GIVE_UP_S", 0.05)
    other = _hold_write_lock(path)
    started = time.monotonic()
    try:
        with pytest.raises(sa.exc.OperationalError, match="locked"):
            await s.create_job(test_store.make_job())
    finally:
        other.execute("ROLLBACK")
        other.close()
    # Retries at most LOCKED_MAX_WAIT_S apart: it gives up soon after the limit.
    assert time.monotonic() - started < 0.05 + 10 * _SqliteRunner.LOCKED_MAX_WAIT_S + 0.5


async def test_checkpoint_rounds_run_only_after_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle store checkpoints nothing: a round with no new writes would only rewrite
    the page that began the current log, once a second, forever."""
    rounds: list[str] = []

    def recording_checkpoint(path: str, restart_over_bytes: int) -> None:
        rounds.append(path)

    monkeypatch.setattr("router.store.sql.checkpoint", recording_checkpoint)
    monkeypatch.setattr(_SqliteRunner, "CHECKPOINT_EVERY_S", 0.002)
    s = SqlJobStore(f"sqlite+aiosqlite:///{tmp_path / 'idle.db'}")
    await s.start()
    try:

        async def rounds_reach(n: int) -> None:
            while len(rounds) < n:
                await asyncio.sleep(0.001)

        await s.create_job(test_store.make_job())
        await asyncio.wait_for(rounds_reach(1), timeout=5.0)
        await asyncio.sleep(0.05)  # ~25 idle rounds
        assert len(rounds) == 1
        await s.create_job(test_store.make_job())
        await asyncio.wait_for(rounds_reach(2), timeout=5.0)
    finally:
        await s.close()
