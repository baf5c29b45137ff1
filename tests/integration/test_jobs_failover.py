"""Job-level failover over real HTTP (issue 4, acceptance 2).

An asynchronous provider accepts a job and later fails it (or never moves it): the
engine cancels the orphan upstream and finishes the job at the next-ranked provider,
and the job shows both attempts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from router.sandbox.async_jobs import AsyncJobEmulator
from tests.integration.harness import make_config, serve


def providers(**first: Any) -> list[dict[str, Any]]:
    """An asynchronous Replicate first in priority order, fal second."""
    return [
        {
            "name": "rep",
            "adapter": "replicate",
            "api_key": "r8_sandbox",
            "models": {"image": "black-forest-labs/flux-schnell"},
            "priority": 1,
            "poll": {"interval_s": 0.05, "max_interval_s": 0.2, "stall_s": 60},
            **first,
        },
        {
            "name": "fal",
            "adapter": "fal",
            "api_key": "fal-sandbox-key",
            "models": {"image": "fal-ai/flux/schnell"},
            "priority": 2,
            "poll": {"interval_s": 0.05, "max_interval_s": 0.2},
        },
    ]


def emulator(running: Any, name: str) -> AsyncJobEmulator:
    emu = running.emulator(name)
    assert isinstance(emu, AsyncJobEmulator)
    return emu


async def test_an_accepted_job_that_fails_upstream_is_finished_by_the_next_provider(
    tmp_path: Path,
) -> None:
    """Replicate accepts then fails the job (E1000): fal finishes it; both attempts shown."""
    config = make_config(tmp_path, providers(), routing={"strategy": "priority"})
    async with serve(config) as running:
        emulator(running, "rep").job_faults.fail_ratio = 1.0
        response = await running.generate()
        job = response.json()

    assert response.status_code == 200, job
    assert job["status"] == "succeeded"
    assert job["provider"] == "fal"
    first, second = job["attempts"]
    assert (first["provider"], first["status"]) == ("rep", "failed")
    assert first["upstream_id"]
    assert first["error"]["kind"] == "upstream_unavailable"
    assert (second["provider"], second["status"]) == ("fal", "succeeded")


async def test_a_stalled_job_is_canceled_upstream_and_resubmitted(tmp_path: Path) -> None:
    """Replicate accepts the job and never moves it: it is canceled there and fal finishes."""
    config = make_config(
        tmp_path,
        providers(poll={"interval_s": 0.05, "max_interval_s": 0.1, "stall_s": 0.5}),
        routing={"strategy": "priority"},
    )
    async with serve(config) as running:
        rep = emulator(running, "rep")
        rep.job_faults.stall_ratio = 1.0
        response = await running.generate()
        job = response.json()
        orphan = rep.jobs[job["attempts"][0]["upstream_id"]]

    assert job["status"] == "succeeded", job
    assert [a["provider"] for a in job["attempts"]] == ["rep", "fal"]
    assert job["attempts"][0]["error"]["kind"] == "timeout"
    assert orphan.canceled_at is not None, "the orphan must be canceled upstream"
    assert sum(rep.submissions.values()) == 1


async def test_a_callers_fault_ends_the_job_without_failover(tmp_path: Path) -> None:
    """A content-policy refusal after acceptance fails the job; fal is never asked."""
    config = make_config(tmp_path, providers(), routing={"strategy": "priority"})
    async with serve(config) as running:
        response = await running.generate({"kind": "image", "prompt": "something forbidden"})
        job = response.json()
        fal_submissions = sum(emulator(running, "fal").submissions.values())

    assert job["status"] == "failed", job
    assert job["error"]["code"] == "content_policy"
    assert [a["provider"] for a in job["attempts"]] == ["rep"]
    assert fal_submissions == 0


async def test_cancel_ends_a_running_job_and_cancels_it_upstream(tmp_path: Path) -> None:
    """POST …/cancel on a running job: 200, status canceled, the upstream job canceled.

    While it runs, the oldest-non-final-job gauge counts its age."""
    config = make_config(tmp_path, providers(), routing={"strategy": "priority"})
    async with serve(config) as running:
        rep = emulator(running, "rep")
        rep.job_faults.run_s = 30.0
        created = await running.client.post(
            "/v1/generations", json={"kind": "image", "prompt": "a slow lighthouse"}
        )
        assert created.status_code == 202
        job_id = created.json()["id"]
        while not rep.jobs:  # the submit is in flight until the emulator has the job
            await asyncio.sleep(0.01)
        metrics = (await running.client.get("/metrics")).text
        response = await running.client.post(f"/v1/generations/{job_id}/cancel")
        again = await running.client.post(f"/v1/generations/{job_id}/cancel")
        stored = (await running.client.get(f"/v1/generations/{job_id}")).json()
        upstream = next(iter(rep.jobs.values()))

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled"
    assert stored["status"] == "canceled"
    assert stored["error"]["code"] == "canceled"
    assert upstream.canceled_at is not None
    assert again.status_code == 409
    age = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("switchman_jobs_oldest_nonfinal_age_seconds")
    )
    assert age > 0, "the running job is the oldest non-final one"
