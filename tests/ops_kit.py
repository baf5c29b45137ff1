"""Shared helpers for the on-call kit's tests: rules, dashboards, runbooks, binaries.

The dashboards, alert rules and runbooks under ``deploy/`` are tested against the
metrics a real Switchman exports and, where a binary is needed (``promtool``,
``prometheus``), against the real thing. This module reads those files and finds
those binaries so that each test states only what it checks.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "ALERTS_FILE",
    "CANARY_PROMPT",
    "DASHBOARD_DIR",
    "PROMETHEUS_DIR",
    "RECORDING_FILE",
    "ROOT",
    "RUNBOOK_BASE_URL",
    "RUNBOOK_DIR",
    "RUNBOOK_SECTIONS",
    "Exported",
    "Query",
    "Workload",
    "alert_rules",
    "code_blocks",
    "dashboard_queries",
    "dashboards",
    "free_port",
    "metric_names",
    "panels",
    "parse_exposition",
    "recording_rule_labels",
    "recording_rules",
    "require_binary",
    "run_workload",
    "runbook_commands",
    "runbook_promql",
    "runbooks",
    "substitute",
    "wait_http_ok",
]

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTS_FILE = PROMETHEUS_DIR / "alerts.yml"
RECORDING_FILE = PROMETHEUS_DIR / "recording-rules.yml"
DASHBOARD_DIR = DEPLOY / "grafana"
RUNBOOK_DIR = DEPLOY / "runbooks"
RUNBOOK_BASE_URL = "https://github.com/switchman/switchman/blob/main/deploy/runbooks/"
RUNBOOK_SECTIONS = ("Meaning", "Impact", "Diagnosis", "Mitigation", "Recovery check", "Escalation")

# PromQL words that look like metric names but are not: functions, aggregations,
# keywords. Anything else followed by `{`, `[`, or standing alone is a metric.
_PROMQL_WORDS = frozenset(
    """
    sum min max avg count stddev stdvar topk bottomk quantile count_values group
    by without on ignoring group_left group_right bool and or unless offset
    rate irate increase delta idelta deriv predict_linear histogram_quantile
    abs absent absent_over_time ceil floor round clamp clamp_min clamp_max exp ln log2 log10 sqrt
    scalar vector time timestamp label_replace label_join sort sort_desc changes resets
    avg_over_time min_over_time max_over_time sum_over_time count_over_time last_over_time
    quantile_over_time stddev_over_time present_over_time day_of_month day_of_week hour minute
    month year days_in_month sgn inf nan
    """.split()  # noqa: SIM905 - a word list reads better than 75 quoted strings
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACES = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:(])")


def require_binary(name: str) -> str:
    """The path of a system binary the test drives; skip without it, but fail under CI.

    ``make test`` installs ``prometheus`` (with ``promtool``) through ``make
    system-deps``, so in CI a missing binary is a broken build, not a reason to skip.
    """
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        message = f"{name} is not installed (make system-deps installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule in ``alerts.yml``."""
    groups = _yaml(ALERTS_FILE)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    """Every recording rule in ``recording-rules.yml``."""
    groups = _yaml(RECORDING_FILE)["groups"]
    return [rule for group in groups for rule in group["rules"] if "record" in rule]


def recording_rule_labels() -> dict[str, set[str]]:
    """Each recorded series name with the labels its outer ``by (...)`` keeps."""
    out: dict[str, set[str]] = {}
    for rule in recording_rules():
        m = re.search(r"\bby\s*\(([^)]*)\)", rule["expr"])
        labels = {s.strip() for s in m.group(1).split(",")} if m else set()
        out[rule["record"]] = labels
    return out


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON under ``deploy/grafana``, by file name."""
    return {
        p.name: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The dashboard's panels (rows excluded, panels inside collapsed rows included)."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


@dataclass(frozen=True, slots=True)
class Query:
    """One panel target's PromQL, with where it came from."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}: {self.expr}"


def dashboard_queries() -> list[Query]:
    """Every target's expression of every panel of every dashboard."""
    return [
        Query(name, panel["title"], target.get("refId", "?"), target["expr"])
        for name, dash in dashboards().items()
        for panel in panels(dash)
        for target in panel.get("targets", [])
    ]


def substitute(expr: str, *, provider: str = ".*", rate_interval: str = "1m") -> str:
    """What Grafana would send: dashboard variables replaced by values."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("${provider}", provider)
        .replace("$provider", provider)
    )


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (strings, label matchers and ranges removed)."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        word = m.group(1)
        if word.lower() in _PROMQL_WORDS or re.fullmatch(r"[0-9eE.+-]+", word):
            continue
        names.add(word)
    return names


def runbooks() -> dict[str, Path]:
    """Every runbook by alert name (``README.md`` excluded)."""
    return {p.stem: p for p in sorted(RUNBOOK_DIR.glob("*.md")) if p.name != "README.md"}


def code_blocks(text: str, lang: str) -> list[str]:
    """The bodies of the fenced code blocks of ``lang`` in a Markdown text."""
    return re.findall(rf"^```{re.escape(lang)}[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S)


def runbook_commands(path: Path) -> list[str]:
    """The shell commands of a runbook's ```sh blocks: one per line, comments dropped."""
    commands = []
    for block in code_blocks(path.read_text(encoding="utf-8"), "sh"):
        pending = ""
        for raw in block.splitlines():
            line = raw.rstrip()
            if pending:
                line = pending + " " + line.lstrip()
                pending = ""
            if line.endswith("\\"):
                pending = line[:-1].rstrip()
                continue
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


def runbook_promql(path: Path) -> list[str]:
    """The expressions of a runbook's ```promql blocks."""
    return [b.strip() for b in code_blocks(path.read_text(encoding="utf-8"), "promql")]


@dataclass(frozen=True, slots=True)
class Exported:
    """What one ``/metrics`` body exports: sample names and each sample's labels."""

    samples: dict[str, list[dict[str, str]]]

    @property
    def names(self) -> set[str]:
        return set(self.samples)

    def labels_of(self, name: str) -> set[str]:
        return {k for labels in self.samples.get(name, []) for k in labels}


def parse_exposition(text: str) -> Exported:
    """Parse a Prometheus text exposition into sample names and their label sets."""
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return Exported(samples)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_http_ok(url: str, timeout_s: float, process: asyncio.subprocess.Process) -> None:
    """Poll ``url`` until it answers 2xx; fail early if ``process`` exits."""
    import httpx

    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"{url}: process exited with {process.returncode}")
            try:
                if (await client.get(url)).is_success:
                    return
            except httpx.HTTPError:
                pass
            if loop.time() > give_up:
                raise TimeoutError(f"{url} not ready after {timeout_s} s")
            await asyncio.sleep(0.1)


@dataclass(frozen=True, slots=True)
class Workload:
    """The ``/metrics`` text after :func:`run_workload`, and what must never be a label."""

    metrics_text: str
    providers: tuple[str, ...]
    route_templates: frozenset[str]
    forbidden: frozenset[str]


#: A prompt no label may ever carry.
CANARY_PROMPT = "canary prompt 7f3a lighthouse"


async def run_workload(tmp_path: Path) -> Workload:
    """Drive a real Switchman through a varied workload and scrape its ``/metrics``.

    Several tenants, a provider hard down (failovers), a throttling provider (429s),
    invalid bodies, unknown routes and ids, an unknown HTTP method, then one scrape.
    """
    from tests.integration.harness import ADMIN_KEY, make_config, serve

    providers: list[dict[str, Any]] = [
        {"name": "cheap", "cost": {"per_image_usd": 0.01}, "faults": {"error_ratio": 1.0}},
        {"name": "mid", "cost": {"per_image_usd": 0.02}, "faults": {}},
        {
            "name": "dear",
            "cost": {"per_image_usd": 0.04},
            "faults": {"rate_limit_per_s": 1, "retry_after_s": 1},
        },
    ]
    for p in providers:
        p["breaker"] = {"fail_max": 2, "reset_timeout_s": 30}
        p["rate_limit"] = {"requests": 1000, "per_s": 1}
    config = make_config(tmp_path, providers, routing={"strategy": "cheapest"})
    job_ids: list[str] = []
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with serve(config) as running:
        client = running.client
        for _ in range(5):
            r = await running.generate({"kind": "image", "prompt": CANARY_PROMPT})
            job_ids.append(r.json()["id"])
        throttled = {
            "kind": "image",
            "prompt": CANARY_PROMPT,
            "routing": {"providers": ["dear"]},
        }
        for r in await asyncio.gather(*(running.generate(throttled, **admin) for _ in range(4))):
            if r.status_code in (200, 202):
                job_ids.append(r.json()["id"])
        await running.generate({"kind": "video", "prompt": CANARY_PROMPT, "duration_s": 5})
        await client.post("/v1/generations", json={"kind": "image"})
        await client.post("/v1/generations", content=b"{not json")
        await client.post(
            "/v1/generations",
            json={"kind": "image", "prompt": "x"},
            headers={"Authorization": "Bearer sk_wrong_key_canary"},
        )
        for job_id in job_ids[:3]:
            await client.get(f"/v1/generations/{job_id}")
            await client.get(f"/nope/{job_id}/abc")
        await client.get("/v1/generations/gen_NOPE_CANARY_404")
        await client.get("/v1/generations", params={"status": "running", "limit": 5})
        await client.get("/nope/123")
        await client.get("/v1/providers/cheap")
        await client.get("/v1/providers/unknown-canary-provider")
        await client.post(f"/v1/webhooks/evil-canary-provider?job={job_ids[0]}&attempt=1")
        await client.request("PURGE", "/v1/providers")
        await client.get("/healthz")
        await client.get("/readyz")
        schema = (await client.get("/schema/openapi.json")).json()
        text = (await client.get("/metrics")).text
    templates = frozenset(re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", p) for p in schema["paths"])
    forbidden: frozenset[str] = frozenset(
        {
            *job_ids,
            CANARY_PROMPT,
            "team-a",
            "ops",
            "gen_NOPE_CANARY_404",
            "unknown-canary-provider",
            "evil-canary-provider",
            "sk_wrong_key_canary",
            "/nope/123",
            "PURGE",
        }
    )
    return Workload(
        metrics_text=text,
        providers=tuple(p["name"] for p in providers),
        route_templates=templates,
        forbidden=forbidden,
    )
