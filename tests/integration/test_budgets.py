"""Tenant budgets, in-flight limits and request rates over real HTTP (problem+json)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from router.tenants import _tenancy_of
from tests.integration.harness import make_config, serve
from tests.integration.tenant_support import KEY_B, as_tenant, tenant_config

pytestmark = pytest.mark.integration

SLOW = {"latency_s": 0.4}


async def test_concurrent_submissions_are_admitted_only_up_to_the_budget(tmp_path: Path) -> None:
    """12 concurrent 0.3 USD jobs against 1 USD: 3 admitted, 9 refused 402 with Retry-After."""
    config = tenant_config(
        tmp_path,
        [{"name": "oa", "faults": SLOW, "cost": {"per_image_usd": 0.3}}],
        team_a={"budget_usd_per_month": 1.0},
    )
    async with serve(config) as running:
        answers = await asyncio.gather(*(running.generate() for _ in range(12)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] * 3 + [402] * 9, codes
        refused = next(r for r in answers if r.status_code == 402)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["status"] == 402
        usage = (await running.client.get("/v1/usage")).json()
        assert usage["spent_usd"] == pytest.approx(0.9)
        assert usage["spent_usd"] <= usage["budget_usd"]
        assert (usage["reserved_usd"], usage["inflight"], usage["jobs"]) == (0.0, 0, 3)
        assert usage["remaining_usd"] == pytest.approx(0.1)
        # Another tenant's budget is its own.
        b = await running.generate(None, **as_tenant(KEY_B))
        assert b.status_code == 200


async def test_max_inflight_one_refuses_the_second_and_admits_after_the_first(
    tmp_path: Path,
) -> None:
    """max_inflight 1: a concurrent second job is 409; once the first ends, one is admitted."""
    config = tenant_config(
        tmp_path, [{"name": "oa", "faults": {"latency_s": 1.0}}], team_a={"max_inflight": 1}
    )
    async with serve(config) as running:
        body = {"kind": "image", "prompt": "a lighthouse at dusk"}
        first = await running.client.post("/v1/generations", json=body)  # 202: still running
        assert first.status_code == 202, first.text
        second = await running.generate()
        assert second.status_code == 409, second.text
        assert second.headers["content-type"].startswith("application/problem+json")
        assert "in flight" in second.json()["detail"]
        # Wait for the first job's end on its event stream (it closes after "final").
        async with running.client.stream(
            "GET", f"/v1/generations/{first.json()['id']}/events"
        ) as events:
            async for _ in events.aiter_bytes():
                pass
        third = await running.generate()
        assert third.status_code == 200, third.text
        assert (await running.client.get("/v1/usage")).json()["inflight"] == 0


async def test_a_job_refused_by_every_provider_gives_its_slot_back(tmp_path: Path) -> None:
    """A 503 (no provider) releases the in-flight slot and the reservation it took."""
    config = tenant_config(
        tmp_path,
        [{"name": "oa"}],
        team_a={"max_inflight": 1, "budget_usd_per_month": 1.0},
    )
    async with serve(config) as running:
        await running.client.post(
            "/v1/providers/oa/drain",
            json={"reason": "test"},
            headers={"Authorization": "Bearer sk_sw_test_admin"},
        )
        for _ in range(3):
            assert (await running.generate()).status_code == 503
        usage = (await running.client.get("/v1/usage")).json()
        assert (usage["inflight"], usage["reserved_usd"]) == (0, 0.0)


async def test_the_request_rate_limit_is_a_429_with_retry_after(tmp_path: Path) -> None:
    """rate_limit_per_s 1: the second create in the same second is 429 with Retry-After."""
    config = tenant_config(tmp_path, [{"name": "oa"}], team_a={"rate_limit_per_s": 1.0})
    async with serve(config) as running:
        body = {"kind": "image", "prompt": "x"}
        first = await running.client.post("/v1/generations", json=body)
        second = await running.client.post("/v1/generations", json=body)
        assert first.status_code in (200, 202)
        assert second.status_code == 429
        assert second.headers["retry-after"] == "1"
        assert second.headers["content-type"].startswith("application/problem+json")
        # Reads are never rate limited, and other tenants have their own bucket.
        assert (await running.client.get("/v1/usage")).status_code == 200
        other = await running.client.post("/v1/generations", json=body, headers=as_tenant(KEY_B))
        assert other.status_code in (200, 202)


async def test_an_unlimited_tenants_spend_is_batched_but_always_shown(tmp_path: Path) -> None:
    """No budget, no in-flight cap: spend is written in batches, yet /v1/usage shows it at once."""
    config = make_config(
        tmp_path, [{"name": "only", "cost": {"per_image_usd": 0.25}, "faults": {}}]
    )
    async with serve(config) as running:
        for _ in range(2):
            assert (await running.generate()).json()["status"] == "succeeded"
        before = (await running.client.get("/v1/usage")).json()
        tenancy = _tenancy_of(running.service)
        assert tenancy is not None
        await tenancy.flush_spend()
        after = (await running.client.get("/v1/usage")).json()
    assert before["spent_usd"] == pytest.approx(0.5)
    assert before["jobs"] == 2
    assert after["spent_usd"] == pytest.approx(0.5)
    assert after["jobs"] == 2
