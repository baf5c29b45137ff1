"""``make bench``: run every benchmark and write ``docs/BENCHMARKS.md``.

Order: the ``rank()`` micro-benchmark (in process, no servers); then with a
:class:`~tests.bench.peers.PeerStack` up (emulator, Switchman, nginx, LiteLLM):
the load generator's client cost, added latency of every side at 50 and
200 req/s with 0 ms and at 200 req/s with 20 ms upstream service time, each
side's saturation, and (if ``py-spy`` is installed and allowed to attach) a
short profile of the Switchman worker; then the chaos scenarios
(:mod:`tests.bench.chaos`) and the scale runs (:mod:`tests.bench.scale`).
Every step is bounded in time; the whole run takes about 16 minutes (plus
about one to install LiteLLM the first time) and always stops the processes
it started, also when a step fails: a failed section is reported with its
error and the others still run. ``--quick`` shortens every run for a smoke
test (about 5 minutes).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Final

from tests.bench.chaos import run_chaos
from tests.bench.overhead import Stack, measure_overhead, measure_saturation
from tests.bench.peers import PeerStack
from tests.bench.rank_bench import run_all
from tests.bench.report import BenchResults, Machine, Profile, utc_now, write_report
from tests.bench.scale import ScaleResults, measure_memory, measure_workers

__all__ = ["main", "profile_worker", "summarise_profile"]

_ROOT: Final = Path(__file__).resolve().parents[2]
#: Open-model steps; finer where the proxies' knees fall, so ratios are not 2× steps.
SATURATION_RATES: Final = (
    25.0,
    50.0,
    100.0,
    150.0,
    200.0,
    300.0,
    400.0,
    500.0,
    600.0,
    800.0,
    1000.0,
    1500.0,
    2000.0,
    3000.0,
)
#: ``(upstream service time s, rate req/s)`` of the interleaved added-latency runs.
OVERHEAD_POINTS: Final = ((0.0, 50.0), (0.0, 200.0), (0.02, 200.0))
#: Sides measured for added latency only (their saturation would lengthen the run past
#: its 20-minute bound and decide nothing).
LATENCY_ONLY: Final = frozenset({"passthrough"})
WORKER_RATES: Final = (100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 800.0, 1000.0)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def profile_worker(stack: Stack, rate: float, seconds: float, top: int = 15) -> Profile | None:
    """Sample the Switchman worker with py-spy under load; see :func:`summarise_profile`.

    Returns ``None`` when py-spy is missing or may not attach (no ptrace rights).
    """
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if stack.switchman_pid is None or not Path(spy).exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.txt"
        cmd = [spy, "record", "--pid", str(stack.switchman_pid), "--duration", str(int(seconds))]
        cmd += ["--format", "raw", "--output", str(out), "--rate", "250", "--nonblocking"]
        load = threading.Thread(target=stack.load, args=("switchman", rate, seconds), daemon=True)
        spy_proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        try:
            time.sleep(0.5)  # let py-spy attach before the load starts
            load.start()
            spy_proc.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy_proc.kill()
            spy_proc.wait()
        finally:
            load.join(timeout=seconds + 30)
        if spy_proc.returncode != 0 or not out.exists():
            why = spy_proc.stderr.read().decode()[-300:] if spy_proc.stderr else ""
            _log(f"py-spy failed: {why}")
            return None
        return summarise_profile(out.read_text(encoding="utf-8", errors="replace"), top)


_PROJECT: Final = frozenset({"router", "strategies", "breakers", "metrics"})
#: Leaves where the worker is not running Python: uvloop/httptools C code
#: (socket I/O, parsing, polling) under the event loop, or an idle pool thread.
_NATIVE_LEAVES: Final = {
    "Runner.run": "(event loop in C: uvloop I/O, httptools parsing, or idle)",
    "_worker": "(thread-pool worker waiting for work)",
}


def _frame(raw: str) -> tuple[str, str]:
    """``"func (pkg/mod.py:12)"`` → ``("func (pkg/mod.py)", "pkg")``."""
    name, _, where = raw.partition(" (")
    path = where.rsplit(":", 1)[0]
    package = path.split("/", 1)[0].removesuffix(".py") if "/" in path else path
    return (f"{name} ({path})" if path else name), package


def summarise_profile(collapsed: str, top: int = 15) -> Profile:
    """Own time per function, own time per package, and inclusive time per project function.

    ``collapsed`` is py-spy's raw format: one ``frame;frame;… count`` per line.
    """
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        leaf, package = frames[-1]
        label = _NATIVE_LEAVES.get(leaf.split(" (")[0])
        own[label or leaf] += n
        packages[label or package] += n
        # The CLI frames are on every stack; they say nothing.
        for name in {n for n, pkg in frames if pkg in _PROJECT and "router/cli.py" not in n}:
            inclusive[name] += n
    total = total or 1
    return Profile(
        samples=total,
        own=[(k, v / total) for k, v in own.most_common(top)],
        packages=[(k, v / total) for k, v in packages.most_common(top)],
        inclusive=[(k, v / total) for k, v in inclusive.most_common(top)],
    )


def _section(results: BenchResults, name: str, run: Callable[[], None]) -> None:
    """Run one section; if it fails, keep its traceback for the report and go on."""
    try:
        run()
    except Exception:
        text = traceback.format_exc()
        _log(f"{name} failed:\n{text}")
        results.section_errors[name] = text


def _peers(
    results: BenchResults, args: argparse.Namespace, run_s: float, runs: int, step_s: float
) -> None:
    with PeerStack(pin=not args.no_pin, litellm=not args.no_litellm) as stack:
        results.pinned = stack.pinned
        results.switchman_error = stack.switchman_error
        results.side_errors = {k: v for k, v in stack.errors.items() if k != "switchman"}
        results.litellm_install_s = stack.litellm_install_s
        results.litellm_version = stack.litellm_version
        _log(f"sides: {', '.join(stack.sides())}; not measured: {sorted(stack.errors) or '-'}")
        _log("load-generator client cost")
        for client in ("aiohttp", "httpx"):
            results.clients[client] = stack.load("direct", 500.0, run_s / 2 + 1, client=client)
        for latency, rate in OVERHEAD_POINTS:
            _log(f"added latency at {rate:g} req/s, service {latency * 1000:g} ms")
            stack.set_emulator_latency(latency)
            results.overhead.append(measure_overhead(stack, rate, runs=runs, run_s=run_s))
        stack.set_emulator_latency(0.0)
        for side in stack.sides():
            if side in LATENCY_ONLY:
                continue
            _log(f"saturation, {side}")
            results.saturation.append(
                measure_saturation(stack, side, SATURATION_RATES, step_s=step_s)
            )
        if "switchman" in stack.sides() and not args.no_profile:
            _log("profiling the Switchman worker")
            results.profile = profile_worker(stack, 200.0, 3.0 if args.quick else 6.0)


def _chaos(results: BenchResults, quick: bool) -> None:
    _log("chaos scenarios")
    results.chaos = run_chaos(quick=quick, log=_log)


def _scale(results: BenchResults, quick: bool) -> None:
    results.scale = ScaleResults()
    jobs = 1000 if quick else 10_000
    _log(f"scale: RSS with {jobs} jobs in flight")
    results.scale.memory = measure_memory(jobs, rate=200.0 if quick else 400.0)
    _log("scale: throughput with 1 and 2 workers")
    results.scale.workers = measure_workers(WORKER_RATES, step_s=1.5 if quick else 3.0)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and write the report; returns 0 even if Switchman did not start."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--docs", type=Path, default=_ROOT / "docs")
    args = parser.parse_args(argv)
    quick: bool = args.quick
    run_s, runs, step_s = (1.0, 2, 1.5) if quick else (3.0, 3, 3.0)

    results = BenchResults(machine=Machine.describe(), started_at=utc_now(), pinned=False)
    results.quick = quick
    results.argv = list(argv if argv is not None else sys.argv[1:])
    _log("rank() micro-benchmark")
    results.rank = run_all({10: 2000, 100: 400, 1000: 40} if quick else None)
    _section(results, "overhead and peers", lambda: _peers(results, args, run_s, runs, step_s))
    _section(results, "chaos", lambda: _chaos(results, quick))
    _section(results, "scale", lambda: _scale(results, quick))
    results.finished_at = utc_now()
    path = write_report(results, args.docs)
    _log(f"wrote {path.relative_to(_ROOT) if path.is_relative_to(_ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
