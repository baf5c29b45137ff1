"""The bench report names the LiteLLM version it measured (it installs the newest)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tests.bench.peers import litellm_version
from tests.bench.report import BenchResults, Machine, _machine_section


def _site_packages(venv: Path) -> Path:
    site = venv / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    return site


def test_the_version_comes_from_litellms_own_dist_info(tmp_path: Path) -> None:
    site = _site_packages(tmp_path)
    # Its companions share the prefix; only `litellm-<version>` is LiteLLM itself.
    for name in ("litellm_enterprise-0.1.79", "litellm_proxy_extras-0.4.110", "litellm-1.108.7"):
        (site / f"{name}.dist-info").mkdir()
    assert litellm_version(tmp_path) == "1.108.7"


def test_no_install_reads_none(tmp_path: Path) -> None:
    assert litellm_version(tmp_path) is None
    (_site_packages(tmp_path) / "litellm_enterprise-0.1.79.dist-info").mkdir()
    assert litellm_version(tmp_path) is None


def _results(version: str | None) -> BenchResults:
    machine = Machine(
        cpus=2,
        cpu_model="test CPU",
        memory_gib=1.0,
        python="CPython 3.11",
        packages={},
        load_average=(0.0, 0.0, 0.0),
    )
    return BenchResults(
        machine=machine,
        started_at=datetime(2026, 12, 8, tzinfo=UTC),
        pinned=True,
        litellm_version=version,
    )


def test_the_report_says_which_litellm_it_measured() -> None:
    text = "\n".join(_machine_section(_results("1.108.7")))
    assert "`litellm[proxy]` 1.108.7 in `.bench/litellm-venv`" in text
    assert "(version unknown)" in "\n".join(_machine_section(_results(None)))
