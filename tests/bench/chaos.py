"""Routing quality under chaos: the chaos matrix replayed against every routing policy.

Three OpenAI sandbox emulators play providers **A**, **B** and **C**, each
with its own price and service time (A cheapest and slowest, C dearest and
fastest). A *scenario* is a schedule of faults driven through each emulator's
``POST /_sandbox/faults`` over ~20 s (hard outage, brownout, 429 storm,
flapping, partial failures, slow-loris, malformed bodies, connection resets,
all down then recovery, a price change).

Every policy gets a *world* of its own (its own three emulators, so one
policy's traffic never changes another's providers) and all worlds replay the
same schedule at the same instants, each under the same open-model arrival
rate. The policies:

* ``balanced``, ``cheapest``, ``fastest``: one ``switchman serve`` each, the
  policy as ``routing.strategy``; attempts per request from
  ``X-Switchman-Attempts``. The price change is a new config file and
  ``POST /v1/admin/reload``.
* ``round-robin`` and ``priority``: tiny clients in this process that call the
  emulators directly, rotating A→B→C (round-robin) or always A, then B, then C
  (priority, cheapest first), each retrying the next provider on any failure,
  up to 3 attempts with a 2 s attempt timeout: what a team writes by hand.
* ``litellm``: the LiteLLM proxy with A, B, C as model groups ``a``, ``b``,
  ``c``, ``fallbacks: a → [b, c]``, ``num_retries``, ``allowed_fails`` and
  ``cooldown_time`` as its reliability docs recommend (times scaled to the
  scenario, like Switchman's breaker).
* ``oracle``: knows each provider's true state at every instant from the
  schedule and sends each request, once, to the cheapest provider that is
  fully healthy then (none: the request fails at once). A provider with any
  injected fault (30 % errors, a rate limit) counts as not healthy.

What is measured comes from both ends: the caller's latency (from intended send
time), success and served provider; and each emulator's log of every upstream
request (arrival, end, outcome), which gives attempts per success, *wasted*
attempts (any that could not succeed: an error status, a 429, a reset, a hang
or timeout, a malformed body), and each provider's share of traffic over time,
from which *time to detect* (the faulty provider's share falls below a quarter
of what it was) and *time to recover* (it is back to half) are read, in 0.5 s
bins. Cost per success is the *true* price of the provider that served each
success at its send time (so a router that has not heard of a price change
pays the new price); abandoned attempts are not billed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml

from tests.bench.overhead import DEMO_KEY, EMULATOR_BODY
from tests.bench.peers import LITELLM_KEY, LITELLM_READY_S, ensure_litellm, start_litellm
from tests.bench.procs import Processes, free_port, get_ok

__all__ = [
    "POLICIES",
    "PROVIDERS",
    "SCENARIOS",
    "ChaosResults",
    "PolicyResult",
    "Scenario",
    "run_chaos",
]

_BIN: Final = Path(sys.executable).parent
_GEN_PATH: Final = "/v1/images/generations"
_ADMIN_KEY: Final = "sk_sw_bench_admin_only"


@dataclass(frozen=True, slots=True)
class Provider:
    """One emulated provider: its name, price per image and service time."""

    name: str
    cost_usd: float
    latency_s: float


PROVIDERS: Final = (
    Provider("a", 0.02, 0.08),
    Provider("b", 0.03, 0.05),
    Provider("c", 0.06, 0.03),
)
POLICIES: Final = (
    "balanced",
    "cheapest",
    "fastest",
    "round-robin",
    "priority",
    "litellm",
    "oracle",
)
SWITCHMAN_POLICIES: Final = ("balanced", "cheapest", "fastest")
#: Per-attempt timeout of every router here, and the caller's deadline per request.
ATTEMPT_TIMEOUT_S: Final = 2.0
DEADLINE_S: Final = 10.0
BIN_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class Phase:
    """Faults on some providers during ``[start_s, end_s)`` of a scenario."""

    start_s: float
    end_s: float
    providers: tuple[int, ...]
    faults: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named fault schedule; ``watch`` is the window the detect/recover times refer to."""

    name: str
    title: str
    duration_s: float
    phases: tuple[Phase, ...] = ()
    #: ``(at_s, provider, new price)``: the price changes for the rest of the scenario.
    price_changes: tuple[tuple[float, int, float], ...] = ()
    #: ``(provider, start_s, end_s)`` whose detection and recovery are reported.
    watch: tuple[int, float, float] | None = None
    #: Recovery read from callers' success (all providers down) rather than traffic share.
    recover_by_success: bool = False

    def scaled(self, factor: float) -> Scenario:
        """The same scenario with every time multiplied by ``factor`` (``--quick``)."""
        return Scenario(
            self.name,
            self.title,
            self.duration_s * factor,
            tuple(
                Phase(p.start_s * factor, p.end_s * factor, p.providers, p.faults)
                for p in self.phases
            ),
            tuple((t * factor, i, c) for t, i, c in self.price_changes),
            None
            if self.watch is None
            else (self.watch[0], self.watch[1] * factor, self.watch[2] * factor),
            self.recover_by_success,
        )

    def faults_at(self, provider: int, t: float) -> dict[str, Any]:
        """The injected faults on ``provider`` at scenario time ``t`` (without base latency)."""
        merged: dict[str, Any] = {}
        for p in self.phases:
            if provider in p.providers and p.start_s <= t < p.end_s:
                merged.update(p.faults)
        return merged

    def healthy(self, provider: int, t: float, guard_s: float = 0.1) -> bool:
        """Whether ``provider`` answers every request well around ``t`` (the oracle's truth).

        "Around": within ``guard_s`` either side, since a fault switches on at the
        emulator a few ms after its instant, and an attempt takes time to arrive.
        """
        return not any(self.faults_at(provider, t + d) for d in (-guard_s, 0.0, guard_s))

    def price(self, provider: int, t: float) -> float:
        """The true price of one image from ``provider`` at ``t``."""
        cost = PROVIDERS[provider].cost_usd
        for at, i, new in self.price_changes:
            if i == provider and t >= at:
                cost = new
        return cost

    def events(self) -> list[float]:
        """Instants where some provider's faults change, in order."""
        times = {p.start_s for p in self.phases} | {p.end_s for p in self.phases}
        return sorted(t for t in times if 0 <= t < self.duration_s)


_DOWN: Final = {"error_ratio": 1.0, "error_status": 503}
SCENARIOS: Final = (
    Scenario("outage", "A hard down (503)", 20, (Phase(5, 13, (0,), _DOWN),), watch=(0, 5, 13)),
    Scenario(
        "brownout",
        "A +3 s latency (attempts cut at 2 s)",
        20,
        (Phase(5, 13, (0,), {"latency_s": 3.0}),),
        watch=(0, 5, 13),
    ),
    Scenario(
        "429-storm",
        "A throttles to 0.2 req/s, 429 with Retry-After: 3",
        20,
        (Phase(5, 13, (0,), {"rate_limit_per_s": 0.2, "retry_after_s": 3.0}),),
        watch=(0, 5, 13),
    ),
    Scenario(
        "flapping",
        "A down 2 s / up 2 s, four times",
        20,
        tuple(Phase(s, s + 2, (0,), _DOWN) for s in (4, 8, 12, 16)),
        watch=(0, 4, 6),
    ),
    Scenario(
        "partial-30",
        "A fails 30 % of requests (503) from 5 s on",
        20,
        (Phase(5, 20, (0,), {"error_ratio": 0.3, "error_status": 503}),),
        watch=(0, 5, 20),
    ),
    Scenario(
        "slow-loris",
        "A accepts and never answers (hang)",
        20,
        (Phase(5, 13, (0,), {"hang_ratio": 1.0}),),
        watch=(0, 5, 13),
    ),
    Scenario(
        "malformed",
        "A answers 200 with a truncated JSON body",
        20,
        (Phase(5, 13, (0,), {"malformed_ratio": 1.0}),),
        watch=(0, 5, 13),
    ),
    Scenario(
        "resets",
        "A resets every connection (TCP RST)",
        20,
        (Phase(5, 13, (0,), {"reset_ratio": 1.0}),),
        watch=(0, 5, 13),
    ),
    Scenario(
        "all-down",
        "A, B and C down 5–10 s, then recover",
        20,
        (Phase(5, 10, (0, 1, 2), _DOWN),),
        watch=(0, 5, 10),
        recover_by_success=True,
    ),
    Scenario(
        "price-change",
        "A's price rises 0.02 → 0.10 USD at 7 s (Switchman: config reload)",
        20,
        price_changes=((7, 0, 0.10),),
        watch=(0, 7, 20),
    ),
)


# -- the emulator host (a subprocess) ------------------------------------------------


def _host_main(argv: Sequence[str]) -> int:
    """Serve one timed OpenAI emulator per ``port:latency`` until SIGTERM."""
    import uvloop
    from aiohttp import web

    from router.config import FaultsConfig
    from router.sandbox.openai import OpenAIEmulator

    parser = argparse.ArgumentParser()
    parser.add_argument("specs", nargs="+", help="port:latency_s")
    args = parser.parse_args(argv)

    class TimedEmulator(OpenAIEmulator):
        """The OpenAI emulator plus a log of every generation request's outcome.

        ``GET /_bench/arrivals`` returns and clears the log: ``[arrival, end,
        status]`` per request on the system-wide monotonic clock; status -1 is a
        reset or an abandoned (hung or slow) request, -2 a malformed 200.
        """

        def __init__(self, faults: FaultsConfig) -> None:
            super().__init__(faults)
            self.log: list[tuple[float, float, int]] = []

        def build_app(self) -> web.Application:
            app = super().build_app()
            log = self.log

            @web.middleware
            async def timing(
                request: web.Request,
                handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
            ) -> web.StreamResponse:
                if request.path != _GEN_PATH:
                    return await handler(request)
                arrived = time.monotonic()
                status = -1
                try:
                    response = await handler(request)
                    status = response.status
                    if status == 200 and isinstance(response, web.Response):
                        try:
                            json.loads(response.body or b"")  # type: ignore[arg-type]
                        except ValueError:
                            status = -2
                    return response
                finally:
                    log.append((arrived, time.monotonic(), status))

            async def arrivals(_request: web.Request) -> web.Response:
                body = json.dumps(log)
                log.clear()
                return web.Response(body=body.encode(), content_type="application/json")

            app.middlewares.append(timing)
            app.router.add_get("/_bench/arrivals", arrivals)
            return app

    async def serve() -> None:
        emulators = []
        for spec in args.specs:
            port, latency = spec.split(":")
            emulator = TimedEmulator(FaultsConfig(latency_s=float(latency)))
            await emulator.start("127.0.0.1", int(port))
            emulators.append(emulator)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for emulator in emulators:
            await emulator.stop()

    uvloop.run(serve())
    return 0


# -- results ---------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """One caller request: when it was due, how long it took, who served it."""

    t: float
    latency_s: float
    ok: bool
    provider: int | None = None
    attempts: int | None = None


@dataclass(slots=True)
class PolicyResult:
    """One policy's numbers in one scenario (see the module docstring)."""

    policy: str
    sent: int = 0
    ok: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cost_per_success: float = 0.0
    upstream_attempts: int = 0
    wasted_attempts: int = 0
    #: Mean of ``X-Switchman-Attempts`` over successes (Switchman only).
    header_attempts: float | None = None
    detect_s: float | None = None
    recover_s: float | None = None
    #: Why detect/recover have no value (``never``, ``n/a``), when they have none.
    detect_note: str = ""
    recover_note: str = ""
    served: dict[str, int] = field(default_factory=dict)

    @property
    def success_ratio(self) -> float:
        return self.ok / self.sent if self.sent else 0.0

    @property
    def attempts_per_success(self) -> float:
        return self.upstream_attempts / self.ok if self.ok else math.inf


@dataclass(slots=True)
class ScenarioResult:
    """Every policy's result in one scenario."""

    scenario: Scenario
    by_policy: dict[str, PolicyResult] = field(default_factory=dict)


@dataclass(slots=True)
class ChaosResults:
    """The whole chaos run."""

    rate: float
    warmup_s: float
    #: Scenario times as listed in :data:`SCENARIOS` times this factor.
    time_factor: float = 1.0
    scenarios: list[ScenarioResult] = field(default_factory=list)
    #: Policy → why it could not run.
    errors: dict[str, str] = field(default_factory=dict)
    switchman_configs: dict[str, Any] = field(default_factory=dict)
    litellm_config: dict[str, Any] = field(default_factory=dict)


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _bins(t0: float, t1: float) -> Iterator[float]:
    t = t0
    while t < t1 - 1e-9:
        yield t
        t += BIN_S


def _share_series(
    arrivals: Sequence[Sequence[tuple[float, float, int]]], provider: int, t0: float, t1: float
) -> list[tuple[float, float | None]]:
    """``(bin start, provider's share of all attempts)`` per bin; ``None`` for an empty bin."""
    out: list[tuple[float, float | None]] = []
    for b in _bins(t0, t1):
        counts = [sum(1 for a in log if b <= a[0] < b + BIN_S) for log in arrivals]
        total = sum(counts)
        out.append((b, counts[provider] / total if total else None))
    return out


def summarise(
    policy: str,
    scenario: Scenario,
    outcomes: Sequence[Outcome],
    arrivals: Sequence[Sequence[tuple[float, float, int]]],
) -> PolicyResult:
    """Turn one world's outcomes and upstream logs into a :class:`PolicyResult`.

    Times in ``arrivals`` are already relative to the scenario start.
    """
    r = PolicyResult(policy)
    r.sent = len(outcomes)
    good = [o for o in outcomes if o.ok]
    r.ok = len(good)
    lat = [o.latency_s * 1000 for o in good]
    r.p50_ms, r.p99_ms = _pct(lat, 50), _pct(lat, 99)
    cost = sum(scenario.price(o.provider, o.t) for o in good if o.provider is not None)
    r.cost_per_success = cost / r.ok if r.ok else math.nan
    for o in good:
        if o.provider is not None:
            name = PROVIDERS[o.provider].name
            r.served[name] = r.served.get(name, 0) + 1
    in_window = [[a for a in log if a[0] >= 0] for log in arrivals]
    r.upstream_attempts = sum(len(log) for log in in_window)
    r.wasted_attempts = sum(1 for log in in_window for a in log if a[2] != 200)
    headers = [o.attempts for o in good if o.attempts is not None]
    if policy in SWITCHMAN_POLICIES and headers:
        r.header_attempts = statistics.fmean(headers)
    if scenario.watch is not None:
        _detect_recover(r, scenario, outcomes, in_window, arrivals)
    return r


def _detect_recover(
    r: PolicyResult,
    scenario: Scenario,
    outcomes: Sequence[Outcome],
    in_window: Sequence[Sequence[tuple[float, float, int]]],
    arrivals: Sequence[Sequence[tuple[float, float, int]]],
) -> None:
    assert scenario.watch is not None
    provider, start, end = scenario.watch
    duration = scenario.duration_s
    if scenario.recover_by_success:
        r.detect_note = "n/a"
        for b in _bins(end, duration):
            due = [o for o in outcomes if b <= o.t < b + BIN_S]
            if due and sum(o.ok for o in due) / len(due) >= 0.9:
                r.recover_s = b - end
                return
        r.recover_note = f"> {duration - end:g} s"
        return
    before = _share_series(arrivals, provider, max(start - 3.0, 0.0), start)
    shares = [s for _, s in before if s is not None]
    base = statistics.fmean(shares) if shares else 0.0
    if base < 0.15:
        r.detect_note = r.recover_note = "n/a (not its main provider)"
        return
    during = _share_series(in_window, provider, start, end)
    quiet = [s is not None and s < 0.25 * base for _, s in during]
    for i, (b, _) in enumerate(during):
        if quiet[i] and (i + 1 == len(quiet) or quiet[i + 1]):
            r.detect_s = b - start
            break
    else:
        r.detect_note = "never"
    if end >= duration:
        r.recover_note = "n/a (fault lasts)"
        return
    for b, s in _share_series(in_window, provider, end, duration):
        if s is not None and s >= 0.5 * base:
            r.recover_s = b - end
            return
    r.recover_note = f"> {duration - end:g} s"


# -- the worlds ------------------------------------------------------------------------


@dataclass(slots=True)
class World:
    """One policy's three emulators and, for Switchman and LiteLLM, its router."""

    policy: str
    emulators: list[str]
    router_url: str = ""
    config_path: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    rr: int = 0
    #: Starts the router afresh (Switchman worlds), given the scenario's name.
    restart: Callable[[str], None] | None = None


def _switchman_config(
    world: World, port: int, tmp: Path, prices: Sequence[float]
) -> dict[str, Any]:
    from router.auth import hash_key

    providers = []
    for i, (p, url) in enumerate(zip(PROVIDERS, world.emulators, strict=True)):
        providers.append(
            {
                "name": p.name,
                "adapter": "openai",
                "base_url": url,
                "api_key": "sk-sandbox",
                "kinds": ["image"],
                "models": {"image": "dall-e-3"},
                "cost": {"per_image_usd": prices[i]},
                "priority": i + 1,
                "rate_limit": {"requests": 10000, "per_s": 1},
                "breaker": {"fail_max": 5, "reset_timeout_s": 3.0},
                "timeouts": {"connect_s": 1.0, "request_s": ATTEMPT_TIMEOUT_S},
            }
        )
    return {
        "server": {"host": "127.0.0.1", "port": port, "ui_enabled": False},
        "routing": {
            "strategy": world.policy,
            "max_attempts": 3,
            "default_timeout_s": DEADLINE_S,
        },
        "storage": {
            "database_url": f"sqlite+aiosqlite:///{tmp / f'{world.policy}.db'}",
            "assets": {"enabled": False, "path": str(tmp / "assets")},
        },
        "tenants": [
            {"id": "demo", "api_keys": [hash_key(DEMO_KEY)], "scopes": ["generate", "read"]},
            {"id": "ops", "api_keys": [hash_key(_ADMIN_KEY)], "scopes": ["admin"]},
        ],
        "providers": providers,
    }


def litellm_chaos_config(emulators: Sequence[str]) -> dict[str, Any]:
    """A, B, C as model groups ``a``, ``b``, ``c``; callers ask for ``a``; fallbacks a → b, c."""
    return {
        "model_list": [
            {
                "model_name": p.name,
                "litellm_params": {
                    "model": "openai/dall-e-3",
                    "api_base": f"{url}/v1",
                    "api_key": "sk-sandbox",
                    "timeout": ATTEMPT_TIMEOUT_S,
                },
            }
            for p, url in zip(PROVIDERS, emulators, strict=True)
        ],
        "router_settings": {
            "num_retries": 2,
            "timeout": DEADLINE_S,
            "allowed_fails": 3,
            "cooldown_time": 3,
            "fallbacks": [{"a": ["b", "c"]}],
        },
        "litellm_settings": {"telemetry": False, "request_timeout": DEADLINE_S},
        "general_settings": {"master_key": LITELLM_KEY},
    }


class _Driver:
    """Runs the scenarios over every world from one event loop."""

    def __init__(self, worlds: list[World], rate: float, warmup_s: float, procs: Processes) -> None:
        self.worlds = worlds
        self.rate = rate
        self.warmup_s = warmup_s
        self.procs = procs
        self.http: aiohttp.ClientSession | None = None

    # -- requests ------------------------------------------------------------------

    async def _post(
        self, url: str, body: Any, headers: Mapping[str, str], timeout_s: float
    ) -> tuple[int, Mapping[str, str], Any]:
        """POST JSON; ``(status, headers, parsed body or None)``; status 0 on any failure."""
        assert self.http is not None
        try:
            async with self.http.post(
                url,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                raw = await resp.read()
                try:
                    data = json.loads(raw) if raw else None
                except ValueError:
                    data = None
                return resp.status, resp.headers, data
        except (aiohttp.ClientError, TimeoutError):
            return 0, {}, None

    async def _direct(self, url: str) -> bool:
        status, _, data = await self._post(
            f"{url}{_GEN_PATH}",
            EMULATOR_BODY,
            {"authorization": "Bearer sk-sandbox"},
            ATTEMPT_TIMEOUT_S,
        )
        return status == 200 and isinstance(data, dict) and bool(data.get("data"))

    async def _with_retries(self, world: World, order: Sequence[int]) -> tuple[bool, int, int]:
        for n, i in enumerate(order[:3], start=1):
            if await self._direct(world.emulators[i]):
                return True, i, n
        return False, -1, min(3, len(order))

    async def _one(self, world: World, scenario: Scenario, t: float) -> Outcome:
        policy = world.policy
        if policy == "oracle":
            up = [i for i in range(len(PROVIDERS)) if scenario.healthy(i, t)]
            if not up:
                return Outcome(t, 0.0, False)
            best = min(up, key=lambda i: scenario.price(i, t))
            ok = await self._direct(world.emulators[best])
            return Outcome(t, 0.0, ok, best if ok else None, 1)
        if policy in ("round-robin", "priority"):
            if policy == "round-robin":
                first = world.rr % len(PROVIDERS)
                world.rr += 1
                order = [(first + k) % len(PROVIDERS) for k in range(len(PROVIDERS))]
            else:
                order = list(range(len(PROVIDERS)))
            ok, used, n = await self._with_retries(world, order)
            return Outcome(t, 0.0, ok, used if ok else None, n)
        if policy == "litellm":
            status, headers, _ = await self._post(
                f"{world.router_url}{_GEN_PATH}",
                {**EMULATOR_BODY, "model": "a"},
                {"authorization": f"Bearer {LITELLM_KEY}"},
                DEADLINE_S + 2,
            )
            base = headers.get("x-litellm-model-api-base", "")
            served = next((i for i, u in enumerate(world.emulators) if base.startswith(u)), None)
            ok = status == 200 and served is not None
            return Outcome(t, 0.0, ok, served if ok else None)
        status, headers, data = await self._post(
            f"{world.router_url}/v1/generations",
            {"kind": "image", "prompt": "a lighthouse"},
            {"authorization": f"Bearer {DEMO_KEY}", "prefer": f"wait={DEADLINE_S:g}"},
            DEADLINE_S + 2,
        )
        name = headers.get("x-switchman-provider")
        served = next((i for i, p in enumerate(PROVIDERS) if p.name == name), None)
        ok = status == 200 and served is not None
        ok = ok and isinstance(data, dict) and data.get("status") == "succeeded"
        attempts = int(headers.get("x-switchman-attempts", "0") or 0)
        return Outcome(t, 0.0, ok, served if ok else None, attempts)

    async def _load(
        self, scenario: Scenario, start: float, t0: float, t1: float, sink: list[list[Outcome]]
    ) -> None:
        """Open-model load on every world for scenario time ``[t0, t1)``."""
        tasks: list[asyncio.Task[None]] = []

        async def fire(w: int, world: World, t: float) -> None:
            outcome = await self._one(world, scenario, t)
            outcome.latency_s = time.monotonic() - (start + t)
            sink[w].append(outcome)

        n = math.floor((t1 - t0) * self.rate + 1e-9)
        for k in range(n):
            t = t0 + k / self.rate
            delay = start + t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for w, world in enumerate(self.worlds):
                tasks.append(asyncio.create_task(fire(w, world, t)))
        if tasks:
            await asyncio.wait(tasks)

    # -- faults ----------------------------------------------------------------------

    async def _set_faults(self, provider: int, faults: Mapping[str, Any]) -> None:
        assert self.http is not None
        body = dict(faults)
        body["latency_s"] = PROVIDERS[provider].latency_s + float(faults.get("latency_s", 0.0))
        http = self.http

        async def one(url: str) -> None:
            async with http.post(f"{url}/_sandbox/faults", json=body) as resp:
                resp.raise_for_status()

        await asyncio.gather(*(one(w.emulators[provider]) for w in self.worlds))

    async def _set_prices(self, prices: Sequence[float]) -> None:
        assert self.http is not None
        for world in self.worlds:
            if world.policy not in SWITCHMAN_POLICIES or world.config_path is None:
                continue
            config = dict(world.config)
            for p, price in zip(config["providers"], prices, strict=True):
                p["cost"] = {"per_image_usd": price}
            world.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
            async with self.http.post(
                f"{world.router_url}/v1/admin/reload",
                headers={"authorization": f"Bearer {_ADMIN_KEY}"},
            ) as resp:
                resp.raise_for_status()

    async def _schedule(self, scenario: Scenario, start: float) -> None:
        changes: list[tuple[float, Callable[[], Awaitable[None]]]] = []
        current: list[dict[str, Any]] = [{} for _ in PROVIDERS]
        for t in scenario.events():
            for i in range(len(PROVIDERS)):
                now = scenario.faults_at(i, t)
                if now != current[i]:
                    current[i] = now
                    changes.append((t, lambda i=i, now=now: self._set_faults(i, now)))  # type: ignore[misc]
        for at, _, _ in scenario.price_changes:
            prices = [scenario.price(i, at) for i in range(len(PROVIDERS))]
            changes.append((at, lambda prices=prices: self._set_prices(prices)))  # type: ignore[misc]
        changes.sort(key=lambda c: c[0])
        for at, apply in changes:
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await apply()

    async def _restore(self) -> None:
        for i in range(len(PROVIDERS)):
            await self._set_faults(i, {})
        await self._set_prices([p.cost_usd for p in PROVIDERS])

    async def _arrivals(self) -> list[list[list[tuple[float, float, int]]]]:
        assert self.http is not None
        out: list[list[list[tuple[float, float, int]]]] = []
        for world in self.worlds:
            logs: list[list[tuple[float, float, int]]] = []
            for url in world.emulators:
                async with self.http.get(f"{url}/_bench/arrivals") as resp:
                    data = await resp.json()
                logs.append([(float(a[0]), float(a[1]), int(a[2])) for a in data])
            out.append(logs)
        return out

    async def run(self, scenario: Scenario, log: Callable[[str], None]) -> ScenarioResult:
        """Warm up on healthy providers, then replay ``scenario`` on every world at once.

        Each Switchman starts afresh for each scenario (new process, new database),
        so what one scenario taught its breakers and estimates does not carry over.
        """
        restarts = [w.restart for w in self.worlds if w.restart is not None]
        await asyncio.gather(*(asyncio.to_thread(r, scenario.name) for r in restarts))
        await self._restore()
        warm: list[list[Outcome]] = [[] for _ in self.worlds]
        begin = time.monotonic() + 0.05
        await self._load(scenario, begin, 0.0, self.warmup_s, warm)
        await self._arrivals()  # forget the warm-up's upstream requests
        outcomes: list[list[Outcome]] = [[] for _ in self.worlds]
        start = time.monotonic() + 0.05
        schedule = asyncio.create_task(self._schedule(scenario, start))
        await self._load(scenario, start, 0.0, scenario.duration_s, outcomes)
        await schedule
        logs = await self._arrivals()
        result = ScenarioResult(scenario)
        for w, world in enumerate(self.worlds):
            rel = [[(a - start, e - start, s) for a, e, s in log] for log in logs[w]]
            result.by_policy[world.policy] = summarise(world.policy, scenario, outcomes[w], rel)
        await self._restore()
        line = ", ".join(
            f"{p}: {r.success_ratio:.1%} ${r.cost_per_success:.4f}"
            for p, r in result.by_policy.items()
        )
        log(f"  {scenario.name}: {line}")
        return result


def _restarter(
    procs: Processes, world: World, first: subprocess.Popen[bytes]
) -> Callable[[str], None]:
    """A function that replaces ``world``'s Switchman with a fresh one on a new database."""
    current = [first]

    def restart(scenario: str) -> None:
        assert world.config_path is not None
        procs.discard(current[0])
        storage = dict(world.config["storage"])
        storage["database_url"] = (
            f"sqlite+aiosqlite:///{procs.tmp / f'{world.policy}-{scenario}.db'}"
        )
        world.config = {**world.config, "storage": storage}
        world.config_path.write_text(yaml.safe_dump(world.config), encoding="utf-8")
        proc = procs.spawn(
            f"{world.policy}-{scenario}",
            [str(_BIN / "switchman"), "serve", "--config", str(world.config_path)],
            env={"SWITCHMAN_LOG_LEVEL": "WARNING"},
        )
        current[0] = proc
        Processes.wait_ready(get_ok(f"{world.router_url}/healthz"), proc=proc)

    return restart


#: Worlds that run at the same time. LiteLLM runs in a pass of its own: in the
#: scenarios where providers fail, its retries and fallbacks (up to 13 upstream
#: attempts per request when all are down) took both cores and slowed every
#: other world to multi-second latencies when all seven ran together.
PASSES: Final = (
    ("balanced", "cheapest", "fastest", "round-robin", "priority", "oracle"),
    ("litellm",),
)


def run_chaos(
    *,
    quick: bool = False,
    rate: float = 20.0,
    passes: Sequence[Sequence[str]] = PASSES,
    scenarios: Sequence[Scenario] = SCENARIOS,
    log: Callable[[str], None] = print,
) -> ChaosResults:
    """Replay every scenario on every policy, one pass of worlds at a time; stop everything."""
    factor = 0.4 if quick else 0.8
    results = ChaosResults(rate=rate, warmup_s=2.0 if quick else 3.0, time_factor=factor)
    chosen = [s.scaled(factor) for s in scenarios]
    results.scenarios = [ScenarioResult(s) for s in chosen]
    for policies in passes:
        _run_pass(policies, chosen, results, log)
    return results


def _run_pass(
    policies: Sequence[str],
    scenarios: Sequence[Scenario],
    results: ChaosResults,
    log: Callable[[str], None],
) -> None:
    rate, warmup_s = results.rate, results.warmup_s
    with Processes(prefix="switchman-chaos-") as procs:
        worlds = [World(p, []) for p in policies]
        specs: list[str] = []
        for world in worlds:
            for p in PROVIDERS:
                port = free_port()
                world.emulators.append(f"http://127.0.0.1:{port}")
                specs.append(f"{port}:{p.latency_s}")
        host = procs.spawn("emulators", [sys.executable, "-m", "tests.bench.chaos", "host", *specs])
        last = worlds[-1].emulators[-1]
        Processes.wait_ready(get_ok(f"{last}/_sandbox/faults"), proc=host)
        ready: list[World] = []
        starting: list[tuple[World, Any]] = []
        for world in worlds:
            if world.policy in SWITCHMAN_POLICIES:
                port = free_port()
                world.config = _switchman_config(
                    world, port, procs.tmp, [p.cost_usd for p in PROVIDERS]
                )
                results.switchman_configs[world.policy] = world.config
                world.config_path = procs.tmp / f"{world.policy}.yaml"
                world.config_path.write_text(yaml.safe_dump(world.config), encoding="utf-8")
                proc = procs.spawn(
                    world.policy,
                    [str(_BIN / "switchman"), "serve", "--config", str(world.config_path)],
                    env={"SWITCHMAN_LOG_LEVEL": "WARNING"},
                )
                world.router_url = f"http://127.0.0.1:{port}"
                world.restart = _restarter(procs, world, proc)
                starting.append((world, proc))
            elif world.policy == "litellm":
                try:
                    exe = ensure_litellm()
                except (RuntimeError, OSError) as exc:
                    results.errors["litellm"] = f"could not install litellm[proxy]: {exc}"
                    continue
                results.litellm_config = litellm_chaos_config(world.emulators)
                world.router_url, proc = start_litellm(procs, exe, results.litellm_config)
                starting.append((world, proc))
            else:
                ready.append(world)
        for world, proc in starting:
            probe = world.router_url + (
                "/health/liveliness" if world.policy == "litellm" else "/healthz"
            )
            try:
                Processes.wait_ready(
                    get_ok(probe),
                    proc=proc,
                    timeout_s=LITELLM_READY_S if world.policy == "litellm" else 30.0,
                )
            except RuntimeError as exc:
                results.errors[world.policy] = f"{exc}\n{procs.log_tail(world.policy)}"
                continue
            ready.append(world)
        ready.sort(key=lambda w: list(policies).index(w.policy))
        if not ready:
            return
        log(f"chaos: worlds {[w.policy for w in ready]} at {rate:g} req/s each")

        async def main() -> None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                driver = _Driver(ready, rate, warmup_s, procs)
                driver.http = http
                for scenario, into in zip(scenarios, results.scenarios, strict=True):
                    done = await driver.run(scenario, log)
                    into.by_policy.update(done.by_policy)

        asyncio.run(main())


if __name__ == "__main__":
    if sys.argv[1:2] == ["host"]:
        raise SystemExit(_host_main(sys.argv[2:]))
    with contextlib.suppress(KeyboardInterrupt):
        quick = "--quick" in sys.argv
        # --no-litellm: skip the LiteLLM pass (it installs litellm[proxy] on first use).
        passes = PASSES[:1] if "--no-litellm" in sys.argv else PASSES
        names = [a for a in sys.argv[1:] if not a.startswith("--")]
        res = run_chaos(
            quick=quick,
            passes=passes,
            scenarios=[s for s in SCENARIOS if not names or s.name in names],
        )
        for sr in res.scenarios:
            for r in sr.by_policy.values():
                print(sr.scenario.name, r)
        print("errors:", res.errors)
