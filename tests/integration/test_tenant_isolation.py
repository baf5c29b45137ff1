"""Tenant isolation: another tenant's ids are 404 on every route that takes one."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.app import create_app
from tests.integration.harness import serve
from tests.integration.tenant_support import KEY_B, as_tenant, tenant_config

pytestmark = pytest.mark.integration

#: Every route with an id in its path, and how tenant B probes tenant A's resource there.
#: Routes whose path id is not tenant-owned are listed with ``None`` and why.
ID_ROUTES: dict[str, tuple[str, str] | str | None] = {
    "/v1/generations/{job_id:str}": ("GET", "/v1/generations/{job}"),
    "/v1/generations/{job_id:str}/events": ("GET", "/v1/generations/{job}/events"),
    "/v1/generations/{job_id:str}/cancel": ("POST", "/v1/generations/{job}/cancel"),
    "/v1/assets/{asset_id:str}": ("GET", "/v1/assets/{asset}"),
    "/v1/credentials/{provider:str}": ("DELETE", "/v1/credentials/{provider}"),
    "/v1/credentials/{provider:str}/test": ("POST", "/v1/credentials/{provider}/test"),
    "/v1/admin/jobs/{job_id:str}": "admin scope: operators see every tenant (403 here)",
    "/v1/providers/{name:str}": None,  # providers are shared, not tenant-owned
    "/v1/providers/{name:str}/drain": "admin scope",
    "/v1/providers/{name:str}/undrain": "admin scope",
    "/v1/providers/{name:str}/breaker": "admin scope",
    "/v1/providers/{name:str}/test": "admin scope",
    "/v1/webhooks/{provider:str}": None,  # signed by providers, not tenants
    "/schema/{path:str}": None,
}


def test_every_route_with_an_id_is_covered(tmp_path: Path) -> None:
    """A new route that takes an id must be added to ID_ROUTES (and so to the probe below)."""
    from router.service import Service

    app = create_app(Service(tenant_config(tmp_path, [{"name": "oa"}])), manage_lifecycle=False)
    with_ids = {r.path for r in app.routes if "{" in r.path}
    assert with_ids <= set(ID_ROUTES), sorted(with_ids - set(ID_ROUTES))


async def test_tenant_b_gets_404_for_every_one_of_tenant_as_resources(tmp_path: Path) -> None:
    """Jobs, events, cancel, assets and credentials of A are 404 for B, and absent from lists."""
    config = tenant_config(tmp_path, [{"name": "oa"}])
    async with serve(config) as running:
        made = await running.generate()
        assert made.status_code == 200, made.text
        job = made.json()
        asset = job["outputs"][0]["url"].rsplit("/", 1)[-1]
        put = await running.client.put("/v1/credentials/oa", json={"api_key": "sk-a-own-key-123"})
        assert put.status_code == 200, put.text
        own = await running.client.get(f"/v1/assets/{asset}")
        assert own.status_code == 200
        assert "immutable" in own.headers["cache-control"]  # a route's own caching is kept
        ids = {"job": job["id"], "asset": asset, "provider": "oa"}
        b = as_tenant(KEY_B)
        probed = 0
        for spec in ID_ROUTES.values():
            if isinstance(spec, tuple):
                method, template = spec
                url = template.format(**ids)
                r = await running.client.request(method, url, headers=b)
                assert r.status_code == 404, (method, url, r.status_code, r.text)
                assert r.headers["content-type"].startswith("application/problem+json")
                assert r.headers["x-content-type-options"] == "nosniff"
                assert r.headers["cache-control"] == "no-store"
                assert "Traceback" not in r.text
                assert "/router/" not in r.text
                probed += 1
        assert probed == 6
        admin = await running.client.get(f"/v1/admin/jobs/{job['id']}", headers=b)
        assert admin.status_code == 403
        listed = await running.client.get("/v1/generations", headers=b)
        assert listed.json()["data"] == []
        creds = await running.client.get("/v1/credentials", headers=b)
        assert creds.json()["data"] == []
        usage_b = (await running.client.get("/v1/usage", headers=b)).json()
        usage_a = (await running.client.get("/v1/usage")).json()
        assert (usage_b["tenant"], usage_b["jobs"]) == ("team-b", 0)
        assert (usage_a["tenant"], usage_a["jobs"]) == ("team-a", 1)
        # A's job is untouched by B's cancel attempt, and A still sees all of it.
        still = await running.client.get(f"/v1/generations/{job['id']}")
        assert still.json()["status"] == "succeeded"
