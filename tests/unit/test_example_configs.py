"""Every shipped example config loads, builds its adapters, and keeps secrets in ``${ENV}``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.adapters.registry import adapter_class, build_adapter
from router.config import load_config
from router.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "deploy" / "config"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
#: Keys whose values are credentials or carry them (database URLs hold passwords).
_SECRET_KEY = re.compile(
    r"(api_key|secret|token|password|encryption_keys|database_url|redis_url)$", re.I
)


def _env_names(path: Path) -> set[str]:
    return {m.group(1) for m in _ENV_REF.finditer(path.read_text()) if m.group(2) is None}


def _secret_values(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """``(path, value)`` of every scalar under a secret-looking key."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if _SECRET_KEY.search(str(key)):
                found.extend(_leaves(value, sub))
            else:
                found.extend(_secret_values(value, sub))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_secret_values(value, f"{path}[{i}]"))
    return found


def _leaves(node: Any, path: str) -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in _leaves(v, f"{path}[{i}]")]
    return [(path, node)]


def test_the_example_configs_exist() -> None:
    """The veo, http and production examples are shipped."""
    names = {p.name for p in CONFIGS}
    assert {"veo.yaml", "http.yaml", "production.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_loads_and_builds(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With dummy env vars set, load_config accepts the file and every adapter builds."""
    for name in _env_names(path):
        dummy = "https://dummy.example" if name.endswith("_URL") else f"dummy-{name.lower()}"
        monkeypatch.setenv(name, dummy)
    config = load_config(path)
    assert config.providers, "an example with no providers shows nothing"
    for provider in config.providers:
        if adapter_class(provider.adapter) is not None:
            assert build_adapter(provider).config is provider


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_keeps_secrets_in_env(path: Path) -> None:
    """Every api_key/secret/token/key/database/redis value is a ``${…}`` reference."""
    raw = yaml.safe_load(path.read_text())
    leaks = [
        f"{where}: {value!r}"
        for where, value in _secret_values(raw)
        if value is not None and not (isinstance(value, str) and _ENV_REF.search(value))
    ]
    assert not leaks, "secrets written into the file:\n" + "\n".join(leaks)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_missing_env_is_reported(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without its env vars a config names each unset variable (nothing defaults silently)."""
    names = _env_names(path)
    for name in names:
        monkeypatch.delenv(name, raising=False)
    if not names:
        pytest.skip("no required env vars")
    with pytest.raises(ConfigError, match=sorted(names)[0]):
        load_config(path)


def test_production_uses_every_provider_kind_and_shared_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """production.yaml routes to all seven adapter kinds with PostgreSQL and Redis from env."""
    path = CONFIG_DIR / "production.yaml"
    for name in _env_names(path):
        monkeypatch.setenv(name, f"dummy-{name.lower()}")
    monkeypatch.setenv("SWITCHMAN_DATABASE_URL", "postgresql+asyncpg://u:p@db/sw")
    monkeypatch.setenv("SWITCHMAN_REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("INHOUSE_GEN_URL", "https://gen.svc.internal")
    config = load_config(path)
    adapters = {p.adapter for p in config.providers}
    assert adapters == {"openai", "replicate", "fal", "stability", "veo", "runway", "http"}
    assert config.storage.database_url.startswith("postgresql")
    assert config.storage.redis_url is not None
    for tenant in config.tenants:
        assert all(k.startswith("sha256:") for k in tenant.api_keys)
    for provider in config.providers:
        assert provider.cost.per_image_usd > 0 or provider.cost.per_video_s_usd > 0
