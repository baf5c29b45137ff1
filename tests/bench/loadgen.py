"""An open-model HTTP load generator that does not suffer coordinated omission.

Requests go out on a fixed schedule (request ``i`` is due at ``i / rate``
seconds), whether or not earlier ones have returned, the way independent
callers arrive at a real service. Each latency is measured from the request's
*intended* send time, not from when the client got round to sending it: if the
server (or this client) falls behind, the wait shows up in the numbers instead
of silently thinning the load (Gil Tene's "coordinated omission").

Latencies go into a :class:`Histogram`, a small log-linear histogram in the
spirit of HdrHistogram (values exact below 128 µs, within 1/64 relative error
above), which merges across runs and serialises to JSON so a run can happen in
a subprocess of its own: ``python -m tests.bench.loadgen --url … --rate R``
prints one JSON object on stdout. The benchmark keeps the client out of the
server's process so the two never share an event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "Histogram",
    "LoadResult",
    "Target",
    "main",
    "run_open_loop",
    "schedule",
]

#: Values below ``2**_SUB_BITS`` µs get a bucket each; above, each power of two
#: is split into ``2**(_SUB_BITS - 1)`` buckets (relative error ≤ 1/64).
_SUB_BITS: Final = 7
_SUB_COUNT: Final = 1 << _SUB_BITS
_HALF: Final = _SUB_COUNT >> 1

Client = Literal["aiohttp", "httpx"]


def _bucket_of(value_us: int) -> int:
    if value_us < _SUB_COUNT:
        return value_us
    shift = value_us.bit_length() - _SUB_BITS
    return _SUB_COUNT + (shift - 1) * _HALF + ((value_us >> shift) - _HALF)


def _bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest microsecond values that land in bucket ``index``."""
    if index < _SUB_COUNT:
        return index, index
    shift, offset = divmod(index - _SUB_COUNT, _HALF)
    shift += 1
    low = (offset + _HALF) << shift
    return low, low + (1 << shift) - 1


@dataclass(slots=True)
class Histogram:
    """Latency counts in log-linear buckets of microseconds; mergeable and JSON-friendly."""

    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    max_us: int = 0
    min_us: int = 0

    def record(self, seconds: float) -> None:
        """Count one latency (negative values, from clock skew, count as 0)."""
        value = max(0, round(seconds * 1e6))
        index = _bucket_of(value)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.min_us = value if self.total == 0 else min(self.min_us, value)
        self.total += 1
        self.max_us = max(self.max_us, value)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts into this histogram."""
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        if other.total:
            self.min_us = other.min_us if self.total == 0 else min(self.min_us, other.min_us)
        self.total += other.total
        self.max_us = max(self.max_us, other.max_us)

    def percentile_us(self, q: float) -> int:
        """The value at percentile ``q`` (0–100): the highest value of its bucket, capped by max.

        Reporting a bucket's upper bound errs on the pessimistic side by at most
        1/64, the way HdrHistogram reports "highest equivalent value".
        """
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be within [0, 100], got {q}")
        if self.total == 0:
            return 0
        rank = max(1, math.ceil(q / 100.0 * self.total))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(_bucket_bounds(index)[1], self.max_us)
        return self.max_us

    def percentile_ms(self, q: float) -> float:
        """:meth:`percentile_us` in milliseconds."""
        return self.percentile_us(q) / 1000.0

    def cdf(self) -> Iterator[tuple[float, float]]:
        """``(latency_ms, fraction ≤ it)`` at each occupied bucket's upper bound, for plots."""
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            yield min(_bucket_bounds(index)[1], self.max_us) / 1000.0, seen / self.total

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": {str(k): v for k, v in self.counts.items()},
            "total": self.total,
            "max_us": self.max_us,
            "min_us": self.min_us,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Histogram:
        return cls(
            counts={int(k): int(v) for k, v in data["counts"].items()},
            total=int(data["total"]),
            max_us=int(data["max_us"]),
            min_us=int(data["min_us"]),
        )


def schedule(rate: float, duration_s: float) -> list[float]:
    """Intended send offsets (seconds from the start) for ``rate`` req/s over ``duration_s``."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    return [i / rate for i in range(math.floor(rate * duration_s + 1e-9))]


@dataclass(frozen=True, slots=True)
class Target:
    """What to send: a POST of ``body`` to ``url`` with ``headers``."""

    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class LoadResult:
    """One run's outcome. Errors are unexpected statuses, exceptions and timeouts."""

    rate: float
    duration_s: float
    sent: int = 0
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    #: Latency from each request's intended send time: what a caller sees.
    histogram: Histogram = field(default_factory=Histogram)
    #: Latency from the actual send: the server's answer time alone, which
    #: leaves out any lag of this client's timers (about 1 ms at most).
    service_histogram: Histogram = field(default_factory=Histogram)
    #: Wall time from the first intended send to the last completion.
    elapsed_s: float = 0.0
    #: Largest lag between a request's intended and actual send time: how far
    #: behind the client itself fell (should stay far below the latencies).
    max_send_lag_ms: float = 0.0
    #: This client's CPU time per request, µs (user + system).
    client_cpu_us_per_req: float = 0.0

    @property
    def error_ratio(self) -> float:
        return self.errors / self.sent if self.sent else 0.0

    def add_error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "duration_s": self.duration_s,
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "histogram": self.histogram.to_json(),
            "service_histogram": self.service_histogram.to_json(),
            "elapsed_s": self.elapsed_s,
            "max_send_lag_ms": self.max_send_lag_ms,
            "client_cpu_us_per_req": self.client_cpu_us_per_req,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoadResult:
        return cls(
            rate=float(data["rate"]),
            duration_s=float(data["duration_s"]),
            sent=int(data["sent"]),
            ok=int(data["ok"]),
            errors=int(data["errors"]),
            error_kinds={str(k): int(v) for k, v in data["error_kinds"].items()},
            histogram=Histogram.from_json(data["histogram"]),
            service_histogram=Histogram.from_json(data["service_histogram"]),
            elapsed_s=float(data["elapsed_s"]),
            max_send_lag_ms=float(data["max_send_lag_ms"]),
            client_cpu_us_per_req=float(data["client_cpu_us_per_req"]),
        )


#: Sends one request and returns its HTTP status.
Sender = Callable[[], Awaitable[int]]


async def _drive(
    send: Sender,
    rate: float,
    duration_s: float,
    timeout_s: float,
    ok_statuses: frozenset[int],
    result: LoadResult,
) -> None:
    """Fire ``send`` on the schedule and record each outcome against its intended time."""
    # perf_counter, not loop.time(): uvloop's clock has only millisecond resolution.
    clock = time.perf_counter
    offsets = schedule(rate, duration_s)
    pending: set[asyncio.Task[None]] = set()

    async def one(intended: float) -> None:
        sent_at = clock()
        try:
            async with asyncio.timeout(timeout_s):
                status = await send()
        except TimeoutError:
            result.add_error("timeout")
            return
        except Exception as exc:  # any client failure is an error, counted by type
            result.add_error(type(exc).__name__)
            return
        done = clock()
        if status in ok_statuses:
            result.ok += 1
            result.histogram.record(done - intended)
            result.service_histogram.record(done - sent_at)
        else:
            result.add_error(f"http_{status}")

    start = clock() + 0.01
    lag = 0.0
    for offset in offsets:
        intended = start + offset
        delay = intended - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = max(lag, clock() - intended)
        task = asyncio.create_task(one(intended))
        pending.add(task)
        task.add_done_callback(pending.discard)
        result.sent += 1
    if pending:
        # Each task has its own timeout, so this wait is bounded by timeout_s.
        await asyncio.wait(set(pending))
    result.elapsed_s = clock() - start
    result.max_send_lag_ms = lag * 1000.0


async def run_open_loop(
    target: Target,
    rate: float,
    duration_s: float,
    *,
    timeout_s: float = 10.0,
    connections: int = 512,
    client: Client = "aiohttp",
    ok_statuses: frozenset[int] = frozenset({200}),
) -> LoadResult:
    """Send ``rate`` req/s to ``target`` for ``duration_s`` seconds; see the module docstring.

    ``connections`` caps open connections; beyond it requests queue in the
    client, and that queueing is charged to the latency, as it should be. Only
    answers with a status in ``ok_statuses`` count as successes (Switchman's
    ``202`` means the job did not finish within ``Prefer: wait``).
    """
    import aiohttp
    import httpx
    from httpx_aiohttp import AiohttpTransport

    result = LoadResult(rate=rate, duration_s=duration_s)
    headers = {"content-type": "application/json", **target.headers}
    cpu_before = _cpu_seconds()
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        if client == "aiohttp":

            async def send() -> int:
                async with session.post(target.url, data=target.body, headers=headers) as resp:
                    await resp.read()
                    return resp.status

            await _drive(send, rate, duration_s, timeout_s, ok_statuses, result)
        else:
            transport = AiohttpTransport(client=session)
            async with httpx.AsyncClient(transport=transport, timeout=timeout_s) as hx:

                async def send() -> int:
                    resp = await hx.post(target.url, content=target.body, headers=headers)
                    return resp.status_code

                await _drive(send, rate, duration_s, timeout_s, ok_statuses, result)
    if result.sent:
        result.client_cpu_us_per_req = (_cpu_seconds() - cpu_before) * 1e6 / result.sent
    return result


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--body", default="{}", help="JSON request body")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=512)
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp")
    parser.add_argument("--ok-status", type=int, action="append", default=[], help="(200)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one load test and print its :class:`LoadResult` as JSON on stdout."""
    args = _parse_args(argv)
    headers = {
        name.strip(): value.strip() for name, _, value in (h.partition(":") for h in args.header)
    }
    target = Target(url=args.url, headers=headers, body=args.body.encode())
    try:
        import uvloop

        runner: Callable[[Awaitable[LoadResult]], LoadResult] = uvloop.run  # type: ignore[assignment]
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run  # type: ignore[assignment]
    started = time.time()
    result = runner(
        run_open_loop(
            target,
            args.rate,
            args.duration,
            timeout_s=args.timeout,
            connections=args.connections,
            client=args.client,
            ok_statuses=frozenset(args.ok_status or [200]),
        )
    )
    out = result.to_json()
    out["started_at"] = started
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
