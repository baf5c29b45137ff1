"""A real Prometheus scrapes a real Switchman through a provider outage.

Issue 5, acceptance 2: while one sandbox provider is hard down and traffic flows,
every query of every dashboard panel returns data through Prometheus's HTTP API, the
runbooks' PromQL runs, and ``SwitchmanProviderBreakerOpen`` is firing (in the
``ALERTS`` series); after the provider recovers the alert resolves.

The rules are the shipped ones, with every ``for:`` cut to two seconds so the test
runs in well under a minute; scrape and evaluation intervals are one second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.harness import Running, make_config, serve
from tests.ops_kit import (
    ALERTS_FILE,
    RECORDING_FILE,
    dashboard_queries,
    free_port,
    require_binary,
    runbook_promql,
    runbooks,
    substitute,
    wait_http_ok,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The `for:` every alert gets in the test copy of the rules.
FOR_IN_TEST = "2s"
BREAKER_ALERT = (
    'ALERTS{alertname="SwitchmanProviderBreakerOpen",alertstate="firing",provider="cheap"}'
)


def _write_rules(tmp_path: Path) -> list[Path]:
    """The shipped rules, with every alert's ``for`` shortened to :data:`FOR_IN_TEST`."""
    alerts = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    for group in alerts["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR_IN_TEST
    alerts_path = tmp_path / "alerts.yml"
    alerts_path.write_text(yaml.safe_dump(alerts, sort_keys=False))
    recording_path = tmp_path / "recording-rules.yml"
    recording_path.write_text(RECORDING_FILE.read_text(encoding="utf-8"))
    return [recording_path, alerts_path]


@contextlib.asynccontextmanager
async def _prometheus(tmp_path: Path, target: str) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``prometheus`` on loopback, scraping ``target`` as job "switchman"; yield its API."""
    binary = require_binary("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(p) for p in _write_rules(tmp_path)],
        "scrape_configs": [{"job_name": "switchman", "static_configs": [{"targets": [target]}]}],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_http_ok(f"{url}/-/ready", 30, proc)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield client
    except BaseException:
        print(log_path.read_text(errors="replace")[-4000:])
        raise
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _query(prom: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector; raises on a PromQL error."""
    response = await prom.get("/api/v1/query", params={"query": expr})
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def _until(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, step_s: float = 0.5
) -> None:
    """Poll ``check`` (Prometheus evaluates on its own clock) until true or fail."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while not await check():
        if loop.time() > give_up:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(step_s)


async def _traffic(running: Running, stop: asyncio.Event, sent: list[int]) -> None:
    """Two callers sending waited image generations, about 20 a second together."""

    async def caller() -> None:
        while not stop.is_set():
            await running.generate()
            sent[0] += 1
            await asyncio.sleep(0.1)

    await asyncio.gather(caller(), caller())


async def test_dashboards_and_breaker_alert_against_real_prometheus(tmp_path: Path) -> None:
    """Panels return data during an outage; the breaker alert fires, then resolves on recovery."""
    providers = [
        {"name": "cheap", "cost": {"per_image_usd": 0.01}, "faults": {}},
        {"name": "mid", "cost": {"per_image_usd": 0.02}, "faults": {}},
    ]
    for p in providers:
        p["breaker"] = {"fail_max": 3, "reset_timeout_s": 1}
        p["rate_limit"] = {"requests": 1000, "per_s": 1}
    config = make_config(tmp_path, providers, routing={"strategy": "cheapest"})
    async with serve(config) as running:
        target = running.url.removeprefix("http://")
        stop = asyncio.Event()
        sent = [0]
        traffic = asyncio.create_task(_traffic(running, stop, sent))
        try:
            async with _prometheus(tmp_path, target) as prom:

                async def scraped() -> bool:
                    up = await _query(prom, 'up{job="switchman"}')
                    return bool(up) and up[0]["value"][1] == "1"

                await _until(scraped, 20, "the first scrape")

                # Chaos: the cheapest provider goes hard down while traffic flows.
                running.emulator("cheap").faults.update(error_ratio=1.0)

                async def breaker_alert_firing() -> bool:
                    return bool(await _query(prom, BREAKER_ALERT))

                await _until(breaker_alert_firing, 30, "SwitchmanProviderBreakerOpen to fire")

                # Every dashboard query returns data (rate windows fill within seconds).
                queries = dashboard_queries()
                empty: list[str] = []

                async def all_panels_have_data() -> bool:
                    empty.clear()
                    for q in queries:
                        if not await _query(prom, substitute(q.expr, provider=".*")):
                            empty.append(str(q))
                    return not empty

                try:
                    await _until(all_panels_have_data, 25, "every panel query to return data", 1)
                except AssertionError:
                    pytest.fail("panel queries without data:\n" + "\n".join(empty))
                assert await breaker_alert_firing(), "alert stopped firing while still down"

                # The provider variable's values come from the exported label.
                values = await prom.get(
                    "/api/v1/label/provider/values",
                    params={"match[]": "switchman_provider_attempts_total"},
                )
                assert {"cheap", "mid"} <= set(values.json()["data"])

                # Every runbook query is valid PromQL over the live data.
                for name, path in runbooks().items():
                    for expr in runbook_promql(path):
                        concrete = expr.replace("<provider>", "cheap").replace("<kind>", "image")
                        try:
                            await _query(prom, concrete)
                        except AssertionError as exc:
                            pytest.fail(f"{name}: {exc}")

                # Recovery: the provider answers again, a probe closes the breaker.
                running.emulator("cheap").faults.update(error_ratio=0.0)

                async def breaker_alert_resolved() -> bool:
                    return not await _query(prom, BREAKER_ALERT)

                await _until(breaker_alert_resolved, 30, "SwitchmanProviderBreakerOpen to resolve")
                closed = await _query(prom, 'switchman_provider_breaker_state{provider="cheap"}')
                assert closed[0]["value"][1] == "0"
        finally:
            stop.set()
            await traffic
    assert sent[0] > 20, f"only {sent[0]} requests flowed during the scenario"
