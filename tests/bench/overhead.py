"""What Switchman adds on the HTTP path: added latency and one worker's saturation point.

A :class:`Stack` runs, each in a process group of its own, the OpenAI sandbox
emulator (``switchman sandbox``) and Switchman (``switchman serve``) with a
one-provider config pointing at it. Load comes from
:mod:`tests.bench.loadgen`, also a subprocess, so neither server shares an
event loop with the client. On a machine with two or more cores Switchman is
pinned to CPU 0 and the emulator and load generator share CPU 1 (``taskset``),
so the worker under test has a core to itself and runs are comparable.

* :func:`measure_overhead` interleaves short runs *direct to the emulator*,
  *through Switchman* and through any peer the stack has (A B C D D C B A …
  order, so slow drift of the machine hits every side alike) at a fixed
  arrival rate and merges each side's histograms.
* :func:`measure_saturation` steps the open-model rate up until a step fails
  (≥ 1 % errors or p99 over the bound) and reports the highest rate sustained.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import httpx
import yaml

from tests.bench.loadgen import Client, LoadResult, Target
from tests.bench.procs import ROOT, Processes, free_port, pin

__all__ = [
    "DEMO_KEY",
    "EMULATOR_BODY",
    "OverheadResult",
    "SaturationResult",
    "Stack",
    "measure_overhead",
    "measure_saturation",
    "merge_results",
    "run_loadgen",
    "switchman_config",
]


DEMO_KEY: Final = "sk_sw_demo_local_only"
_DEMO_KEY_HASH: Final = "sha256:2b19d40adb1c88687ecb539946ce171cab4f895c9dcc6b39cd9253989ba619fd"
EMULATOR_BODY: Final = {
    "model": "dall-e-3",
    "prompt": "a lighthouse",
    "n": 1,
    "size": "1024x1024",
    "response_format": "url",
}
_SWITCHMAN_BODY: Final = {"kind": "image", "prompt": "a lighthouse"}
_BIN: Final = Path(sys.executable).parent


class Stack:
    """The emulator and Switchman, started on loopback and always cleaned up on exit.

    Each *side* is one way of reaching the emulator (``direct``, ``switchman``;
    :class:`~tests.bench.peers.PeerStack` adds ``nginx`` and ``litellm``) with
    the request it is sent. If a side does not become ready, the others still
    run and :attr:`errors` says why, so direct measurements always happen.
    """

    def __init__(self, *, pin: bool = True, ready_timeout_s: float = 30.0) -> None:
        two_cores = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
        self.pinned = pin and two_cores
        self.server_cpus = "0" if self.pinned else None
        self.loader_cpus = "1" if self.pinned else None
        self.ready_timeout_s = ready_timeout_s
        #: Side → why it could not be measured.
        self.errors: dict[str, str] = {}
        self.procs = Processes()
        self._tmp = self.procs.tmp
        self.targets: dict[str, Target] = {}
        self.emulator_url = ""
        self.switchman_url = ""
        self.switchman_pid: int | None = None
        #: The emulator's service time now, seconds (see :meth:`set_emulator_latency`).
        self.latency_s = 0.0

    @property
    def switchman_error(self) -> str | None:
        """Why Switchman did not start, if it did not."""
        return self.errors.get("switchman")

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process started here, newest first, and remove the temp dir."""
        self.procs.close()

    def _start(self) -> None:
        port = free_port()
        cmd = [str(_BIN / "switchman"), "sandbox", "--provider", "openai", "--port", str(port)]
        self.procs.spawn("emulator", [*cmd, "--faults", "none"], cpus=self.loader_cpus)
        self.emulator_url = f"http://127.0.0.1:{port}"
        self.targets["direct"] = Target(
            url=f"{self.emulator_url}/v1/images/generations",
            headers={"authorization": "Bearer sk-sandbox"},
            body=json.dumps(EMULATOR_BODY).encode(),
        )
        self._wait_ready(lambda c: self.post(c, "direct").status_code == 200)
        self.set_emulator_latency(0.0)
        self._start_switchman()

    def _start_switchman(self) -> None:
        sw_port = free_port()
        path = self._tmp / "bench.yaml"
        config = switchman_config(sw_port, self.emulator_url, self._tmp)
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        proc = self.procs.spawn(
            "switchman",
            [str(_BIN / "switchman"), "serve", "--config", str(path)],
            cpus=self.server_cpus,
            env={"SWITCHMAN_LOG_LEVEL": "WARNING"},
        )
        self.switchman_pid = proc.pid
        self.switchman_url = f"http://127.0.0.1:{sw_port}"
        self.start_side(
            "switchman",
            Target(
                url=f"{self.switchman_url}/v1/generations",
                headers={"authorization": f"Bearer {DEMO_KEY}", "prefer": "wait=10"},
                body=json.dumps(_SWITCHMAN_BODY).encode(),
            ),
            proc,
        )

    def start_side(
        self, side: str, target: Target, proc: subprocess.Popen[bytes], timeout_s: float = 0.0
    ) -> bool:
        """Wait for ``side`` to answer its request; on failure record why and stop ``proc``."""
        self.targets[side] = target
        try:
            self._wait_ready(
                lambda c: self.post(c, side).status_code == 200,
                proc=proc,
                timeout_s=timeout_s or self.ready_timeout_s,
            )
        except RuntimeError as exc:
            self.errors[side] = f"{exc}\n{self.procs.log_tail(side)}".strip()
            del self.targets[side]
            self.procs.discard(proc)
            return False
        return True

    def _wait_ready(
        self,
        ok: Callable[[httpx.Client], bool],
        proc: subprocess.Popen[bytes] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        Processes.wait_ready(ok, proc=proc, timeout_s=timeout_s or self.ready_timeout_s)

    # -- requests ----------------------------------------------------------

    def request(self, side: str) -> Target:
        """The request the benchmark sends to ``side``."""
        return self.targets[side]

    def post(self, client: httpx.Client, side: str) -> httpx.Response:
        """Send one benchmark request to ``side`` synchronously (probes, readiness)."""
        target = self.request(side)
        headers = {"content-type": "application/json", **target.headers}
        return client.post(target.url, content=target.body, headers=headers)

    def set_emulator_latency(self, seconds: float) -> None:
        """Set the emulator's service time (its fault injection's added latency)."""
        resp = httpx.post(f"{self.emulator_url}/_sandbox/faults", json={"latency_s": seconds})
        resp.raise_for_status()
        self.latency_s = seconds

    def load(
        self,
        side: str,
        rate: float,
        duration_s: float,
        timeout_s: float = 10.0,
        client: Client = "aiohttp",
    ) -> LoadResult:
        """Run :mod:`tests.bench.loadgen` in a subprocess against ``side``; parse its result."""
        return run_loadgen(
            self.request(side), rate, duration_s, timeout_s, client, cpus=self.loader_cpus
        )

    def settle(self, side: str, fast_s: float = 0.2, limit_s: float = 20.0) -> None:
        """Wait until one request to ``side`` answers quickly again (its backlog is gone)."""
        deadline = time.monotonic() + limit_s
        fast_s += self.latency_s
        with httpx.Client(timeout=10.0) as client:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    resp = self.post(client, side)
                    if resp.status_code == 200 and time.perf_counter() - start < fast_s:
                        return
                time.sleep(0.25)

    def sides(self) -> tuple[str, ...]:
        """The sides that can be measured, in a fixed order (``direct`` first)."""
        return tuple(self.targets)


def run_loadgen(
    target: Target,
    rate: float,
    duration_s: float,
    timeout_s: float = 10.0,
    client: Client = "aiohttp",
    *,
    cpus: str | None = None,
    ok_statuses: Sequence[int] = (),
) -> LoadResult:
    """Run :mod:`tests.bench.loadgen` in a subprocess against ``target``; parse its result."""
    cmd = [
        *pin(cpus),
        sys.executable,
        "-m",
        "tests.bench.loadgen",
        "--url",
        target.url,
        "--rate",
        str(rate),
        "--duration",
        str(duration_s),
        "--timeout",
        str(timeout_s),
        "--client",
        client,
        "--body",
        target.body.decode(),
        *(arg for k, v in target.headers.items() for arg in ("--header", f"{k}: {v}")),
        *(arg for s in ok_statuses for arg in ("--ok-status", str(s))),
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        timeout=duration_s + timeout_s + 30,
        check=False,
        start_new_session=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.decode()[-2000:]}")
    return LoadResult.from_json(json.loads(done.stdout))


def switchman_config(
    port: int, emulator_url: str, tmp: Path, *, database: str = "switchman.db"
) -> dict[str, Any]:
    """A one-provider Switchman config in front of the OpenAI emulator at ``emulator_url``.

    Assets are off (provider URLs passed through, as nginx and LiteLLM do), so
    every side does the same work: one upstream call per request.
    """
    return {
        "server": {"host": "127.0.0.1", "port": port, "ui_enabled": False},
        "storage": {
            "database_url": f"sqlite+aiosqlite:///{tmp / database}",
            "assets": {"enabled": False, "path": str(tmp / "assets")},
        },
        "tenants": [{"id": "demo", "api_keys": [_DEMO_KEY_HASH], "scopes": ["generate", "read"]}],
        "providers": [
            {
                "name": "emulator",
                "adapter": "openai",
                "base_url": emulator_url,
                "api_key": "sk-sandbox",
                "kinds": ["image"],
                "models": {"image": "dall-e-3"},
                "rate_limit": {"requests": 100000, "per_s": 1},
            }
        ],
    }


def merge_results(results: Sequence[LoadResult]) -> LoadResult:
    """One result adding up several runs at the same rate."""
    total = LoadResult(rate=results[0].rate, duration_s=0.0)
    for r in results:
        total.duration_s += r.duration_s
        total.sent += r.sent
        total.ok += r.ok
        total.errors += r.errors
        for kind, count in r.error_kinds.items():
            total.error_kinds[kind] = total.error_kinds.get(kind, 0) + count
        total.histogram.merge(r.histogram)
        total.service_histogram.merge(r.service_histogram)
        total.elapsed_s += r.elapsed_s
        total.max_send_lag_ms = max(total.max_send_lag_ms, r.max_send_lag_ms)
    total.client_cpu_us_per_req = sum(r.client_cpu_us_per_req * r.sent for r in results) / max(
        1, total.sent
    )
    return total


@dataclass(slots=True)
class OverheadResult:
    """Merged direct and Switchman results at one arrival rate."""

    rate: float
    runs: int
    run_s: float
    by_side: dict[str, LoadResult] = field(default_factory=dict)

    #: The emulator's service time during these runs, seconds.
    latency_s: float = 0.0

    def added_ms(self, q: float, side: str = "switchman") -> float | None:
        """``side``'s latency minus direct latency at percentile ``q``, ms."""
        if side not in self.by_side or "direct" not in self.by_side:
            return None
        direct, other = self.by_side["direct"], self.by_side[side]
        return other.histogram.percentile_ms(q) - direct.histogram.percentile_ms(q)


def _abba(runs: int, sides: tuple[str, ...]) -> Iterator[str]:
    for i in range(runs):
        yield from (sides if i % 2 == 0 else tuple(reversed(sides)))


def measure_overhead(
    stack: Stack, rate: float, *, runs: int = 5, run_s: float = 5.0, warmup_s: float = 1.0
) -> OverheadResult:
    """Interleaved direct and Switchman runs at ``rate`` req/s; see the module docstring."""
    sides = stack.sides()
    for side in sides:  # warm connection pools, JIT-free but cache- and allocator-warm
        stack.load(side, rate, warmup_s)
    per_side: dict[str, list[LoadResult]] = {s: [] for s in sides}
    for side in _abba(runs, sides):
        per_side[side].append(stack.load(side, rate, run_s))
    return OverheadResult(
        rate=rate,
        runs=runs,
        run_s=run_s,
        by_side={s: merge_results(rs) for s, rs in per_side.items()},
        latency_s=stack.latency_s,
    )


@dataclass(slots=True)
class SaturationResult:
    """Each step's result for one side, and the highest rate that passed."""

    side: str
    p99_bound_ms: float
    max_error_ratio: float
    steps: list[LoadResult] = field(default_factory=list)

    def passed(self, step: LoadResult) -> bool:
        return (
            step.error_ratio < self.max_error_ratio
            and step.histogram.percentile_ms(99.0) <= self.p99_bound_ms
        )

    @property
    def sustained_rate(self) -> float | None:
        """The highest rate before the first failing step, if any step passed."""
        best = None
        for step in self.steps:
            if not self.passed(step):
                break
            best = step.rate
        return best


def measure_saturation(
    stack: Stack,
    side: str,
    rates: Sequence[float],
    *,
    step_s: float = 4.0,
    p99_bound_ms: float = 1000.0,
    max_error_ratio: float = 0.01,
) -> SaturationResult:
    """Step the open-model rate up through ``rates``; stop after the first failing step."""
    result = SaturationResult(side, p99_bound_ms, max_error_ratio)
    for rate in rates:
        stack.settle(side)
        step = stack.load(side, rate, step_s, timeout_s=5.0)
        result.steps.append(step)
        if not result.passed(step):
            break
    stack.settle(side)
    return result
