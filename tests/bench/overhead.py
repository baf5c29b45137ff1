"""What Switchman adds on the HTTP path: added latency and one worker's saturation point.

A :class:`Stack` runs, each in a process group of its own, the OpenAI sandbox
emulator (``switchman sandbox``) and Switchman (``switchman serve``) with a
one-provider config pointing at it. Load comes from
:mod:`tests.bench.loadgen`, also a subprocess, so neither server shares an
event loop with the client. On a machine with two or more cores Switchman is
pinned to CPU 0 and the emulator and load generator share CPU 1 (``taskset``),
so the worker under test has a core to itself and runs are comparable.

* :func:`measure_overhead` interleaves short runs *direct to the emulator* and
  *through Switchman* at a fixed arrival rate (ABBA order, so slow drift of the
  machine hits both alike) and merges each side's histograms.
* :func:`measure_saturation` steps the open-model rate up until a step fails
  (≥ 1 % errors or p99 over the bound) and reports the highest rate sustained.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Literal

import httpx
import yaml

from tests.bench.loadgen import Client, LoadResult, Target

__all__ = [
    "DEMO_KEY",
    "OverheadResult",
    "SaturationResult",
    "Stack",
    "measure_overhead",
    "measure_saturation",
    "merge_results",
]

Side = Literal["direct", "switchman"]
SIDES: Final[tuple[Side, Side]] = ("direct", "switchman")

DEMO_KEY: Final = "sk_sw_demo_local_only"
_DEMO_KEY_HASH: Final = "sha256:2b19d40adb1c88687ecb539946ce171cab4f895c9dcc6b39cd9253989ba619fd"
_EMULATOR_BODY: Final = {
    "model": "dall-e-3",
    "prompt": "a lighthouse",
    "n": 1,
    "size": "1024x1024",
    "response_format": "url",
}
_SWITCHMAN_BODY: Final = {"kind": "image", "prompt": "a lighthouse"}
_BIN: Final = Path(sys.executable).parent
_ROOT: Final = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pin(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus is not None else []


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not gone in 5 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


class Stack:
    """The emulator and Switchman, started on loopback and always cleaned up on exit.

    If Switchman does not become ready, the emulator keeps running and
    :attr:`switchman_error` says why, so direct measurements still happen.
    """

    def __init__(self, *, pin: bool = True, ready_timeout_s: float = 30.0) -> None:
        two_cores = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
        self.pinned = pin and two_cores
        self.server_cpus = "0" if self.pinned else None
        self.loader_cpus = "1" if self.pinned else None
        self.ready_timeout_s = ready_timeout_s
        self.switchman_error: str | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="switchman-bench-"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self.emulator_url = ""
        self.switchman_url = ""
        self.switchman_pid: int | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Stack:
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
        for proc in reversed(self._procs):
            _stop(proc)
        self._procs.clear()
        for log in self._logs:
            log.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _spawn(self, name: str, cmd: list[str], cpus: str | None) -> subprocess.Popen[bytes]:
        log = (self._tmp / f"{name}.log").open("wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            [*_pin(cpus), *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so killpg reaches its children
            cwd=_ROOT,
            # The checkout first on the path, so the code measured is the code in this
            # tree even if the editable install is stale.
            env={**os.environ, "PYTHONPATH": str(_ROOT)},
        )
        self._procs.append(proc)
        return proc

    def _start(self) -> None:
        port = _free_port()
        cmd = [str(_BIN / "switchman"), "sandbox", "--provider", "openai", "--port", str(port)]
        self._spawn("emulator", [*cmd, "--faults", "none"], self.loader_cpus)
        self.emulator_url = f"http://127.0.0.1:{port}"
        self._wait_ready(lambda c: self.post(c, "direct").status_code == 200)
        self.set_emulator_latency(0.0)
        sw_port = _free_port()
        config = {
            "server": {"host": "127.0.0.1", "port": sw_port},
            "storage": {"database_url": f"sqlite+aiosqlite:///{self._tmp / 'switchman.db'}"},
            "tenants": [
                {"id": "demo", "api_keys": [_DEMO_KEY_HASH], "scopes": ["generate", "read"]}
            ],
            "providers": [
                {
                    "name": "emulator",
                    "adapter": "openai",
                    "base_url": self.emulator_url,
                    "api_key": "sk-sandbox",
                    "kinds": ["image"],
                    "models": {"image": "dall-e-3"},
                    "rate_limit": {"requests": 100000, "per_s": 1},
                }
            ],
        }
        path = self._tmp / "bench.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        proc = self._spawn(
            "switchman",
            [str(_BIN / "switchman"), "serve", "--config", str(path)],
            self.server_cpus,
        )
        self.switchman_pid = proc.pid
        self.switchman_url = f"http://127.0.0.1:{sw_port}"
        try:
            self._wait_ready(lambda c: self.post(c, "switchman").status_code == 200, proc=proc)
        except RuntimeError as exc:
            log = (self._tmp / "switchman.log").read_text(encoding="utf-8", errors="replace")
            tail = "\n".join(log.strip().splitlines()[-12:])
            self.switchman_error = f"{exc}\n{tail}".strip()
            _stop(proc)
            self._procs.remove(proc)

    def _wait_ready(
        self,
        ok: Callable[[httpx.Client], bool],
        proc: subprocess.Popen[bytes] | None = None,
        step_s: float = 0.2,
    ) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"exited with status {proc.returncode} before ready")
                with contextlib.suppress(httpx.HTTPError):
                    if ok(client):
                        return
                time.sleep(step_s)
        raise RuntimeError(f"not ready after {self.ready_timeout_s:.0f} s")

    # -- requests ----------------------------------------------------------

    def request(self, side: Side) -> Target:
        """The request the benchmark sends to ``side``."""
        if side == "direct":
            return Target(
                url=f"{self.emulator_url}/v1/images/generations",
                headers={"authorization": "Bearer sk-sandbox"},
                body=json.dumps(_EMULATOR_BODY).encode(),
            )
        return Target(
            url=f"{self.switchman_url}/v1/generations",
            headers={"authorization": f"Bearer {DEMO_KEY}", "prefer": "wait=10"},
            body=json.dumps(_SWITCHMAN_BODY).encode(),
        )

    def post(self, client: httpx.Client, side: Side) -> httpx.Response:
        """Send one benchmark request to ``side`` synchronously (probes, readiness)."""
        target = self.request(side)
        headers = {"content-type": "application/json", **target.headers}
        return client.post(target.url, content=target.body, headers=headers)

    def set_emulator_latency(self, seconds: float) -> None:
        """Set the emulator's service time (its fault injection's added latency)."""
        resp = httpx.post(f"{self.emulator_url}/_sandbox/faults", json={"latency_s": seconds})
        resp.raise_for_status()

    def load(
        self,
        side: Side,
        rate: float,
        duration_s: float,
        timeout_s: float = 10.0,
        client: Client = "aiohttp",
    ) -> LoadResult:
        """Run :mod:`tests.bench.loadgen` in a subprocess against ``side``; parse its result."""
        target = self.request(side)
        cmd = [
            *_pin(self.loader_cpus),
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
        ]
        done = subprocess.run(
            cmd,
            capture_output=True,
            timeout=duration_s + timeout_s + 30,
            check=False,
            start_new_session=True,
            cwd=_ROOT,
        )
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed: {done.stderr.decode()[-2000:]}")
        return LoadResult.from_json(json.loads(done.stdout))

    def settle(self, side: Side, fast_s: float = 0.05, limit_s: float = 20.0) -> None:
        """Wait until one request to ``side`` answers quickly again (its backlog is gone)."""
        deadline = time.monotonic() + limit_s
        with httpx.Client(timeout=10.0) as client:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    resp = self.post(client, side)
                    if resp.status_code == 200 and time.perf_counter() - start < fast_s:
                        return
                time.sleep(0.25)

    def sides(self) -> tuple[Side, ...]:
        """The sides that can be measured: both, or only ``direct`` if Switchman did not start."""
        return SIDES if self.switchman_error is None else ("direct",)


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

    def added_ms(self, q: float) -> float | None:
        """Switchman's latency minus direct latency at percentile ``q``, ms."""
        if len(self.by_side) < 2:
            return None
        direct, switchman = self.by_side["direct"], self.by_side["switchman"]
        return switchman.histogram.percentile_ms(q) - direct.histogram.percentile_ms(q)


def _abba(runs: int, sides: tuple[Side, ...]) -> Iterator[Side]:
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
    side: Side,
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
