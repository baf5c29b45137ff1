"""deploy/: Kubernetes manifests against the Kubernetes schemas, and lint checks of the
Dockerfile and the compose file (no Docker engine or cluster needed)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from router.config import Config, parse_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
#: The Kubernetes version the manifests target (kubernetes-validate ships its schemas).
K8S_VERSION = "1.30.0"
PRODUCTION_CONFIG = "/etc/switchman/config.yaml"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / name).read_text(encoding="utf-8"))
    return doc


def kustomized() -> list[str]:
    return list(load("kustomization.yaml")["resources"])


def sync_module() -> Any:
    spec = importlib.util.spec_from_file_location("sync_generated", K8S / "sync_generated.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_with_env(text: str, monkeypatch: pytest.MonkeyPatch) -> Config:
    """Parse a config whose ``${VARS}`` are set to placeholders."""
    for name, default in _ENV_REF.findall(text):
        if not default:
            monkeypatch.setenv(name, "http://placeholder.invalid" if "URL" in name else "x")
    raw = yaml.safe_load(text)
    return parse_config(raw)


# -- Kubernetes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [n for n in kustomized() if n not in ("servicemonitor.yaml", "prometheusrule.yaml")]
)
def test_manifest_validates_against_the_kubernetes_schema(name: str) -> None:
    """Every built-in resource passes kubernetes-validate in strict mode (offline schemas)."""
    kubernetes_validate.validate(load(name), K8S_VERSION, strict=True)


def test_the_secret_example_validates_but_is_not_applied() -> None:
    """The example Secret is a valid Secret and kustomize never applies it."""
    kubernetes_validate.validate(load("secret.example.yaml"), K8S_VERSION, strict=True)
    assert "secret.example.yaml" not in kustomized()


def test_schema_validation_catches_a_broken_manifest() -> None:
    """The validator is really checking: a wrong type in a Deployment fails."""
    broken = load("deployment.yaml")
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def container() -> dict[str, Any]:
    spec = load("deployment.yaml")["spec"]["template"]["spec"]
    (only,) = spec["containers"]
    c: dict[str, Any] = only
    return c


def test_deployment_runs_three_probed_non_root_replicas() -> None:
    """3 replicas; readiness /readyz, liveness /healthz; non-root, no privilege escalation."""
    deployment = load("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    c = container()
    assert deployment["spec"]["replicas"] == 3
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_termination_grace_covers_prestop_and_the_drain_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """terminationGracePeriodSeconds ≥ preStop sleep + server.shutdown_grace_s + margin."""
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    config = parse_with_env(load("configmap.yaml")["data"]["config.yaml"], monkeypatch)
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + config.server.shutdown_grace_s
    assert needed + 2 <= pod["terminationGracePeriodSeconds"] <= needed + 30


def test_configmap_is_production_config_with_the_replica_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ConfigMap is deploy/config/production.yaml plus replicas_hint = replicas, and parses."""
    sync = sync_module()
    replicas = load("deployment.yaml")["spec"]["replicas"]
    assert (K8S / "configmap.yaml").read_text(encoding="utf-8") == sync.configmap(replicas), (
        "configmap.yaml drifted: run python deploy/k8s/sync_generated.py"
    )
    config = parse_with_env(load("configmap.yaml")["data"]["config.yaml"], monkeypatch)
    assert config.storage.replicas_hint == replicas
    assert config.storage.redis_url
    assert config.server.host == "0.0.0.0"
    port = container()["ports"][0]["containerPort"]
    assert config.server.port == port


def test_every_config_variable_comes_from_the_deployment() -> None:
    """Each ${VAR} the config needs is set in the pod; secrets by secretKeyRef to known keys."""
    text = load("configmap.yaml")["data"]["config.yaml"]
    needed = {name for name, default in _ENV_REF.findall(text) if not default}
    env = {e["name"]: e for e in container()["env"]}
    assert needed <= env.keys(), needed - env.keys()
    secret_keys = set(load("secret.example.yaml")["stringData"])
    for entry in env.values():
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert ref["name"] == "switchman-secrets"
            assert ref["key"] in secret_keys


def test_service_hpa_pdb_and_servicemonitor_point_at_the_deployment() -> None:
    """Selectors, scale target and the scraped port name all agree with the Deployment."""
    labels = load("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    service = load("service.yaml")
    assert service["metadata"]["name"] == "switchman"  # the Prometheus job label
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == container()["ports"][0]["name"]
    hpa = load("hpa.yaml")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "switchman"
    assert hpa["minReplicas"] == load("deployment.yaml")["spec"]["replicas"]
    assert load("pdb.yaml")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert load("networkpolicy.yaml")["spec"]["podSelector"]["matchLabels"].items() <= (
        labels.items()
    )
    monitor = load("servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"


def test_prometheusrule_embeds_the_tested_rule_files() -> None:
    """The PrometheusRule holds exactly the groups of recording-rules.yml and alerts.yml."""
    rule = load("prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == sync_module().rule_groups(), (
        "prometheusrule.yaml drifted: run python deploy/k8s/sync_generated.py"
    )
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names))
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r)
            assert r["expr"]
            if "alert" in r:
                assert r["labels"]["severity"] in {"page", "ticket"}


# -- Dockerfile ----------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    lines: list[tuple[str, str]] = []
    buffer = ""
    for raw in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        full = buffer + stripped
        buffer = ""
        instruction, _, args = full.partition(" ")
        lines.append((instruction.upper(), args.strip()))
    return lines


def make_run_command() -> list[str]:
    """What ``make run CONFIG=/etc/switchman/config.yaml`` executes, venv path dropped."""
    if shutil.which("make"):
        out = subprocess.run(
            ["make", "-n", "-C", str(ROOT), "run", f"CONFIG={PRODUCTION_CONFIG}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        line = next(ln for ln in out.splitlines() if "switchman serve" in ln)
    else:  # pragma: no cover - make is part of the toolchain
        recipe = (ROOT / "Makefile").read_text(encoding="utf-8").split("\nrun:", 1)[1]
        line = recipe.splitlines()[1].replace(
            "$(if $(CONFIG),--config $(CONFIG),)", f"--config {PRODUCTION_CONFIG}"
        )
    argv = shlex.split(line.strip())
    argv[0] = Path(argv[0].replace("$(BIN)", "")).name
    return argv


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    """Two named stages on python:3.11-slim; the runtime copies the build's venv, runs non-root."""
    instructions = dockerfile()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in instructions if i == "ARG"}
    froms = [
        a.replace("${PYTHON_IMAGE}", args["PYTHON_IMAGE"]) for i, a in instructions if i == "FROM"
    ]
    assert len(froms) >= 2
    assert all(f.startswith("python:3.11-slim AS ") for f in froms)
    final_stage = froms[-1].split(" AS ")[1]
    final = instructions[
        max(n for n, (i, a) in enumerate(instructions) if i == "FROM" and final_stage in a) :
    ]
    assert any(i == "COPY" and a.startswith("--from=build") for i, a in final)
    users = [a for i, a in final if i == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert not any(i == "RUN" and ("pip install" in a) for i, a in final)


def test_dockerfile_healthcheck_probes_healthz() -> None:
    """The runtime image has a HEALTHCHECK on /healthz at the configured port."""
    checks = [a for i, a in dockerfile() if i == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "CMD" in checks[0]
    assert "http://127.0.0.1:8080/healthz" in checks[0]


def test_container_starts_with_the_make_run_production_command() -> None:
    """The image's CMD (and the Deployment's command) is what `make run` runs for production."""
    cmds = [a for i, a in dockerfile() if i == "CMD"]
    assert len(cmds) == 1
    cmd = yaml.safe_load(cmds[0])  # exec form is a JSON array
    assert cmd == make_run_command() == ["switchman", "serve", "--config", PRODUCTION_CONFIG]
    assert container()["command"] == cmd
    mounts = {m["mountPath"] for m in container()["volumeMounts"]}
    assert str(Path(PRODUCTION_CONFIG).parent) in mounts


def test_dockerignore_admits_what_the_dockerfile_copies() -> None:
    """Every path the build COPYs from the context is let through the ignore file."""
    allowed = {
        ln[1:].rstrip("/")
        for ln in (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
        if ln.startswith("!")
    }
    for instruction, args in dockerfile():
        if instruction == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert source.rstrip("/") in allowed, source
                assert (ROOT / source).exists(), source


# -- docker compose ------------------------------------------------------------------


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(
        (DEPLOY / "docker-compose.yaml").read_text(encoding="utf-8")
    )
    return doc


def test_compose_has_the_whole_stack_with_healthchecks() -> None:
    """Two Switchman replicas, Redis, PostgreSQL, Prometheus, Grafana: each with an image
    and a healthcheck; every depends_on names a service."""
    services = compose()["services"]
    assert set(services) == {
        "switchman-1",
        "switchman-2",
        "redis",
        "postgres",
        "prometheus",
        "grafana",
    }
    for name, svc in services.items():
        assert svc.get("image"), name
        assert svc["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, (name, dep)
            assert cond["condition"] in {"service_started", "service_healthy"}
    for name in ("switchman-1", "switchman-2"):
        svc = services[name]
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
    published = [p for svc in services.values() for p in svc.get("ports", [])]
    assert len(published) == len(set(published))


def test_compose_mounts_exist_and_grafana_gets_the_dashboards() -> None:
    """Every bind-mounted file exists; Grafana provisions deploy/grafana's dashboards."""
    services = compose()["services"]
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
    grafana_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    dashboards = DEPLOY / grafana_mounts["/var/lib/grafana/dashboards"]
    assert list(dashboards.glob("*.json"))
    provider = yaml.safe_load((DEPLOY / "compose/grafana/dashboards.yaml").read_text("utf-8"))
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_compose_switchman_config_shares_redis_and_postgres(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The compose config parses, uses Redis and PostgreSQL from the compose network, and
    its replicas_hint matches the number of Switchman services."""
    services = compose()["services"]
    env = services["switchman-1"]["environment"]
    assert "@postgres:5432/" in env["SWITCHMAN_DATABASE_URL"]
    assert env["SWITCHMAN_REDIS_URL"].startswith("redis://redis:6379")
    config = parse_with_env((DEPLOY / "compose/switchman.yaml").read_text("utf-8"), monkeypatch)
    assert config.storage.redis_url
    replicas = sum(1 for n in services if n.startswith("switchman-"))
    assert config.storage.replicas_hint == replicas
    prometheus = yaml.safe_load((DEPLOY / "compose/prometheus.yml").read_text("utf-8"))
    (job,) = prometheus["scrape_configs"]
    assert job["job_name"] == "switchman"
    assert sorted(job["static_configs"][0]["targets"]) == [
        f"switchman-{i}:8080" for i in range(1, replicas + 1)
    ]
