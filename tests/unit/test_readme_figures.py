"""Every figure the README's Benchmarks section quotes is in the latest docs/BENCHMARKS.md.

``make bench`` rewrites the report; the README is edited by hand, so a figure left over
from an earlier run would otherwise go unnoticed (issue #6, acceptance 4).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _numbers(text: str) -> set[str]:
    return {m.group().replace(",", "") for m in _NUMBER.finditer(text)}


def _benchmarks_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Benchmarks")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else len(readme)]


def _missing(section: str) -> list[str]:
    report = _numbers((ROOT / "docs" / "BENCHMARKS.md").read_text(encoding="utf-8"))
    return sorted(_numbers(section) - report, key=float)


def test_every_number_in_the_readme_benchmarks_section_is_in_the_report() -> None:
    section = _benchmarks_section()
    assert "| | Switchman |" in section  # the section and its table were found
    missing = _missing(section)
    assert not missing, f"README quotes figures the latest report does not hold: {missing}"


def test_a_figure_the_report_does_not_hold_is_caught() -> None:
    section = _benchmarks_section()
    first = re.search(r"\+(\d+\.\d+) ms", section)
    assert first is not None
    stale = section.replace(first.group(1), first.group(1) + "17", 1)
    assert _missing(stale) == [first.group(1) + "17"]
    assert _numbers("+3.26 / +10.62 ms, 4,062 req/s") == {"3.26", "10.62", "4062"}
