"""Bring-your-own credentials over real HTTP: routing with the tenant's key, write-only API,
auth failures marking the key invalid, rotation, and a canary that never leaks."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metrics.logging import configure_logging
from metrics.tracing import setup_tracing
from router.cli_keys import rotate_keys
from router.config import Config, parse_config
from router.crypto import new_encryption_key
from router.sandbox.openai import OpenAIEmulator
from tests.integration.harness import serve
from tests.integration.tenant_support import KEY_B, as_tenant, responses_of, tenant_config

pytestmark = pytest.mark.integration

CANARY = "sk-canary-" + os.urandom(12).hex()
PROVIDERS = [{"name": "oa", "priority": 1}, {"name": "ob", "priority": 2}]


def accept_only(emulator: OpenAIEmulator, key: str) -> None:
    """Make an OpenAI emulator accept ``key`` and nothing else."""
    emulator.api_key = key
    emulator._auth = f"Bearer {key}"


async def test_canary_key_routes_fails_over_and_never_leaks(tmp_path: Path) -> None:
    """A full run with a tenant key: 0 canary occurrences in logs, traces, metrics, responses."""
    logs = io.StringIO()
    configure_logging("DEBUG", stream=logs)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = setup_tracing("switchman", provider=provider)
    config = tenant_config(tmp_path, PROVIDERS, routing={"strategy": "priority"})
    try:
        async with serve(config, tracer=tracer) as running:
            seen = await responses_of(running)
            oa = running.emulator("oa")
            assert isinstance(oa, OpenAIEmulator)
            accept_only(oa, CANARY)  # oa now takes only team-a's own key

            put = await running.client.put("/v1/credentials/oa", json={"api_key": CANARY})
            assert put.status_code == 200
            assert put.json()["is_valid"] is None
            bad = await running.client.put("/v1/credentials/nope", json={"api_key": CANARY})
            assert bad.status_code == 404
            listed = (await running.client.get("/v1/credentials")).json()["data"]
            assert [c["provider"] for c in listed] == ["oa"]
            assert set(listed[0]) == {"provider", "is_valid", "updated_at", "tested_at"}

            tested = await running.client.post("/v1/credentials/oa/test")
            assert tested.status_code == 200, tested.text
            assert tested.json()["ok"] is True

            # team-a is routed to oa with its own key.
            a = await running.generate()
            assert a.status_code == 200, a.text
            assert a.json()["provider"] == "oa"
            last = oa.stats.last("/v1/images/generations")
            assert last is not None
            assert last.headers["Authorization"] == f"Bearer {CANARY}"

            # team-b has no key of its own: the platform key, refused by oa, fails over.
            b = await running.generate(None, **as_tenant(KEY_B))
            assert b.status_code == 200, b.text
            assert [x["provider"] for x in b.json()["attempts"]] == ["oa", "ob"]
            assert b.json()["attempts"][0]["error"]["kind"] == "auth"
            assert (await running.client.get("/v1/credentials")).json()["data"][0]["is_valid"]

            # The provider now refuses team-a's key: marked invalid, the job fails over.
            accept_only(oa, "sk-sandbox")
            again = await running.generate()
            assert again.status_code == 200
            assert [x["provider"] for x in again.json()["attempts"]] == ["oa", "ob"]
            after = (await running.client.get("/v1/credentials")).json()["data"][0]
            assert after["is_valid"] is False
            # An invalid own key is not used again: the platform key is, and oa takes it.
            third = await running.generate()
            assert [x["provider"] for x in third.json()["attempts"]] == ["oa"]

            gone = await running.client.delete("/v1/credentials/oa")
            assert gone.status_code == 204
            assert (await running.client.delete("/v1/credentials/oa")).status_code == 404
            metrics = (await running.client.get("/metrics")).text
            assert metrics
            database = (tmp_path / "sw.db").read_bytes()
    finally:
        configure_logging(os.environ.get("SWITCHMAN_TEST_LOG_LEVEL", "WARNING"))
    captured = {
        "logs": logs.getvalue(),
        "traces": "".join(s.to_json() for s in exporter.get_finished_spans()),
        "metrics": metrics,
        "responses": "".join(f"{r.status_code} {r.headers!r} {r.text}" for r in seen),
    }
    assert "credential.stored" in captured["logs"]  # logging did run at DEBUG
    assert captured["traces"]
    for where, text in captured.items():
        assert text.count(CANARY) == 0, where
    assert CANARY.encode() not in database


async def test_rotate_keys_then_dropping_the_old_key_keeps_every_secret(tmp_path: Path) -> None:
    """After ``rotate-keys`` and removing the old key, every stored secret still decrypts."""
    config = tenant_config(tmp_path, PROVIDERS)
    old_kid, old_key = next(iter(config.security.encryption_keys.items()))
    async with serve(config) as running:
        for provider, key in (("oa", "sk-a-oa-0123456789"), ("ob", "sk-a-ob-0123456789")):
            r = await running.client.put(f"/v1/credentials/{provider}", json={"api_key": key})
            assert r.status_code == 200
        r = await running.client.put(
            "/v1/credentials/oa", json={"api_key": "sk-b-oa-0123456789"}, headers=as_tenant(KEY_B)
        )
        assert r.status_code == 200

    def with_keys(keys: dict[str, str]) -> Config:
        import msgspec

        raw = msgspec.to_builtins(config)
        raw["security"]["encryption_keys"] = keys
        return parse_config(raw)

    new_key = new_encryption_key()
    rotated, current = await rotate_keys(with_keys({"k2": new_key, old_kid: old_key}))
    assert (rotated, current) == (3, 0)
    assert await rotate_keys(with_keys({"k2": new_key, old_kid: old_key})) == (0, 3)

    async with serve(with_keys({"k2": new_key})) as running:
        tenancy = running.service.engine.tenancy  # type: ignore[union-attr]
        from router.tenants import Tenancy

        assert isinstance(tenancy, Tenancy)
        assert await tenancy.credentials.secret("team-a", "oa") == "sk-a-oa-0123456789"
        assert await tenancy.credentials.secret("team-a", "ob") == "sk-a-ob-0123456789"
        assert await tenancy.credentials.secret("team-b", "oa") == "sk-b-oa-0123456789"
