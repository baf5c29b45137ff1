"""``JobEngine.submit`` returns once the job is written, and never hangs on a job task
that was cancelled before it ran (shutdown cancels every job task)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from router.models import GenerationRequest
from tests.integration.harness import make_config, serve

REQUEST = GenerationRequest(kind="image", prompt="a lighthouse at dusk")


async def test_submit_returns_the_job_once_it_is_written(tmp_path: Path) -> None:
    async with serve(make_config(tmp_path, [{"name": "only", "faults": {}}])) as running:
        engine, store = running.service.engine, running.service.store
        assert engine is not None
        assert store is not None
        job = await engine.submit("team-a", REQUEST)
        assert await store.get_job(None, job.id) is not None
        await engine.wait(job.id, 10)


async def test_submit_surfaces_a_job_task_cancelled_before_its_first_step(
    tmp_path: Path,
) -> None:
    async with serve(make_config(tmp_path, [{"name": "only", "faults": {}}])) as running:
        engine, store = running.service.engine, running.service.store
        assert engine is not None
        assert store is not None
        before = set(asyncio.all_tasks())

        def cancel_new_job_tasks() -> None:
            # Scheduled before submit creates its task, so this runs before the task's
            # first step: its coroutine, and the ``finally`` that wakes submit, never run.
            for task in asyncio.all_tasks() - before:
                if task.get_name().startswith("job "):
                    task.cancel()

        asyncio.get_running_loop().call_soon(cancel_new_job_tasks)
        # Awaited in this task (wait_for would start submit in a task of its own, after
        # the callback); asyncio.timeout bounds a hang without one.
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await engine.submit("team-a", REQUEST)
        assert running.emulator("only").stats.by_path.get("/v1/images/generations", 0) == 0
