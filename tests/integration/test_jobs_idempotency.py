"""Idempotency keys over real HTTP (issue 4, acceptance 3)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.integration.harness import make_config, serve

BODY = {"kind": "image", "prompt": "a lighthouse at dusk", "metadata": {"order": "A-17"}}


async def test_fifty_concurrent_requests_with_one_key_make_one_job(tmp_path: Path) -> None:
    """50 concurrent identical requests: one job, one upstream call, all 50 carry it."""
    config = make_config(tmp_path, [{"name": "slow", "faults": {"latency_s": 0.3}}])
    async with serve(config) as running:
        responses = await asyncio.gather(
            *(running.generate(BODY, Idempotency_Key="order-A-17") for _ in range(50))
        )
        upstream_calls = running.emulator("slow").stats.by_path.get("/v1/images/generations")
        listed = (await running.client.get("/v1/generations?limit=100")).json()["data"]

    ids = {r.json()["id"] for r in responses}
    assert [r.status_code for r in responses] == [200] * 50
    assert len(ids) == 1
    assert upstream_calls == 1
    assert [j["id"] for j in listed] == list(ids)
    assert {r.content for r in responses} == {responses[0].content}, "same body every time"
    replayed = sum(r.headers.get("idempotent-replayed") == "true" for r in responses)
    assert replayed == 49


async def test_a_replay_returns_the_first_answer_and_another_body_is_refused(
    tmp_path: Path,
) -> None:
    """Same key + same body (keys reordered) replays status and body; another body: 422."""
    config = make_config(tmp_path, [{"name": "p"}])
    async with serve(config) as running:
        first = await running.client.post(
            "/v1/generations", json=BODY, headers={"Idempotency-Key": "k1"}
        )
        job_id = first.json()["id"]
        await running.client.get(f"/v1/generations/{job_id}")
        reordered = '{"metadata":{"order":"A-17"},"prompt":"a lighthouse at dusk","kind":"image"}'
        replay = await running.client.post(
            "/v1/generations",
            content=reordered,
            headers={"Idempotency-Key": "k1", "Content-Type": "application/json"},
        )
        other = await running.client.post(
            "/v1/generations",
            json={**BODY, "prompt": "another prompt"},
            headers={"Idempotency-Key": "k1"},
        )
        other_tenant_key = await running.client.post(
            "/v1/generations", json=BODY, headers={"Idempotency-Key": "k2"}
        )

    assert first.status_code == 202
    assert replay.status_code == 202
    assert replay.content == first.content
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["location"] == f"/v1/generations/{job_id}"
    assert other.status_code == 422
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert other_tenant_key.json()["id"] != job_id


async def test_a_request_that_creates_nothing_frees_its_key(tmp_path: Path) -> None:
    """A 503 (no provider) does not burn the key: the retry creates the job."""
    config = make_config(tmp_path, [{"name": "p"}])
    async with serve(config) as running:
        rt = running.service.registry.get("p") if running.service.registry else None
        assert rt is not None
        rt.drained = True
        refused = await running.generate(BODY, Idempotency_Key="k-503")
        rt.drained = False
        retried = await running.generate(BODY, Idempotency_Key="k-503")

    assert refused.status_code == 503
    assert retried.status_code == 200
    assert retried.json()["status"] == "succeeded"
