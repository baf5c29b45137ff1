"""Dashboard lint: the rules of grafana/dashboard-linter, plus "every metric is real".

Issue 5, acceptance 3. Checks stable uids, the ``datasource`` and ``provider``
variables, units, ``$__rate_interval``, descriptions and valid PromQL on every panel;
and that every metric a panel, an alert rule or a runbook query names is one a real
Switchman exports, taken from the ``/metrics`` of a live service after a workload
(histogram ``_bucket``/``_sum``/``_count`` series and recording rules included).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops_kit import (
    Exported,
    alert_rules,
    dashboard_queries,
    dashboards,
    metric_names,
    panels,
    parse_exposition,
    recording_rule_labels,
    recording_rules,
    require_binary,
    run_workload,
    runbook_promql,
    runbooks,
    substitute,
)

DASHBOARDS = dashboards()
EXPECTED_UIDS = {
    "switchman-overview.json": "switchman-overview",
    "switchman-provider.json": "switchman-provider",
}
ALL_PANELS = [(name, panel) for name, dash in DASHBOARDS.items() for panel in panels(dash)]
PANEL_IDS = [f"{name}:{panel['title']}" for name, panel in ALL_PANELS]
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
PROVIDER_LABELS = ("provider", "from_provider", "to_provider")
#: Grafana unit ids (a subset: the ones a Switchman panel could sensibly use) and
#: Grafana's custom-unit prefixes.
UNITS = {"s", "ms", "reqps", "ops", "percentunit", "percent", "short", "none", "currencyUSD"}
UNIT_PREFIXES = ("suffix:", "prefix:")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """What a live Switchman exports after a workload with failovers, 429s and errors."""
    workload = asyncio.run(run_workload(tmp_path_factory.mktemp("lint")))
    return parse_exposition(workload.metrics_text)


def _known_names(exported: Exported) -> set[str]:
    return exported.names | {rule["record"] for rule in recording_rules()}


def test_dashboards_have_stable_unique_uids() -> None:
    """Each dashboard keeps its fixed uid (links and provisioning depend on it)."""
    assert {name: dash["uid"] for name, dash in DASHBOARDS.items()} == EXPECTED_UIDS
    for dash in DASHBOARDS.values():
        assert 8 <= len(dash["uid"]) <= 40
        assert re.fullmatch(r"[a-z0-9-]+", dash["uid"])


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_has_the_json_model_basics(name: str) -> None:
    """Title, tags, schemaVersion, time, refresh, annotations, unique panel ids, grid positions."""
    dash = DASHBOARDS[name]
    assert dash["title"].startswith("Switchman / ")
    assert "switchman" in dash["tags"]
    assert dash["schemaVersion"] >= 36
    assert dash["time"]["from"]
    assert dash["refresh"]
    assert "list" in dash["annotations"]
    ids = [p["id"] for p in dash["panels"]] + [
        p["id"] for row in dash["panels"] for p in row.get("panels", [])
    ]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_has_datasource_and_provider_variables(name: str) -> None:
    """A Prometheus ``datasource`` variable and a ``provider`` variable from the exported label."""
    variables = {v["name"]: v for v in DASHBOARDS[name]["templating"]["list"]}
    ds = variables["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    provider = variables["provider"]
    assert provider["type"] == "query"
    assert provider["datasource"] == DS_REF
    assert provider["definition"] == "label_values(switchman_provider_attempts_total, provider)"
    if provider.get("includeAll"):
        assert provider["allValue"] == ".*"


@pytest.mark.parametrize(("name", "panel"), ALL_PANELS, ids=PANEL_IDS)
def test_panel_uses_the_datasource_variable(name: str, panel: dict[str, Any]) -> None:
    """The panel and each of its targets query ``${datasource}``, never a fixed data source."""
    assert panel["datasource"] == DS_REF
    assert panel["targets"], "panel without queries"
    for target in panel["targets"]:
        assert target["datasource"] == DS_REF
        assert target["expr"].strip()


@pytest.mark.parametrize(("name", "panel"), ALL_PANELS, ids=PANEL_IDS)
def test_panel_has_a_unit_and_a_description(name: str, panel: dict[str, Any]) -> None:
    """A unit a reader can trust, and a description that says what a bad value means."""
    unit = panel["fieldConfig"]["defaults"].get("unit", "")
    assert unit in UNITS or unit.startswith(UNIT_PREFIXES), f"unit {unit!r}"
    if unit == "none":  # only where value mappings give the numbers their meaning
        assert panel["fieldConfig"]["defaults"].get("mappings"), "unit none without mappings"
    description = panel.get("description", "")
    assert len(description) >= 80, "description too short to guide an on-call engineer"


@pytest.mark.parametrize(("name", "panel"), ALL_PANELS, ids=PANEL_IDS)
def test_panel_ranges_use_rate_interval(name: str, panel: dict[str, Any]) -> None:
    """Every range selector in a panel query is ``[$__rate_interval]``; no fixed windows."""
    for target in panel["targets"]:
        ranges = re.findall(r"\[([^\]]*)\]", target["expr"])
        assert all(r == "$__rate_interval" for r in ranges), target["expr"]
        if re.search(r"\b(rate|irate|increase)\(", target["expr"]):
            assert ranges


def test_overview_covers_what_on_call_needs() -> None:
    """Golden signals per route, SLO, providers, failovers, breaker timeline, limits, cost, jobs."""
    overview = DASHBOARDS["switchman-overview.json"]
    found: dict[str, set[str]] = {}
    for panel in panels(overview):
        for target in panel["targets"]:
            for metric in metric_names(target["expr"]):
                found.setdefault(metric, set()).add(panel["type"])
    assert "state-timeline" in found["switchman_provider_breaker_state"]
    for metric in (
        "switchman_http_requests_total",
        "switchman_http_request_duration_seconds_bucket",
        "switchman:slo_error_ratio:rate1h",
        "switchman:slo_error_ratio:rate3d",
        "switchman_provider_attempts_total",
        "switchman_failovers_total",
        "switchman_provider_rate_limit_available",
        "switchman_provider_rate_limited_total",
        "switchman_cost_usd_total",
        "switchman_jobs_inflight",
        "switchman_jobs_oldest_nonfinal_age_seconds",
    ):
        assert metric in found, f"overview lacks {metric}"
    exprs = " ".join(q.expr for q in dashboard_queries() if q.dashboard.endswith("overview.json"))
    assert "by (route" in exprs
    assert "by (reason)" in exprs
    assert "by (provider, kind)" in exprs


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """Each query, with Grafana's variables substituted, parses (``promtool check rules``)."""
    rules = [
        {"record": f"lint:query_{i}", "expr": substitute(q.expr)}
        for i, q in enumerate(dashboard_queries())
    ]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "lint", "rules": rules}]}))
    result = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_a_panel_names_is_exported(exported: Exported) -> None:
    """Panels name only series a real Switchman exports, or recording rules."""
    known = _known_names(exported)
    unknown = {
        str(q): sorted(metric_names(q.expr) - known)
        for q in dashboard_queries()
        if metric_names(q.expr) - known
    }
    assert not unknown, unknown


def test_every_metric_a_rule_names_is_exported(exported: Exported) -> None:
    """Alert and recording rules name only exported series, recording rules, or ``up``."""
    known = _known_names(exported) | {"up"}
    for rule in alert_rules() + recording_rules():
        missing = metric_names(rule["expr"]) - known
        assert not missing, f"{rule.get('alert') or rule.get('record')}: {sorted(missing)}"


def test_every_metric_a_runbook_query_names_is_exported(exported: Exported) -> None:
    """Runbook PromQL names only exported series, recording rules, or ``up``."""
    known = _known_names(exported) | {"up"}
    for name, path in runbooks().items():
        for expr in runbook_promql(path):
            missing = metric_names(expr) - known
            assert not missing, f"{name}: {expr}: {sorted(missing)}"


def _selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matchers) for each selector in ``expr``; matchers empty when absent."""
    return re.findall(r"([a-zA-Z_:][\w:]*)\s*(\{[^}]*\}|)", expr)


@pytest.mark.parametrize(("name", "panel"), ALL_PANELS, ids=PANEL_IDS)
def test_panel_filters_every_provider_series_by_the_provider_variable(
    name: str, panel: dict[str, Any], exported: Exported
) -> None:
    """Every selector of a series that has a provider label filters it with ``$provider``.

    Service-level series (SLO ratios, HTTP routes, jobs) have no provider label and
    are the only ones a panel may show unfiltered.
    """
    recorded = recording_rule_labels()
    provider_series = 0
    for target in panel["targets"]:
        expr = target["expr"]
        for metric in metric_names(expr):
            labels = recorded.get(metric) or exported.labels_of(metric)
            carried = [label for label in PROVIDER_LABELS if label in labels]
            if not carried:
                continue
            provider_series += 1
            for selector, matchers in _selectors(expr):
                if selector != metric:
                    continue
                assert any(f'{label}=~"$provider"' in matchers for label in carried), (
                    f"{metric}{matchers or ''} is not filtered by $provider"
                )
    if name == "switchman-provider.json":
        assert provider_series, "the provider drill-down shows a panel not about the provider"
