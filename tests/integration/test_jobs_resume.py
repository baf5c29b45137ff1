"""Restart behaviour over real HTTP: resume by polling, reconcile, detect duplicates.

The upstreams are emulators started by the test itself, so a job can be accepted
upstream *before* Switchman starts, as if a previous Switchman process had died.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from router.auth import hash_key
from router.config import Config, parse_config
from router.engine import OUTCOME_UNKNOWN
from router.models import GenerationRequest
from router.sandbox.fal import FalEmulator
from router.sandbox.replicate import DEFAULT_WEBHOOK_SECRET, ReplicateEmulator
from router.store import AttemptRecord, JobRecord, new_attempt_id, new_job_id, open_store
from tests.integration.harness import KEY, serve

MODEL = "black-forest-labs/flux-schnell"


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[ReplicateEmulator, FalEmulator]]:
    """Replicate and fal emulators that outlive any one Switchman."""
    rep, fal = ReplicateEmulator(), FalEmulator()
    for emu in (rep, fal):
        emu.job_faults.queue_s = 0.05
        emu.job_faults.run_s = 0.2
        await emu.start()
    try:
        yield rep, fal
    finally:
        await rep.stop()
        await fal.stop()


def config(tmp_path: Path, rep: ReplicateEmulator, fal: FalEmulator) -> Config:
    poll = {"interval_s": 0.05, "max_interval_s": 0.1, "stall_s": 5}
    raw: dict[str, Any] = {
        "server": {"port": 0},
        "routing": {"strategy": "priority"},
        "storage": {
            "database_url": f"sqlite+aiosqlite:///{tmp_path}/sw.db",
            "assets": {"path": str(tmp_path / "assets")},
        },
        "tenants": [{"id": "team-a", "api_keys": [hash_key(KEY)]}],
        "providers": [
            {
                "name": "rep",
                "adapter": "replicate",
                "base_url": rep.base_url,
                "api_key": "r8_sandbox",
                "webhook_secret": DEFAULT_WEBHOOK_SECRET,
                "kinds": ["image"],
                "models": {"image": MODEL},
                "priority": 1,
                "poll": poll,
            },
            {
                "name": "fal",
                "adapter": "fal",
                "base_url": fal.base_url,
                "api_key": "fal-sandbox-key",
                "kinds": ["image"],
                "models": {"image": "fal-ai/flux/schnell"},
                "options": {"jwks": fal.jwks},
                "priority": 2,
                "poll": poll,
            },
        ],
    }
    return parse_config(raw)


async def seed_running_job(cfg: Config, upstream_id: str | None) -> tuple[str, str]:
    """Write what a dead process left: a running job whose attempt is at ``rep``."""
    now = __import__("time").time()
    job = JobRecord(
        id=new_job_id(),
        tenant="team-a",
        kind="image",
        request=msgspec.json.encode(GenerationRequest(kind="image", prompt="left behind")),
        created_at=now,
        updated_at=now,
        deadline_at=now + 120,
        status="running",
        provider="rep",
    )
    attempt = AttemptRecord(
        id=new_attempt_id(),
        job_id=job.id,
        seq=1,
        provider="rep",
        status="running",
        upstream_id=upstream_id,
        started_at=now,
    )
    job.attempts.append(attempt)
    store = open_store(cfg.storage.database_url)
    await store.start()
    try:
        await store.create_job(job)
    finally:
        await store.close()
    return job.id, attempt.id


async def submit_upstream(rep: ReplicateEmulator, webhook: str | None = None) -> str:
    """Create a prediction directly, as the dead process did."""
    body: dict[str, Any] = {"input": {"prompt": "left behind"}}
    if webhook:
        body |= {"webhook": webhook, "webhook_events_filter": ["completed"]}
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{rep.base_url}/v1/models/{MODEL}/predictions",
            json=body,
            headers={"Authorization": "Bearer r8_sandbox"},
        )
    assert response.status_code == 201, response.text
    upstream_id: str = response.json()["id"]
    return upstream_id


async def final_job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            job: dict[str, Any] = (await client.get(f"/v1/generations/{job_id}")).json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                return job
            await asyncio.sleep(0.05)


async def test_an_accepted_job_is_polled_after_a_restart_not_resubmitted(
    tmp_path: Path, upstreams: tuple[ReplicateEmulator, FalEmulator]
) -> None:
    """The stored upstream id is polled to the end; nothing is submitted again."""
    rep, fal = upstreams
    cfg = config(tmp_path, rep, fal)
    upstream_id = await submit_upstream(rep)
    job_id, attempt_id = await seed_running_job(cfg, upstream_id)
    async with serve(cfg) as running:
        job = await final_job(running.client, job_id)

    assert job["status"] == "succeeded", job
    assert [(a["id"], a["upstream_id"]) for a in job["attempts"]] == [(attempt_id, upstream_id)]
    assert rep.stats.by_path.get(f"/v1/models/{MODEL}/predictions") == 1  # ours, not a resubmit
    assert sum(fal.submissions.values()) == 0


async def test_an_unknown_submission_fails_over_and_a_late_webhook_reveals_the_duplicate(
    tmp_path: Path, upstreams: tuple[ReplicateEmulator, FalEmulator]
) -> None:
    """No upstream id and no webhook yet: fail over; the later webhook records the duplicate."""
    rep, fal = upstreams
    cfg = config(tmp_path, rep, fal)
    job_id, attempt_id = await seed_running_job(cfg, None)
    async with serve(cfg, webhooks=True) as running:
        job = await final_job(running.client, job_id)
        assert job["status"] == "succeeded", job
        assert job["provider"] == "fal"
        first = job["attempts"][0]
        assert first["error"]["message"] == OUTCOME_UNKNOWN
        assert first["upstream_id"] is None
        # The dead process's submission had reached Replicate after all.
        hook = f"{running.url}/v1/webhooks/rep?job={job_id}&attempt={attempt_id}"
        upstream_id = await submit_upstream(rep, hook)
        async with asyncio.timeout(20):
            while job["duplicate_submissions"] == 0:
                await asyncio.sleep(0.05)
                job = (await running.client.get(f"/v1/generations/{job_id}")).json()

    first = job["attempts"][0]
    assert job["duplicate_submissions"] == 1
    assert first["upstream_id"] == upstream_id
    assert first["error"]["message"].startswith(OUTCOME_UNKNOWN + "; duplicate submission detected")
    assert job["status"] == "succeeded"
    assert job["provider"] == "fal"


async def test_a_webhook_that_lands_before_its_job_resumes_is_kept_for_it(
    tmp_path: Path, upstreams: tuple[ReplicateEmulator, FalEmulator]
) -> None:
    """The provider's one completion webhook arrives while the dead process's job still
    waits to be resumed (its lease, a restart in progress): the resumed job takes the
    upstream id from it at once, instead of waiting for it in vain, calling the outcome
    unknown and submitting the job to fal as well (found by the SIGKILL crash test)."""
    rep, fal = upstreams
    cfg = config(tmp_path, rep, fal)
    async with serve(cfg, webhooks=True) as running:
        engine = running.service.engine
        assert engine is not None
        job_id, attempt_id = await seed_running_job(cfg, None)  # after start: not resumed
        hook = f"{running.url}/v1/webhooks/rep?job={job_id}&attempt={attempt_id}"
        upstream_id = await submit_upstream(rep, hook)
        async with asyncio.timeout(10):
            while not any(d.url == hook for d in rep.webhook_deliveries):
                await asyncio.sleep(0.02)
        assert [d.status for d in rep.webhook_deliveries if d.url == hook] == [202]
        # Whether the webhook was parked before this or lands on the resumed job, the
        # provider's one delivery must reach it.
        await engine.resume(take_all=True)
        job = await final_job(running.client, job_id)

    assert job["status"] == "succeeded", job
    assert job["provider"] == "rep"
    assert [(a["id"], a["upstream_id"]) for a in job["attempts"]] == [(attempt_id, upstream_id)]
    assert sum(fal.submissions.values()) == 0
