"""The admin API (DESIGN §3): drain, breaker control, provider tests, reload, job views.

A real Switchman on loopback in front of sandbox emulators; routing effects are
counted at the emulators, audit events read from structlog.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml
from structlog.testing import capture_logs

from router.config import Config
from tests.integration.harness import ADMIN_KEY, Running, make_config, serve

pytestmark = [pytest.mark.integration]

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
_SUBMIT = "/v1/images/generations"

ADMIN_ROUTES = [
    ("POST", "/v1/providers/alpha/drain", {"reason": "x"}),
    ("POST", "/v1/providers/alpha/undrain", None),
    ("POST", "/v1/providers/alpha/breaker", {"state": "open"}),
    ("POST", "/v1/providers/alpha/test", None),
    ("POST", "/v1/admin/reload", None),
    ("GET", "/v1/admin/jobs", None),
    ("GET", "/v1/admin/jobs/gen_x", None),
]


def _two_providers(tmp_path: Path, **extra: Any) -> Config:
    """``alpha`` is cheaper (preferred); ``bravo`` is the alternative."""
    return make_config(
        tmp_path,
        [
            {"name": "alpha", "cost": {"per_image_usd": 0.01}, **extra},
            {"name": "bravo", "cost": {"per_image_usd": 0.05}},
        ],
        routing={"strategy": "cheapest"},
    )


def _submits(running: Running, name: str) -> int:
    return running.emulator(name).stats.by_path.get(_SUBMIT, 0)


async def _admin(
    running: Running, method: str, path: str, body: Any = None, **headers: str
) -> httpx.Response:
    return await running.client.request(method, path, json=body, headers={**ADMIN, **headers})


def _metric(text: str, name: str, provider: str) -> float:
    m = re.search(rf'^switchman_{name}\{{provider="{provider}"\}} (\S+)$', text, re.M)
    assert m is not None, f"{name} for {provider} not exported"
    return float(m.group(1))


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_admin_routes_refuse_a_key_without_the_admin_scope(
    tmp_path: Path, method: str, path: str, body: Any
) -> None:
    """A generate/read key gets 403 problem+json on every admin route, and nothing changes."""
    async with serve(_two_providers(tmp_path)) as running:
        r = await running.client.request(method, path, json=body)  # the harness's non-admin key
        assert r.status_code == 403
        assert r.headers["content-type"] == "application/problem+json"
        assert "admin" in r.json()["detail"]
        assert running.service.registry is not None
        alpha = running.service.registry.get("alpha")
        assert alpha is not None
        assert not alpha.drained
        assert alpha.guard.breaker.state == "closed"
        no_key = await running.client.request(
            method, path, json=body, headers={"Authorization": ""}
        )
        assert no_key.status_code == 401


@pytest.mark.parametrize("action", ["drain", "undrain", "breaker", "test"])
async def test_an_unknown_provider_is_404_problem(tmp_path: Path, action: str) -> None:
    """Every provider action names the missing provider in a 404 problem."""
    body = {"drain": {"reason": "x"}, "breaker": {"state": "open"}}.get(action)
    async with serve(_two_providers(tmp_path)) as running:
        r = await _admin(running, "POST", f"/v1/providers/nope/{action}", body)
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        assert "nope" in r.json()["detail"]


async def test_drain_takes_a_provider_out_of_routing_and_is_audited(tmp_path: Path) -> None:
    """Drained, the preferred provider gets no traffic; the action is logged with who and why."""
    async with serve(_two_providers(tmp_path)) as running:
        assert (await running.generate()).headers["x-switchman-provider"] == "alpha"
        with capture_logs() as logs:
            r = await _admin(
                running,
                "POST",
                "/v1/providers/alpha/drain",
                {"reason": "INC-42 upstream 5xx"},
                **{"X-Request-Id": "req-drain-1"},
            )
        assert r.status_code == 200
        state = r.json()
        assert state["name"] == "alpha"
        assert state["drained"] is True
        assert state["drain_reason"] == "INC-42 upstream 5xx"
        before = _submits(running, "alpha")
        for _ in range(3):
            r = await running.generate()
            assert r.status_code == 200
            assert r.headers["x-switchman-provider"] == "bravo"
        assert _submits(running, "alpha") == before
        metrics = (await running.client.get("/metrics")).text
        assert _metric(metrics, "provider_drained", "alpha") == 1
        assert _metric(metrics, "provider_drained", "bravo") == 0
        listed = (await running.client.get("/v1/providers/alpha")).json()
        assert listed["drained"] is True
        assert listed["drain_reason"] == "INC-42 upstream 5xx"

        with capture_logs() as undrain_logs:
            r = await _admin(running, "POST", "/v1/providers/alpha/undrain")
        assert r.status_code == 200
        assert r.json()["drained"] is False
        assert r.json()["drain_reason"] is None
        assert (await running.generate()).headers["x-switchman-provider"] == "alpha"
        metrics = (await running.client.get("/metrics")).text
        assert _metric(metrics, "provider_drained", "alpha") == 0

    audit = [e for e in logs if e["event"] == "admin.provider_drained"]
    assert len(audit) == 1
    assert audit[0]["actor"] == "ops"
    assert audit[0]["provider"] == "alpha"
    assert audit[0]["reason"] == "INC-42 upstream 5xx"
    assert audit[0]["request_id"] == "req-drain-1"
    undrained = [e for e in undrain_logs if e["event"] == "admin.provider_undrained"]
    assert len(undrained) == 1
    assert undrained[0]["drain_reason"] == "INC-42 upstream 5xx"
    assert undrained[0]["actor"] == "ops"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "reason"),
        ({"reason": ""}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": "x" * 501}, "reason"),
        ({"reason": "ok", "extra": 1}, "extra"),
    ],
)
async def test_drain_requires_a_reason_of_1_to_500_chars(
    tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    """A drain without a usable reason is a 422 naming the field, and drains nothing."""
    async with serve(_two_providers(tmp_path)) as running:
        r = await _admin(running, "POST", "/v1/providers/alpha/drain", body)
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in r.json()["errors"]] == [field]
        assert running.service.registry is not None
        alpha = running.service.registry.get("alpha")
        assert alpha is not None
        assert not alpha.drained


async def test_a_500_char_reason_is_accepted(tmp_path: Path) -> None:
    """The reason limit is inclusive."""
    async with serve(_two_providers(tmp_path)) as running:
        r = await _admin(running, "POST", "/v1/providers/alpha/drain", {"reason": "x" * 500})
        assert r.status_code == 200
        assert r.json()["drain_reason"] == "x" * 500


async def test_breaker_forced_open_holds_until_forced_closed(tmp_path: Path) -> None:
    """A forced-open breaker routes around the provider, shows in metrics, and closes on request."""
    async with serve(_two_providers(tmp_path)) as running:
        with capture_logs() as logs:
            r = await _admin(
                running,
                "POST",
                "/v1/providers/alpha/breaker",
                {"state": "open", "reason": "vendor maintenance"},
            )
        assert r.status_code == 200
        state = r.json()
        assert state["breaker"] == "open"
        assert state["breaker_forced_open"] is True
        before = _submits(running, "alpha")
        r = await running.generate()
        assert r.headers["x-switchman-provider"] == "bravo"
        assert _submits(running, "alpha") == before
        metrics = (await running.client.get("/metrics")).text
        assert _metric(metrics, "provider_breaker_state", "alpha") == 2
        ready = (await running.client.get("/readyz")).json()
        assert ready["checks"]["routable_providers"] == 1

        r = await _admin(running, "POST", "/v1/providers/alpha/breaker", {"state": "closed"})
        assert r.status_code == 200
        assert r.json()["breaker"] == "closed"
        assert r.json()["breaker_forced_open"] is False
        assert (await running.generate()).headers["x-switchman-provider"] == "alpha"
        metrics = (await running.client.get("/metrics")).text
        assert _metric(metrics, "provider_breaker_state", "alpha") == 0

    forced = [e for e in logs if e["event"] == "admin.breaker_forced_open"]
    assert len(forced) == 1
    assert forced[0]["actor"] == "ops"
    assert forced[0]["reason"] == "vendor maintenance"
    assert forced[0]["previous"] == "closed"
    assert any(e["event"] == "breaker.opened" and e["provider"] == "alpha" for e in logs)


@pytest.mark.parametrize(
    ("body", "field"),
    [({"state": "half_open"}, "state"), ({}, "state"), ({"state": "open", "reason": ""}, "reason")],
)
async def test_breaker_body_is_validated(tmp_path: Path, body: dict[str, Any], field: str) -> None:
    """Only ``open`` and ``closed`` are accepted; a 422 names the field."""
    async with serve(_two_providers(tmp_path)) as running:
        r = await _admin(running, "POST", "/v1/providers/alpha/breaker", body)
        assert r.status_code == 422
        assert [e["field"] for e in r.json()["errors"]] == [field]


async def test_malformed_json_is_a_400_problem(tmp_path: Path) -> None:
    """A body that is not JSON is refused before anything changes."""
    async with serve(_two_providers(tmp_path)) as running:
        r = await running.client.post(
            "/v1/providers/alpha/drain", content=b"{not json", headers=ADMIN
        )
        assert r.status_code == 400
        assert r.headers["content-type"] == "application/problem+json"


async def test_provider_test_checks_credentials_live_and_never_echoes_them(
    tmp_path: Path,
) -> None:
    """A good key passes with a latency; a wrong key fails as ``auth``; no key is echoed."""
    secret = "sk-wrong-secret-4242"
    config = make_config(tmp_path, [{"name": "alpha"}, {"name": "bravo", "api_key": secret}])
    async with serve(config) as running:
        with capture_logs() as logs:
            good = await _admin(running, "POST", "/v1/providers/alpha/test")
        assert good.status_code == 200
        body = good.json()
        assert body["provider"] == "alpha"
        assert body["ok"] is True
        assert 0 < body["latency_s"] < 10
        assert running.emulator("alpha").stats.by_path.get("/v1/models", 0) == 1

        bad = await _admin(running, "POST", "/v1/providers/bravo/test")
        assert bad.status_code == 200
        assert bad.json()["ok"] is False
        assert "401" in bad.json()["detail"]
        assert secret not in bad.text
        assert "sk-sandbox" not in good.text
    tested = [e for e in logs if e["event"] == "admin.provider_tested"]
    assert tested[0]["ok"] is True
    assert tested[0]["actor"] == "ops"


def _write_config(path: Path, config: Config) -> dict[str, Any]:
    raw: dict[str, Any] = msgspec.to_builtins(config)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return raw


async def test_reload_applies_a_new_config_and_keeps_live_state(tmp_path: Path) -> None:
    """Unchanged providers keep their runtime; a changed one keeps the operator's drain;
    added and removed providers take effect; the response says what changed."""
    config = make_config(
        tmp_path,
        [{"name": "alpha"}, {"name": "bravo"}, {"name": "charlie"}],
    )
    path = tmp_path / "switchman.yaml"
    raw = _write_config(path, config)
    async with serve(config, config_path=path) as running:
        registry = running.service.registry
        assert registry is not None
        alpha_before = registry.get("alpha")
        assert (await running.generate()).status_code == 200
        await _admin(running, "POST", "/v1/providers/alpha/breaker", {"state": "open"})
        await _admin(running, "POST", "/v1/providers/bravo/drain", {"reason": "cost review"})

        raw["providers"] = [p for p in raw["providers"] if p["name"] != "charlie"]
        raw["providers"][1]["cost"]["per_image_usd"] = 0.5  # bravo changes
        delta = {**raw["providers"][0], "name": "delta"}
        raw["providers"].append(delta)
        raw["sandbox"]["emulators"].append({**raw["sandbox"]["emulators"][0], "name": "delta"})
        delta["base_url"] = "sandbox:delta"
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")

        with capture_logs() as logs:
            r = await _admin(running, "POST", "/v1/admin/reload")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["reloaded"] is True
        assert body["providers"] == ["alpha", "bravo", "delta"]
        assert body["added"] == ["delta"]
        assert body["removed"] == ["charlie"]
        assert body["changed"] == ["bravo"]
        assert body["restart_required"] == []

        registry = running.service.registry
        assert registry is not None
        assert registry.get("alpha") is alpha_before  # breaker, buckets and stats kept
        bravo = registry.get("bravo")
        assert bravo is not None
        assert bravo.drained
        assert bravo.drain_reason == "cost review"
        assert bravo.cost.per_image_usd == 0.5
        listed = (await running.client.get("/v1/providers")).json()["providers"]
        assert [p["name"] for p in listed] == ["alpha", "bravo", "delta"]
        assert listed[0]["breaker"] == "open"
        r = await running.generate()
        assert r.status_code == 200
        assert r.headers["x-switchman-provider"] == "delta"
        metrics = (await running.client.get("/metrics")).text
        assert 'switchman_provider_drained{provider="delta"} 0.0' in metrics
    assert any(e["event"] == "admin.config_reloaded" and e["actor"] == "ops" for e in logs)


async def test_an_invalid_config_is_rejected_and_the_old_one_keeps_running(
    tmp_path: Path,
) -> None:
    """A reload of a broken file is a 422 naming each bad field; routing is untouched."""
    config = _two_providers(tmp_path)
    path = tmp_path / "switchman.yaml"
    raw = _write_config(path, config)
    async with serve(config, config_path=path) as running:
        raw["providers"][0]["weight"] = -1
        raw["routing"]["max_attempts"] = 0
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        registry = running.service.registry
        r = await _admin(running, "POST", "/v1/admin/reload")
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        fields = {e["field"] for e in r.json()["errors"]}
        assert fields == {"providers[0].weight", "routing.max_attempts"}
        assert running.service.registry is registry
        assert running.service.config is config
        r = await running.generate()
        assert r.status_code == 200
        assert r.headers["x-switchman-provider"] == "alpha"


async def test_reload_does_not_drop_requests_in_flight(tmp_path: Path) -> None:
    """Requests running during a reload finish on the runtime they started with."""
    config = make_config(tmp_path, [{"name": "alpha", "faults": {"latency_s": 0.6}}])
    path = tmp_path / "switchman.yaml"
    raw = _write_config(path, config)
    async with serve(config, config_path=path) as running:
        emulator = running.emulator("alpha")
        inflight = [asyncio.create_task(running.generate()) for _ in range(4)]
        async with asyncio.timeout(10):
            while emulator.stats.by_path.get(_SUBMIT, 0) < 4:
                await asyncio.sleep(0.01)
        raw["providers"][0]["cost"]["per_image_usd"] = 0.07  # alpha gets a new runtime
        raw["server"]["max_body_bytes"] = 4096  # baked into the HTTP app: needs a restart
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        r = await _admin(running, "POST", "/v1/admin/reload")
        assert r.json()["changed"] == ["alpha"]
        assert r.json()["restart_required"] == ["server.max_body_bytes"]
        responses = await asyncio.gather(*inflight)
        assert [x.status_code for x in responses] == [200] * 4
        assert all(x.json()["status"] == "succeeded" for x in responses)


async def test_reload_without_a_config_file_is_a_problem(tmp_path: Path) -> None:
    """A service built from an in-memory config says so instead of pretending to reload."""
    async with serve(_two_providers(tmp_path)) as running:
        r = await _admin(running, "POST", "/v1/admin/reload")
        assert r.status_code == 422
        assert "config file" in r.json()["detail"]


async def test_admin_job_views_span_tenants(tmp_path: Path) -> None:
    """An operator lists and reads another tenant's jobs, with tenant and age."""
    async with serve(_two_providers(tmp_path)) as running:
        ids = [(await running.generate()).json()["id"] for _ in range(3)]
        r = await _admin(running, "GET", "/v1/admin/jobs")
        assert r.status_code == 200
        data = r.json()["data"]
        assert [j["id"] for j in data] == ids[::-1]  # newest first
        assert {j["tenant"] for j in data} == {"team-a"}
        assert all(j["age_s"] >= 0 for j in data)

        r = await running.client.get(
            "/v1/admin/jobs", params={"status": "failed", "limit": 5}, headers=ADMIN
        )
        assert r.json()["data"] == []
        r = await running.client.get(
            "/v1/admin/jobs", params={"status": "succeeded", "limit": 2}, headers=ADMIN
        )
        assert [j["id"] for j in r.json()["data"]] == ids[:0:-1]
        r = await running.client.get("/v1/admin/jobs", params={"tenant": "ops"}, headers=ADMIN)
        assert r.json()["data"] == []

        one = await _admin(running, "GET", f"/v1/admin/jobs/{ids[0]}")
        assert one.status_code == 200
        assert one.json()["tenant"] == "team-a"
        assert one.json()["attempts"][0]["provider"] == "alpha"
        # The operator's own tenant cannot see it through the tenant API.
        assert (await _admin(running, "GET", f"/v1/generations/{ids[0]}")).status_code == 404
        missing = await _admin(running, "GET", "/v1/admin/jobs/gen_nope")
        assert missing.status_code == 404
        bad = await running.client.get(
            "/v1/admin/jobs", params={"status": "done", "limit": 0}, headers=ADMIN
        )
        assert bad.status_code == 400
        assert {e["field"] for e in bad.json()["errors"]} == {"status", "limit"}


async def test_admin_routes_are_in_the_openapi_schema(tmp_path: Path) -> None:
    """The schema documents the admin API (and not the status page)."""
    async with serve(_two_providers(tmp_path)) as running:
        r = await running.client.get("/schema/openapi.json")
        assert r.status_code == 200
        paths = r.json()["paths"]
        for path in (
            "/v1/providers/{name}/drain",
            "/v1/providers/{name}/undrain",
            "/v1/providers/{name}/breaker",
            "/v1/providers/{name}/test",
            "/v1/admin/reload",
            "/v1/admin/jobs",
            "/v1/admin/jobs/{job_id}",
        ):
            assert path in paths
        assert "/ui" not in paths
