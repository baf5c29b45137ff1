"""Metric hygiene: every label of every exported metric takes values from a closed set.

Issue 5, acceptance 6. After a varied workload against a real Switchman (two
tenants, a provider hard down, a throttling provider, invalid bodies, a wrong key,
unknown routes, job ids in paths, an unknown provider in a webhook path, a
nonstandard HTTP method), each label value of each ``switchman_*`` series must come
from its closed set: provider names from config or ``other``, outcomes, kinds,
statuses, route templates. Never a tenant id, a prompt, a job id or a raw path.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from metrics.prometheus import (
    BREAKER_STATES,
    FAILOVER_REASONS,
    GENERATION_KINDS,
    JOB_STATUSES,
    OTHER,
    OUTCOMES,
    RATE_LIMIT_SOURCES,
)
from tests.ops_kit import Exported, Workload, parse_exposition, run_workload

pytestmark = [pytest.mark.integration]

_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", OTHER}
#: Per-metric label budget (Prometheus guidance: investigate anything near 100).
MAX_VALUES_PER_LABEL = 100


def _validators(workload: Workload) -> dict[str, Callable[[str], bool]]:
    """For each label name Switchman exports, what makes a value legitimate."""
    providers = {*workload.providers, OTHER}
    routes = {*workload.route_templates, "unmatched"}

    def route_ok(value: str) -> bool:
        # The OpenAPI document's own routes are not in the document.
        return value in routes or value in ("/schema", "/schema/openapi.json")

    return {
        "provider": providers.__contains__,
        "from_provider": providers.__contains__,
        "to_provider": providers.__contains__,
        "kind": set(GENERATION_KINDS).__contains__,
        "outcome": set(OUTCOMES).__contains__,
        "reason": set(FAILOVER_REASONS).__contains__,
        "source": set(RATE_LIMIT_SOURCES).__contains__,
        "to": set(BREAKER_STATES).__contains__,
        "method": _METHODS.__contains__,
        "route": route_ok,
        # jobs_total's status is a job status; http_requests_total's an HTTP code.
        "status": lambda v: v in JOB_STATUSES or re.fullmatch(r"[1-5][0-9]{2}", v) is not None,
        "le": lambda v: v == "+Inf" or re.fullmatch(r"[0-9.e+-]+", v) is not None,
        "version": lambda v: re.fullmatch(r"[0-9][0-9A-Za-z.+-]{0,40}", v) is not None,
        "component": lambda v: re.fullmatch(r"[a-z_]{1,20}", v) is not None,
    }


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    """One varied workload, shared by the checks below."""
    import asyncio

    return asyncio.run(run_workload(tmp_path_factory.mktemp("hygiene")))


@pytest.fixture(scope="module")
def exported(workload: Workload) -> Exported:
    return parse_exposition(workload.metrics_text)


def _switchman_samples(exported: Exported) -> dict[str, list[dict[str, str]]]:
    return {n: s for n, s in exported.samples.items() if n.startswith("switchman_")}


def test_the_workload_exercised_what_hygiene_is_about(exported: Exported) -> None:
    """The scrape shows failovers, failed jobs, 4xx/5xx answers and unmatched routes."""
    samples = _switchman_samples(exported)
    assert samples["switchman_failovers_total"], "no failover happened"
    http = samples["switchman_http_requests_total"]
    statuses = {labels["status"] for labels in http}
    assert {"200", "404"} <= statuses
    assert any(s.startswith("4") and s != "404" for s in statuses)
    assert "unmatched" in {labels["route"] for labels in http}
    assert OTHER in {labels["method"] for labels in http}


def test_every_label_value_comes_from_its_closed_set(
    workload: Workload, exported: Exported
) -> None:
    """Each label of each switchman_* sample is known and its value legitimate."""
    validators = _validators(workload)
    bad = []
    for name, samples in _switchman_samples(exported).items():
        for labels in samples:
            for label, value in labels.items():
                check = validators.get(label)
                if check is None:
                    bad.append(f"{name}: unexpected label {label!r}")
                elif not check(value):
                    bad.append(f"{name}: {label}={value!r}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_no_label_value_carries_caller_data(workload: Workload, exported: Exported) -> None:
    """No tenant id, prompt, job id, raw path, unknown provider or key appears in any label."""
    leaks = []
    for name, samples in _switchman_samples(exported).items():
        for labels in samples:
            for label, value in labels.items():
                for secret in workload.forbidden:
                    if secret == value or (len(secret) > 8 and secret in value):
                        leaks.append(f"{name}: {label}={value!r}")
    assert not leaks, "\n".join(sorted(set(leaks)))
    assert "gen_" not in workload.metrics_text.replace("# HELP", "")
    assert "canary" not in workload.metrics_text.lower()


def test_every_label_stays_within_its_cardinality_budget(exported: Exported) -> None:
    """No label of any metric takes more than 100 distinct values."""
    for name, samples in _switchman_samples(exported).items():
        values: dict[str, set[str]] = {}
        for labels in samples:
            for label, value in labels.items():
                values.setdefault(label, set()).add(value)
        for label, seen in values.items():
            assert len(seen) < MAX_VALUES_PER_LABEL, f"{name}.{label}: {len(seen)} values"


def test_a_hostile_provider_name_never_mints_a_series() -> None:
    """The metrics layer maps a provider it was not told about to ``other``."""
    from metrics.prometheus import Metrics

    metrics = Metrics()
    metrics.declare_providers(["fal"])
    metrics.observe_attempt("gen_01HOSTILE", "image", "success", 0.1)
    metrics.failover("fal", "tenant-42", "made-up-reason")
    text = metrics.render()[0].decode()
    assert "gen_01HOSTILE" not in text
    assert "tenant-42" not in text
    assert "made-up-reason" not in text
    assert 'to_provider="other"' in text
