"""Turn benchmark results into ``docs/BENCHMARKS.md`` and its plots in ``docs/bench/``.

Everything in the report is measured by the run that writes it; nothing is
copied in by hand, so the file is always a faithful record of one
``make bench`` on one machine.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from tests.bench.chaos import ChaosResults
from tests.bench.loadgen import LoadResult
from tests.bench.overhead import OverheadResult, SaturationResult
from tests.bench.rank_bench import RankTiming
from tests.bench.report_extra import (
    chaos_section,
    chaos_summary,
    commands_section,
    errors_section,
    peers_section,
    peers_summary,
    scale_section,
)
from tests.bench.scale import ScaleResults

__all__ = ["BenchResults", "Machine", "write_report"]

_PACKAGES: Final = ("litestar", "uvicorn", "uvloop", "httptools", "httpx", "aiohttp", "msgspec")
#: Targets from the brief, so the report says plainly whether they were met.
RANK_TARGET_US: Final = 50.0
ADDED_P50_TARGET_MS: Final = 1.0
ADDED_P99_TARGET_MS: Final = 5.0
TARGET_RATE: Final = 200.0
SIDE_COLORS: Final = {
    "direct": "tab:blue",
    "switchman": "tab:orange",
    "nginx": "tab:green",
    "passthrough": "tab:purple",
    "litellm": "tab:red",
}


@dataclass(frozen=True, slots=True)
class Machine:
    """Where the numbers came from."""

    cpus: int
    cpu_model: str
    memory_gib: float
    python: str
    packages: dict[str, str]
    load_average: tuple[float, float, float]

    @classmethod
    def describe(cls) -> Machine:
        model = "unknown"
        memory_kib = 0
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    memory_kib = int(line.split()[1])
        except OSError:
            pass
        packages = {}
        for name in _PACKAGES:
            try:
                packages[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                packages[name] = "not installed"
        return cls(
            cpus=os.cpu_count() or 1,
            cpu_model=model,
            memory_gib=memory_kib / 2**20,
            python=f"{platform.python_implementation()} {platform.python_version()}",
            packages=packages,
            load_average=os.getloadavg(),
        )


@dataclass(frozen=True, slots=True)
class Profile:
    """A py-spy profile of the Switchman worker, as shares of all samples."""

    samples: int
    #: Functions by own time (the leaf frame), C-level time labelled in brackets.
    own: list[tuple[str, float]]
    #: Own time summed by top-level package (``sqlalchemy``, ``litestar``, …).
    packages: list[tuple[str, float]]
    #: Switchman's own functions by inclusive time (anywhere on the stack).
    inclusive: list[tuple[str, float]]


@dataclass(slots=True)
class BenchResults:
    """Everything one ``make bench`` measured."""

    machine: Machine
    started_at: datetime
    pinned: bool
    rank: list[RankTiming] = field(default_factory=list)
    #: Load-generator client → its result against the emulator (client CPU cost).
    clients: dict[str, LoadResult] = field(default_factory=dict)
    overhead: list[OverheadResult] = field(default_factory=list)
    saturation: list[SaturationResult] = field(default_factory=list)
    switchman_error: str | None = None
    #: Where the Switchman worker spends its time (py-spy), if profiled.
    profile: Profile | None = None
    finished_at: datetime | None = None
    #: Side (``nginx``, ``litellm``, …) → why it could not be measured.
    side_errors: dict[str, str] = field(default_factory=dict)
    #: Seconds spent installing LiteLLM into its throwaway virtualenv (0: already there).
    litellm_install_s: float = 0.0
    #: The LiteLLM version measured (the newest at install time; ``None``: not installed).
    litellm_version: str | None = None
    chaos: ChaosResults | None = None
    scale: ScaleResults | None = None
    #: Section → the exception that stopped it (the rest of the run went on).
    section_errors: dict[str, str] = field(default_factory=dict)
    quick: bool = False
    argv: list[str] = field(default_factory=list)


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _pcts(r: LoadResult) -> str:
    h = r.histogram
    return " | ".join(_ms(h.percentile_ms(q)) for q in (50, 90, 99, 99.9, 100))


def _errors(r: LoadResult) -> str:
    if not r.errors:
        return "0"
    kinds = ", ".join(f"{k}×{v}" for k, v in sorted(r.error_kinds.items()))
    return f"{r.errors} ({r.error_ratio:.1%}: {kinds})"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _plot_saturation(results: Sequence[SaturationResult], path: Path) -> bool:
    if not results:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for sat in results:
        color = SIDE_COLORS.get(sat.side, "tab:gray")
        rates = [s.rate for s in sat.steps]
        for q, style in ((50.0, "--"), (99.0, "-")):
            values = [max(s.histogram.percentile_ms(q), 0.01) for s in sat.steps]
            ax.plot(rates, values, style, marker="o", color=color, label=f"{sat.side} p{q:g}")
    ax.axhline(results[0].p99_bound_ms, color="grey", linewidth=0.8, linestyle=":")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (req/s, open model)")
    ax.set_ylabel("latency from intended send (ms)")
    ax.set_xscale("log")
    ax.set_title("Latency vs offered rate, per side (one worker each)")
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _plot_cdf(result: OverheadResult, path: Path) -> bool:
    if not result.by_side:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for side, r in result.by_side.items():
        if not r.histogram.total:
            continue
        points = list(r.histogram.cdf())
        # Plot the tail: x = latency, y = 1/(1-F) on a log scale (HdrHistogram style).
        xs = [p[0] for p in points if p[1] < 1.0]
        ys = [1.0 / (1.0 - p[1]) for p in points if p[1] < 1.0]
        ax.plot(ys, xs, label=side, color=SIDE_COLORS.get(side))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([2, 10, 100, 1000])
    ax.set_xticklabels(["p50", "p90", "p99", "p99.9"])
    ax.set_ylabel("latency from intended send (ms)")
    ax.set_title(
        f"Latency by percentile at {result.rate:g} req/s, "
        f"upstream service time {result.latency_s * 1000:g} ms"
    )
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _machine_section(r: BenchResults) -> list[str]:
    m = r.machine
    pkgs = ", ".join(f"{k} {v}" for k, v in m.packages.items())
    load = ", ".join(f"{x:.2f}" for x in m.load_average)
    placement = (
        "The proxy under test (Switchman, the pass-through, nginx or LiteLLM) pinned to CPU 0; "
        "the emulator and the load generator share CPU 1 (`taskset`). Chaos and scale runs are "
        "not pinned."
        if r.pinned
        else "No CPU pinning: the server, the emulator and the load generator share every core."
    )
    took = (r.finished_at - r.started_at).total_seconds() if r.finished_at else 0.0
    return [
        "## Machine and run",
        "",
        f"- Date: {r.started_at:%Y-%m-%d %H:%M} UTC (the whole run took {took:.0f} s)",
        f"- CPU: {m.cpus} × {m.cpu_model}; memory {m.memory_gib:.1f} GiB",
        f"- Load average at start: {load}",
        f"- {m.python}; {pkgs}",
        "- Switchman: `switchman serve` (uvicorn + uvloop + httptools, one worker, log level "
        "WARNING), SQLite in a temp dir, one `openai` provider pointing at the emulator, "
        "`storage.assets.enabled: false` (provider URLs passed through, as the peers do).",
        "- Pass-through: `python -m tests.bench.passthrough`, Switchman's own stack (the same "
        "uvicorn options, litestar, the shared httpx client on the aiohttp transport) with one "
        "route that forwards the request and returns the upstream's bytes: no auth, routing, "
        "job record or telemetry. Its added latency is the floor under Switchman's on this "
        "machine; it is measured for latency only, not saturation.",
        "- nginx (Debian package): `daemon off; master_process on; worker_processes 1;`, "
        "no access log, upstream keep-alive 256.",
        f"- LiteLLM proxy: `litellm[proxy]` {r.litellm_version or '(version unknown)'} in "
        "`.bench/litellm-venv`, one worker, no database, "
        "`LITELLM_TELEMETRY=False`, `LITELLM_LOCAL_MODEL_COST_MAP=True`, two deployments of "
        "the emulator as `openai/dall-e-3`.",
        "- Emulator: `switchman sandbox --provider openai --faults none`, service time 0 ms "
        "or 20 ms.",
        "- Load generator: `tests/bench/loadgen.py` in its own process, raw aiohttp client, "
        "open model.",
        f"- Placement: {placement} Everything runs on loopback on the same "
        f"{m.cpus}-core machine, so the three processes compete for CPU: absolute numbers "
        "are lower than on a dedicated host, and the *direct* column is the floor this "
        "machine can measure, not the emulator's own speed.",
        "",
    ]


_HOW_TO_READ: Final = [
    "## How to read this",
    "",
    "- **Open model.** Requests are sent on a fixed schedule whatever happens to "
    "earlier ones, like independent callers. Latency is measured from each request's "
    "*intended* send time, so when the server falls behind, the queueing shows in the "
    "numbers instead of quietly lowering the load (no coordinated omission). Timers "
    "have about 1 ms granularity, which adds up to ~1 ms to both sides alike; the "
    "*added* rows subtract it out.",
    "- **Direct vs Switchman.** *Direct* is the load generator talking to the emulator; "
    "*Switchman* is the same request through the service (auth, validation, routing, "
    "job record in SQLite, one upstream call, the response). The difference is what "
    "Switchman costs a caller. Runs alternate ABBA so drift of a shared machine hits "
    "both sides alike; percentiles are from the merged histograms.",
    "- **Percentiles** come from a log-linear histogram (exact below 0.128 ms, within "
    "1/64 above) and report a bucket's upper bound, so they err high by at most 1.6 %.",
    "- **Saturation** is the highest offered rate with < 1 % errors and p99 under the "
    "bound; one step past it is shown so the knee is visible. Errors include timeouts "
    "(5 s) and any status other than 200 (a `202` from Switchman means the job did not "
    "finish within `Prefer: wait`).",
    "- Short runs on a shared 2-core machine are noisy: expect ±20 % between runs, "
    "more at p99.9 and max. Re-run `make bench` before drawing fine conclusions.",
    "",
]


def write_report(results: BenchResults, docs: Path) -> Path:
    """Write ``BENCHMARKS.md`` and the PNGs under ``docs``; return the Markdown path."""
    plots = docs / "bench"
    plots.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m tests.bench.run`); do not edit by hand. "
        "Benchmarks are not part of `make test`.",
        "",
    ]
    lines += _machine_section(results)
    if results.switchman_error:
        lines += [
            "> **Switchman did not start, so only direct numbers were measured:**",
            "",
            "```",
            results.switchman_error,
            "```",
            "",
        ]
    lines += errors_section(results.side_errors, results.section_errors)
    lines += _summary(results)
    lines += peers_section(results.overhead, results.saturation, TARGET_RATE)
    lines += _overhead_section(results, plots)
    lines += _saturation_section(results, plots)
    lines += chaos_section(results.chaos, plots)
    lines += ["## Scale", ""]
    lines += _rank_section(results.rank)
    lines += scale_section(results.scale, plots)
    lines += _clients_section(results.clients)
    lines += _profile_section(results.profile)
    lines += commands_section(results.quick, results.argv, results.litellm_install_s)
    lines += _HOW_TO_READ
    path = docs / "BENCHMARKS.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _share_table(title: str, rows: Sequence[tuple[str, float]]) -> list[str]:
    lines = [f"| share | {title} |", "| ---: | --- |"]
    lines += [f"| {share:.1%} | `{name}` |" for name, share in rows]
    return [*lines, ""]


def _profile_section(profile: Profile | None) -> list[str]:
    if profile is None:
        return []
    return [
        "## Where the Switchman worker spends its time",
        "",
        f"py-spy sampling the worker (all threads) at 250 Hz during a {TARGET_RATE:g} req/s "
        f"run, {profile.samples} samples. py-spy itself slows the worker, so this is "
        "for proportions only. Brackets mark time outside Python code.",
        "",
        "Own time by package:",
        "",
        *_share_table("package", profile.packages),
        "Own time by function:",
        "",
        *_share_table("function", profile.own),
        "Switchman's functions, inclusive time (the function or anything it calls):",
        "",
        *_share_table("function", profile.inclusive),
    ]


def _summary(r: BenchResults) -> list[str]:
    rows = ["## Summary", "", "| what | target | measured | verdict |", "| --- | --- | --- | --- |"]
    ten = next((t for t in r.rank if t.providers == 10), None)
    if ten:
        rows.append(
            f"| `rank()` median, 10 providers | ≤ {RANK_TARGET_US:g} µs | "
            f"{ten.median_us:.1f} µs (p99 {ten.p99_us:.1f}) | "
            f"{_verdict(ten.median_us <= RANK_TARGET_US)} |"
        )
    at = next((o for o in r.overhead if o.rate == TARGET_RATE), None)
    if at is not None:
        p50, p99 = at.added_ms(50), at.added_ms(99)
        if p50 is not None and p99 is not None:
            rows.append(
                f"| added latency p50 at {TARGET_RATE:g} req/s | ≤ {ADDED_P50_TARGET_MS:g} ms | "
                f"{p50:.2f} ms | {_verdict(p50 <= ADDED_P50_TARGET_MS)} |"
            )
            rows.append(
                f"| added latency p99 at {TARGET_RATE:g} req/s | ≤ {ADDED_P99_TARGET_MS:g} ms | "
                f"{p99:.2f} ms | {_verdict(p99 <= ADDED_P99_TARGET_MS)} |"
            )
    for sat in r.saturation:
        best = sat.sustained_rate
        if best is None:
            text = "below the first step"
        elif all(sat.passed(step) for step in sat.steps):
            text = f"≥ {best:g} req/s (every step passed)"
        else:
            text = f"{best:g} req/s"
        rows.append(f"| saturation of one worker, {sat.side} | — | {text} | — |")
    rows += peers_summary(r.overhead, r.saturation, TARGET_RATE)
    rows += chaos_summary(r.chaos)
    return [*rows, ""]


def _rank_section(timings: Sequence[RankTiming]) -> list[str]:
    if not timings:
        return []
    lines = [
        "### Routing decision time: `ProviderStrategy.rank()` at 10, 100, 1,000 providers",
        "",
        "One call per timing, realistic snapshot (mixed kinds, prices, latency "
        "estimates, load; a few open/half-open/drained providers; a deadline), GC on. "
        "Runs before any server starts, but other work on the host still competes: on a "
        "quiet machine the 10-provider median was 26 µs, and it doubles when the other "
        "core is busy. The calls are split into rounds with the sizes interleaved; "
        "*median* is the median of the rounds' medians (listed), so one noisy round "
        "cannot decide it; p99 and min are over every call.",
        "",
        "| providers | candidates | calls | median (µs) | p99 (µs) | min (µs) "
        "| round medians (µs) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += [
        f"| {t.providers} | {t.candidates} | {t.calls} | {t.median_us:.1f} | "
        f"{t.p99_us:.1f} | {t.min_us:.1f} | "
        f"{', '.join(f'{m:.1f}' for m in t.round_medians_us) or '-'} |"
        for t in timings
    ]
    return [*lines, ""]


def _overhead_section(r: BenchResults, plots: Path) -> list[str]:
    if not r.overhead:
        return []
    lines = [
        "## Added latency: direct, Switchman, pass-through, nginx, LiteLLM",
        "",
        "Milliseconds, from intended send time. Each side: "
        f"{r.overhead[0].runs} interleaved runs × {r.overhead[0].run_s:g} s after a 1 s "
        "warm-up (order A B C D D C B A …). *Service* is the emulator's own service time "
        '(`POST /_sandbox/faults {"latency_s": …}`). *+side* rows are that side minus '
        "direct at the same percentile.",
        "",
        "| service (ms) | rate (req/s) | side | requests | errors | p50 | p90 | p99 | p99.9 "
        "| max |",
        "| ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in r.overhead:
        svc = f"{o.latency_s * 1000:g}"
        for side, res in o.by_side.items():
            lines.append(
                f"| {svc} | {o.rate:g} | {side} | {res.sent} | {_errors(res)} | {_pcts(res)} |"
            )
        for side in o.by_side:
            if side == "direct":
                continue
            added = [o.added_ms(q, side) or 0.0 for q in (50, 90, 99, 99.9, 100)]
            lines.append(
                f"| {svc} | {o.rate:g} | **+{side}** | | | "
                + " | ".join(f"{a:+.2f}" for a in added)
                + " |"
            )
    lines.append("")
    for o in r.overhead:
        if o.rate != TARGET_RATE:
            continue
        name = f"latency-cdf-{o.rate:g}rps-{o.latency_s * 1000:g}ms.png"
        if _plot_cdf(o, plots / name):
            lines += [
                f"![latency by percentile at {o.rate:g} req/s, service {o.latency_s * 1000:g} ms]"
                f"(bench/{name})",
                "",
            ]
    return lines


def _saturation_section(r: BenchResults, plots: Path) -> list[str]:
    if not r.saturation:
        return []
    bound = r.saturation[0].p99_bound_ms
    lines = [
        "## Saturation of one worker",
        "",
        f"Open-model steps of {r.saturation[0].steps[0].duration_s:g} s, rising until a step "
        f"has ≥ 1 % errors or p99 > {bound:g} ms. *Achieved* is successful responses per "
        "second of the step. *Client send lag* is how late the load generator itself sent "
        "its most delayed request: when it reaches tens of ms the client, not the server, "
        "is the bottleneck, and the step measures the test rig.",
        "",
        "| side | offered (req/s) | achieved (req/s) | errors | p50 (ms) | p99 (ms) | max (ms) "
        "| client send lag (ms) | passed |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for sat in r.saturation:
        for step in sat.steps:
            h = step.histogram
            achieved = step.ok / step.duration_s if step.duration_s else 0.0
            lines.append(
                f"| {sat.side} | {step.rate:g} | {achieved:.0f} | {_errors(step)} | "
                f"{_ms(h.percentile_ms(50))} | {_ms(h.percentile_ms(99))} | "
                f"{_ms(h.percentile_ms(100))} | {step.max_send_lag_ms:.1f} | "
                f"{'yes' if sat.passed(step) else 'no'} |"
            )
    lines.append("")
    if _plot_saturation(r.saturation, plots / "latency-vs-rate.png"):
        lines += ["![latency vs offered rate](bench/latency-vs-rate.png)", ""]
    return lines


def _clients_section(clients: dict[str, LoadResult]) -> list[str]:
    if not clients:
        return []
    lines = [
        "## Load-generator client",
        "",
        "The load generator's own cost, direct to the emulator; the lighter client is the "
        "one used above, since on two cores every µs it spends is taken from the servers.",
        "",
        "| client | rate (req/s) | CPU per request (µs) | p50 (ms) | p99 (ms) "
        "| max send lag (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, res in clients.items():
        h = res.histogram
        lines.append(
            f"| {name} | {res.rate:g} | {res.client_cpu_us_per_req:.0f} | "
            f"{_ms(h.percentile_ms(50))} | {_ms(h.percentile_ms(99))} | "
            f"{res.max_send_lag_ms:.1f} |"
        )
    return [*lines, ""]


def utc_now() -> datetime:
    """The current time in UTC (the report's timestamps)."""
    return datetime.now(UTC)
