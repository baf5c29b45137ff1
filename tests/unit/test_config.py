"""Configuration: every error names its field path; the CLI validates without starting."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.cli import DEFAULT_CONFIG, main
from router.config import load_config, parse_config
from router.errors import ConfigError


def _provider(**extra: object) -> dict[str, object]:
    return {"name": "p", "adapter": "openai", "base_url": "http://x", "kinds": ["image"], **extra}


def test_every_error_is_reported_with_its_path() -> None:
    """Several bad fields in several sections are all reported, each by path."""
    raw = {
        "routing": {"strategy": "fastest-ish"},
        "providers": [
            _provider(name="a"),
            _provider(name="b"),
            _provider(name="c", rate_limit={"per_s": 0}),
        ],
        "tenants": [{"id": "t", "api_keys": ["plain-text-key"]}],
        "typo": 1,
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    errors = info.value.errors
    assert "providers[2].rate_limit.per_s: expected `float` > 0.0" in errors
    assert any(e.startswith("routing.strategy:") for e in errors)
    assert any(e.startswith("tenants[0].api_keys[0]:") for e in errors)
    assert "typo: unknown field" in errors


def test_semantic_rules_name_fields() -> None:
    """Duplicate names and dangling sandbox references are errors with paths."""
    raw = {"providers": [_provider(), _provider(base_url="sandbox:nowhere")]}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert "providers[1].name: duplicate provider name 'p'" in info.value.errors
    assert any(e.startswith("providers[1].base_url:") for e in info.value.errors)


def test_env_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    """${VAR} is replaced, ${VAR:-default} falls back, an unset ${VAR} is an error."""
    monkeypatch.setenv("SW_TEST_KEY", "sk-from-env")
    config = parse_config({"providers": [_provider(api_key="${SW_TEST_KEY}")]})
    assert config.providers[0].api_key == "sk-from-env"
    config = parse_config({"providers": [_provider(api_key="${SW_UNSET_X:-fallback}")]})
    assert config.providers[0].api_key == "fallback"
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": [_provider(api_key="${SW_UNSET_Y}")]})
    assert info.value.errors == ["providers[0].api_key: environment variable SW_UNSET_Y is not set"]


def test_default_config_is_valid() -> None:
    """The config `make run` uses loads without secrets."""
    config = load_config(DEFAULT_CONFIG)
    assert len({p.adapter for p in config.providers}) >= 1
    assert config.sandbox is not None


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`switchman check-config` exits 0 on a good file and 2 naming the field on a bad one."""
    assert main(["check-config", str(DEFAULT_CONFIG)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "providers:\n  - {name: x, adapter: nope, base_url: 'http://x', kinds: [image]}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["check-config", str(bad)])
    assert exit_info.value.code == 2
    assert "providers[0].adapter" in capsys.readouterr().err


def test_check_config_reports_every_adapters_option_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What only an adapter can check (its ``options``) is reported by check-config too,
    for every provider at once, each naming its field."""
    bad = tmp_path / "options.yaml"
    bad.write_text(
        "providers:\n"
        "  - {name: veo-a, adapter: veo, base_url: 'http://veo.test', kinds: [video],\n"
        "     options: {api: vertex}}\n"
        "  - {name: veo-b, adapter: veo, base_url: 'http://veo.test', kinds: [video],\n"
        "     options: {api: vertex, project: p, service_account_file: /nonexistent.json}}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["check-config", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "providers.veo-a.options.project: required" in err
    assert "providers.veo-b.options.service_account_file: cannot read" in err
