"""Scale: memory with many jobs in flight, and throughput with one and two workers.

* **RSS with N jobs in flight.** Switchman in front of the Replicate emulator
  whose predictions run for an hour (``POST /_sandbox/job_faults
  {"run_s": 3600}``), so every accepted job stays in flight. N submissions
  without ``Prefer: wait`` (each answered ``202``) go in at a fixed rate; the
  worker's ``VmRSS`` is read from ``/proc/<pid>/status`` before and after, and
  ``switchman_jobs_inflight`` from ``/metrics`` confirms the count. Polling is
  set to two minutes so the measurement is of holding jobs, not of polling.
* **One and two workers.** ``switchman serve`` has no ``--workers`` flag, so
  *two workers* is two ``switchman serve`` processes on their own ports (each
  with its own SQLite file: SQLite is one writer per file; a real multi-replica
  deployment shares Postgres and Redis) behind nginx; *one worker* is one
  process behind the same nginx, so both sides pay the same proxy hop. Each
  side's saturation is stepped up like the overhead benchmark's.

The routing-decision timings for 10, 100 and 1,000 providers are
:mod:`tests.bench.rank_bench`'s.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import yaml

from tests.bench.loadgen import LoadResult, Target
from tests.bench.overhead import DEMO_KEY, run_loadgen, switchman_config
from tests.bench.peers import start_nginx
from tests.bench.procs import Processes, free_port, get_ok

__all__ = ["MemoryResult", "ScaleResults", "WorkersResult", "measure_memory", "measure_workers"]

_BIN: Final = Path(sys.executable).parent
_REPLICATE_KEY: Final = "r8_sandbox"


@dataclass(slots=True)
class MemoryResult:
    """Worker memory before and after ``jobs`` submissions that stay in flight."""

    jobs: int
    accepted: int = 0
    inflight: int = 0
    rss_idle_mib: float = 0.0
    rss_loaded_mib: float = 0.0
    hwm_mib: float = 0.0
    submit: LoadResult | None = None
    error: str | None = None

    @property
    def per_job_kib(self) -> float:
        return (
            (self.rss_loaded_mib - self.rss_idle_mib) * 1024 / self.inflight
            if self.inflight
            else 0.0
        )


@dataclass(slots=True)
class WorkersResult:
    """Saturation steps behind nginx for one worker count."""

    workers: int
    steps: list[LoadResult] = field(default_factory=list)
    error: str | None = None

    @staticmethod
    def passed(step: LoadResult) -> bool:
        return step.error_ratio < 0.01 and step.histogram.percentile_ms(99) <= 1000.0

    @property
    def sustained_rate(self) -> float | None:
        best = None
        for step in self.steps:
            if not self.passed(step):
                break
            best = step.rate
        return best


@dataclass(slots=True)
class ScaleResults:
    """Everything :mod:`tests.bench.scale` measured."""

    memory: MemoryResult | None = None
    workers: list[WorkersResult] = field(default_factory=list)


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _inflight(url: str) -> int:
    body = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for m in re.finditer(r"^switchman_jobs_inflight\{[^}]*\} ([0-9.e+]+)$", body, re.M):
        total += float(m.group(1))
    return int(total)


def measure_memory(jobs: int = 10_000, rate: float = 400.0) -> MemoryResult:
    """See the module docstring; every process is stopped before this returns."""
    result = MemoryResult(jobs)
    with Processes(prefix="switchman-scale-") as procs:
        emu_port = free_port()
        emu_cmd = [str(_BIN / "switchman"), "sandbox", "--provider", "replicate"]
        emu = procs.spawn("replicate", [*emu_cmd, "--port", str(emu_port)])
        emu_url = f"http://127.0.0.1:{emu_port}"
        Processes.wait_ready(get_ok(f"{emu_url}/_sandbox/faults"), proc=emu)
        httpx.post(
            f"{emu_url}/_sandbox/job_faults", json={"run_s": 3600.0, "queue_s": 0.0}
        ).raise_for_status()
        port = free_port()
        config: dict[str, Any] = switchman_config(port, emu_url, procs.tmp)
        config["providers"] = [
            {
                "name": "replicate",
                "adapter": "replicate",
                "base_url": emu_url,
                "api_key": _REPLICATE_KEY,
                "kinds": ["image"],
                "models": {"image": "black-forest-labs/flux-schnell"},
                "rate_limit": {"requests": 100000, "per_s": 1},
                "timeouts": {"job_s": 7200.0},
                "poll": {"interval_s": 120.0, "max_interval_s": 300.0, "stall_s": 7200.0},
            }
        ]
        path = procs.tmp / "scale.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        sw = procs.spawn(
            "switchman",
            [str(_BIN / "switchman"), "serve", "--config", str(path)],
            env={"SWITCHMAN_LOG_LEVEL": "WARNING"},
        )
        url = f"http://127.0.0.1:{port}"
        target = Target(
            url=f"{url}/v1/generations",
            headers={"authorization": f"Bearer {DEMO_KEY}"},
            body=b'{"kind": "image", "prompt": "a lighthouse"}',
        )
        try:
            Processes.wait_ready(get_ok(f"{url}/healthz"), proc=sw)
        except RuntimeError as exc:
            result.error = f"{exc}\n{procs.log_tail('switchman')}"
            return result
        run_loadgen(target, 50.0, 1.0, ok_statuses=(202,))  # warm up: 50 jobs
        time.sleep(1.0)
        result.rss_idle_mib = _status_kib(sw.pid, "VmRSS") / 1024
        warm = _inflight(url)
        result.submit = run_loadgen(target, rate, jobs / rate, timeout_s=30.0, ok_statuses=(202,))
        result.accepted = result.submit.ok
        time.sleep(2.0)  # let the last submissions reach the provider
        result.inflight = _inflight(url) - warm
        result.rss_loaded_mib = _status_kib(sw.pid, "VmRSS") / 1024
        result.hwm_mib = _status_kib(sw.pid, "VmHWM") / 1024
    return result


def measure_workers(
    rates: tuple[float, ...], *, step_s: float = 3.0, counts: tuple[int, ...] = (1, 2)
) -> list[WorkersResult]:
    """Saturation of one and of two ``switchman serve`` processes behind nginx."""
    return [_workers(n, rates, step_s) for n in counts]


def _workers(workers: int, rates: tuple[float, ...], step_s: float) -> WorkersResult:
    result = WorkersResult(workers)
    with Processes(prefix="switchman-workers-") as procs:
        emu_port = free_port()
        cmd = [str(_BIN / "switchman"), "sandbox", "--provider", "openai"]
        emu = procs.spawn("emulator", [*cmd, "--port", str(emu_port), "--faults", "none"])
        emu_url = f"http://127.0.0.1:{emu_port}"
        Processes.wait_ready(get_ok(f"{emu_url}/_sandbox/faults"), proc=emu)
        upstreams = []
        for i in range(workers):
            port = free_port()
            config = switchman_config(port, emu_url, procs.tmp, database=f"worker{i}.db")
            path = procs.tmp / f"worker{i}.yaml"
            path.write_text(yaml.safe_dump(config), encoding="utf-8")
            proc = procs.spawn(
                f"worker{i}",
                [str(_BIN / "switchman"), "serve", "--config", str(path)],
                env={"SWITCHMAN_LOG_LEVEL": "WARNING"},
            )
            Processes.wait_ready(get_ok(f"http://127.0.0.1:{port}/healthz"), proc=proc)
            upstreams.append(f"127.0.0.1:{port}")
        try:
            nginx_url, nginx = start_nginx(procs, upstreams)
            Processes.wait_ready(get_ok(f"{nginx_url}/healthz"), proc=nginx)
        except (FileNotFoundError, OSError, RuntimeError) as exc:
            result.error = str(exc)
            return result
        target = Target(
            url=f"{nginx_url}/v1/generations",
            headers={"authorization": f"Bearer {DEMO_KEY}", "prefer": "wait=10"},
            body=b'{"kind": "image", "prompt": "a lighthouse"}',
        )
        run_loadgen(target, 50.0, 1.0)  # warm connection pools
        for rate in rates:
            step = run_loadgen(target, rate, step_s, timeout_s=5.0)
            result.steps.append(step)
            if not result.passed(step):
                break
            time.sleep(1.0)
    return result
