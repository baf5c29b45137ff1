"""Tenant limits, usage reservations and credentials on real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import calendar
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from breakers.clock import FakeClock
from router.config import Config, parse_config
from router.crypto import KeyRing, new_encryption_key
from router.errors import Conflict, RateLimited
from router.models import GenerationRequest
from router.store import JobRecord, SqlJobStore, new_job_id, open_store
from router.store.credentials import BudgetExceeded, InflightExceeded, TenantStore
from router.tenants import (
    BudgetExhausted,
    RateLimiter,
    Tenancy,
    month_of,
    seconds_to_next_month,
)

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
JAN_15 = float(calendar.timegm((2026, 1, 15, 12, 0, 0, 0, 0, 0)))
CANARY = "sk-canary-tenant-own-key-7f3a9c"


async def _pg_execute(sql: str) -> None:
    """Run one admin statement on PostgreSQL, or skip (fail when CI=true) if it is absent."""
    engine = create_async_engine(
        PG_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"timeout": 3}
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(sql))
    except (OSError, sa.exc.DBAPIError) as exc:
        reason = f"PostgreSQL at {PG_URL} unreachable: {exc!r}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: PostgreSQL is required)")
        pytest.skip(reason)
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def job_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlJobStore]:
    """A started job store (migrated to head) on SQLite or a throwaway PostgreSQL schema."""
    if request.param == "sqlite":
        store = open_store(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
        await store.start()
        try:
            yield store
        finally:
            await store.close()
        return
    schema = f"t_{secrets.token_hex(6)}"
    await _pg_execute(f"CREATE SCHEMA {schema}")
    store = open_store(PG_URL, connect_args={"server_settings": {"search_path": schema}})
    try:
        await store.start()
        yield store
    finally:
        await store.close()
        await _pg_execute(f"DROP SCHEMA {schema} CASCADE")


def config(**tenant: Any) -> Config:
    raw = {
        "security": {"encryption_keys": {"k1": new_encryption_key()}},
        "tenants": [{"id": "a", "api_keys": [], **tenant}, {"id": "b", "api_keys": []}],
    }
    return parse_config(msgspec.json.decode(msgspec.json.encode(raw)))


def job(tenant: str, cost: float = 0.0) -> JobRecord:
    return JobRecord(
        id=new_job_id(JAN_15),
        tenant=tenant,
        kind="image",
        request=b"{}",
        created_at=JAN_15,
        updated_at=JAN_15,
        deadline_at=JAN_15 + 60,
        status="succeeded",
        cost_usd=cost,
    )


# -- pure parts --------------------------------------------------------------------------


def test_rate_limiter_refills_on_the_injected_clock() -> None:
    """2/s: a burst of 2, then refused with the wait, then admitted once time passes."""
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.try_acquire("a", 2.0) is None
    assert limiter.try_acquire("a", 2.0) is None
    wait = limiter.try_acquire("a", 2.0)
    assert wait == pytest.approx(0.5)
    assert limiter.try_acquire("b", 2.0) is None  # another tenant has its own bucket
    clock.advance(0.5)
    assert limiter.try_acquire("a", 2.0) is None


def test_slow_rates_still_admit_one_request() -> None:
    """0.5/s: a burst of one, then a two-second wait."""
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.try_acquire("a", 0.5) is None
    assert limiter.try_acquire("a", 0.5) == pytest.approx(2.0)


def test_months_are_utc_and_the_next_one_is_counted_to() -> None:
    """The budget period is the UTC month; Retry-After runs to its end."""
    assert month_of(JAN_15) == "2026-01"
    dec_31 = float(calendar.timegm((2025, 12, 31, 23, 0, 0, 0, 0, 0)))
    assert month_of(dec_31) == "2025-12"
    assert seconds_to_next_month(dec_31) == pytest.approx(3600.0)


# -- store -----------------------------------------------------------------------------


async def test_concurrent_reservations_never_exceed_the_budget(job_store: SqlJobStore) -> None:
    """40 concurrent 0.3 USD reservations against 3 USD: exactly 10 are admitted."""
    store = TenantStore.for_job_store(job_store)

    async def one() -> bool:
        try:
            await store.reserve("a", "2026-01", 0.3, JAN_15, max_inflight=None, budget_usd=3.0)
        except BudgetExceeded:
            return False
        return True

    results = await asyncio.gather(*(one() for _ in range(40)))
    assert sum(results) == 10
    usage = await store.usage("a", "2026-01")
    assert usage.reserved_usd == pytest.approx(3.0)
    assert usage.inflight == 10


async def test_inflight_limit_and_release(job_store: SqlJobStore) -> None:
    """At max_inflight the next reservation is refused; settling one frees a slot."""
    store = TenantStore.for_job_store(job_store)
    first = await store.reserve("a", "2026-01", 0.1, JAN_15, max_inflight=1, budget_usd=None)
    with pytest.raises(InflightExceeded):
        await store.reserve("a", "2026-01", 0.1, JAN_15, max_inflight=1, budget_usd=None)
    assert await store.settle(first.id, "job_x", 0.07, "2026-01")
    assert not await store.settle(first.id, "job_x", 0.07, "2026-01")  # settled once only
    second = await store.reserve("a", "2026-01", 0.1, JAN_15, max_inflight=1, budget_usd=None)
    usage = await store.usage("a", "2026-01")
    assert (usage.spent_usd, usage.reserved_usd, usage.jobs, usage.inflight) == pytest.approx(
        (0.07, 0.1, 1, 1)
    )
    assert await store.cancel(second.id)
    assert (await store.usage("a", "2026-01")).inflight == 0


async def test_a_refused_reservation_changes_nothing(job_store: SqlJobStore) -> None:
    """A budget refusal rolls back the in-flight slot it took in the same transaction."""
    store = TenantStore.for_job_store(job_store)
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve("a", "2026-01", 5.0, JAN_15, max_inflight=3, budget_usd=1.0)
    assert info.value.left_usd == pytest.approx(1.0)
    usage = await store.usage("a", "2026-01")
    assert (usage.inflight, usage.reserved_usd) == (0, 0.0)


async def test_settlement_by_job_id_after_a_restart(job_store: SqlJobStore) -> None:
    """A linked reservation is found by its job id (a resumed job has no context)."""
    store = TenantStore.for_job_store(job_store)
    res = await store.reserve("a", "2026-01", 0.5, JAN_15, max_inflight=None, budget_usd=2.0)
    await store.link(res.id, "job_resumed")
    assert await store.settle(None, "job_resumed", 0.4, "2026-01")
    usage = await store.usage("a", "2026-01")
    assert (usage.spent_usd, usage.reserved_usd) == pytest.approx((0.4, 0.0))


async def test_credentials_are_stored_sealed(job_store: SqlJobStore) -> None:
    """The database holds a key id and ciphertext, never the secret; marks hit one kid."""
    store = TenantStore.for_job_store(job_store)
    ring = KeyRing({"k1": new_encryption_key()})
    sealed = ring.encrypt(CANARY, tenant="a", provider="fal")
    await store.put_credential("a", "fal", sealed.kid, sealed.encoded(), JAN_15)
    row = await store.credential("a", "fal")
    assert row is not None
    assert CANARY not in row.ciphertext
    assert row.is_valid is None
    assert await store.credential("b", "fal") is None
    assert not await store.mark_credential("a", "fal", "k0", False, JAN_15)
    assert await store.mark_credential("a", "fal", "k1", True, JAN_15)
    assert (await store.credentials("a"))[0].is_valid is True
    assert await store.delete_credential("a", "fal")
    assert not await store.delete_credential("a", "fal")


# -- the tenancy facade ----------------------------------------------------------------


async def test_tenancy_maps_limits_to_problems(job_store: SqlJobStore) -> None:
    """429 with a wait, 409 at the in-flight limit, 402 with Retry-After to next month."""
    clock = FakeClock(wall=JAN_15)
    cfg = config(rate_limit_per_s=1.0, max_inflight=1, budget_usd_per_month=1.0)
    tenancy = Tenancy(cfg, TenantStore.for_job_store(job_store), clock)
    tenancy.check_rate("a")
    with pytest.raises(RateLimited) as rate:
        tenancy.check_rate("a")
    assert rate.value.retry_after_s == pytest.approx(1.0)
    tenancy.check_rate("b")  # no limit configured
    res = await tenancy.admit("a", 0.6)
    with pytest.raises(Conflict):
        await tenancy.admit("a", 0.1)
    await tenancy.job_finished(job("a", 0.6))  # the current reservation settles
    with pytest.raises(BudgetExhausted) as budget:
        await tenancy.admit("a", 0.5)
    assert budget.value.status == 402
    assert budget.value.retry_after_s == pytest.approx(16.5 * 86400)
    usage = await tenancy.usage("a")
    assert usage["spent_usd"] == pytest.approx(0.6)
    assert usage["remaining_usd"] == pytest.approx(0.4)
    assert usage["inflight"] == 0
    assert res.tenant == "a"


async def test_tenant_keys_are_used_until_rejected_and_rotate(job_store: SqlJobStore) -> None:
    """Own key routed until an auth outcome; rotate-keys re-seals so the old key can go."""
    clock = FakeClock(wall=JAN_15)
    old_key, new_key = new_encryption_key(), new_encryption_key()
    store = TenantStore.for_job_store(job_store)
    tenancy = Tenancy(config(), store, clock, ring=KeyRing({"k1": old_key}))
    await tenancy.credentials.put("a", "fal", CANARY)
    assert tenancy.api_key("a", "fal", "platform") == CANARY
    assert tenancy.api_key("b", "fal", "platform") == "platform"
    await tenancy.auth_rejected("a", "fal")
    assert tenancy.api_key("a", "fal", "platform") == "platform"
    assert (await store.credential("a", "fal")).is_valid is False  # type: ignore[union-attr]

    rotating = Tenancy(config(), store, clock, ring=KeyRing({"k2": new_key, "k1": old_key}))
    assert await rotating.credentials.rotate_all() == (1, 0)
    after = Tenancy(config(), store, clock, ring=KeyRing({"k2": new_key}))
    await after.credentials.refresh()
    assert await after.credentials.secret("a", "fal") == CANARY


async def test_estimates_take_the_dearest_capable_provider() -> None:
    """The reserved estimate is the highest among providers that could serve the job."""
    from breakers.clock import SystemClock
    from router.adapters.registry import build_adapter
    from router.registry import ProviderRegistry
    from router.tenants import estimate_cost

    raw = {
        "providers": [
            {
                "name": n,
                "adapter": "openai",
                "base_url": "https://api.openai.test",
                "kinds": ["image"],
                "models": {"image": "dall-e-3"},
                "cost": {"per_image_usd": c},
            }
            for n, c in (("cheap", 0.01), ("dear", 0.08))
        ]
    }
    cfg = parse_config(raw)
    registry = ProviderRegistry(
        list(cfg.providers), clock=SystemClock(), build_adapter=build_adapter
    )
    req = GenerationRequest(kind="image", prompt="x")
    assert estimate_cost(req, registry) == pytest.approx(0.08)
    only_cheap = msgspec.convert(
        {"kind": "image", "prompt": "x", "routing": {"exclude": ["dear"]}}, GenerationRequest
    )
    assert estimate_cost(only_cheap, registry) == pytest.approx(0.01)
    video = GenerationRequest(kind="video", prompt="x")
    assert estimate_cost(video, registry) == 0.0


def test_keys_new_prints_a_key_once_with_its_config_hash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``switchman keys new`` prints a prefixed 256-bit key and the hash that matches it."""
    from router.auth import Authenticator, hash_key
    from router.cli import main

    assert (
        main(["keys", "new", "--tenant", "video-team", "--scopes", "generate,read", "--json"]) == 0
    )
    out = msgspec.json.decode(capsys.readouterr().out)
    key = out["api_key"]
    assert key.startswith("sk_sw_")
    assert len(key.removeprefix("sk_sw_")) >= 43  # 32 random bytes, base64url
    assert out["tenant"]["api_keys"] == [hash_key(key)]
    tenants = parse_config({"tenants": [out["tenant"]]}).tenants
    principal = Authenticator(tenants).authenticate(f"Bearer {key}")
    assert (principal.tenant, principal.scopes) == ("video-team", frozenset({"generate", "read"}))
    assert main(["keys", "new", "--tenant", "t", "--scopes", "root"]) == 2
