"""ProviderBreaker: pybreaker on a fake clock, with neutral outcomes and bounded probes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from breakers.breaker import BreakerOpenError, ProviderBreaker, is_provider_failure
from breakers.clock import FakeClock
from router.errors import UpstreamError


class Boom(Exception):
    """A provider failure."""


def make(
    clock: FakeClock, *, fail_max: int = 3, probes: int = 1
) -> tuple[ProviderBreaker, list[tuple[str, str, str]]]:
    transitions: list[tuple[str, str, str]] = []
    breaker = ProviderBreaker(
        "p1",
        fail_max=fail_max,
        reset_timeout_s=30.0,
        half_open_max_probes=probes,
        clock=clock,
        on_transition=lambda *t: transitions.append(t),
    )
    return breaker, transitions


def state(breaker: ProviderBreaker) -> str:
    """Read the state through a call, so mypy does not narrow it between clock moves."""
    return breaker.state


async def fail(breaker: ProviderBreaker, exc: BaseException | None = None) -> None:
    with pytest.raises(type(exc) if exc is not None else Boom):
        async with breaker.calling():
            raise exc if exc is not None else Boom()


async def succeed(breaker: ProviderBreaker) -> None:
    async with breaker.calling():
        await asyncio.sleep(0)


async def trip(breaker: ProviderBreaker, n: int = 3) -> None:
    for _ in range(n):
        await fail(breaker)


async def test_opens_after_exactly_fail_max_failures() -> None:
    """fail_max - 1 failures keep it closed; the fail_max-th opens it and re-raises the original."""
    clock = FakeClock()
    breaker, transitions = make(clock)
    await trip(breaker, 2)
    assert state(breaker) == "closed"
    assert breaker.failure_count == 2
    await fail(breaker)
    assert state(breaker) == "open"
    assert transitions == [("p1", "closed", "open")]


async def test_open_breaker_rejects_without_running_body() -> None:
    """An open breaker raises BreakerOpenError and never runs the body."""
    clock = FakeClock()
    breaker, _ = make(clock)
    await trip(breaker)
    ran = False
    with pytest.raises(BreakerOpenError) as info:
        async with breaker.calling():
            ran = True
    assert not ran
    assert info.value.reason == "breaker_open"
    assert info.value.provider == "p1"


async def test_success_resets_consecutive_failures() -> None:
    """A success in between resets the count, so failures must be consecutive."""
    breaker, _ = make(FakeClock())
    await trip(breaker, 2)
    await succeed(breaker)
    assert breaker.failure_count == 0
    await trip(breaker, 2)
    assert state(breaker) == "closed"


async def test_stays_open_until_reset_timeout_on_the_clock() -> None:
    """Open until exactly reset_timeout_s elapses on the fake clock, then half-open."""
    clock = FakeClock()
    breaker, _ = make(clock)
    await trip(breaker)
    clock.advance(29.9)
    assert state(breaker) == "open"
    assert breaker.open_remaining_s == pytest.approx(0.1)
    with pytest.raises(BreakerOpenError):
        await succeed(breaker)
    clock.advance(0.1)
    assert state(breaker) == "half_open"
    assert breaker.probe_available


async def test_probe_success_closes() -> None:
    """A successful half-open probe closes the breaker and fires both transitions."""
    clock = FakeClock()
    breaker, transitions = make(clock)
    await trip(breaker)
    clock.advance(30)
    await succeed(breaker)
    assert state(breaker) == "closed"
    assert breaker.failure_count == 0
    assert transitions == [
        ("p1", "closed", "open"),
        ("p1", "open", "half_open"),
        ("p1", "half_open", "closed"),
    ]


async def test_probe_failure_reopens_with_fresh_timeout() -> None:
    """A failed probe reopens the breaker, and the timeout counts from the reopening."""
    clock = FakeClock()
    breaker, transitions = make(clock)
    await trip(breaker)
    clock.advance(30)
    await fail(breaker)
    assert state(breaker) == "open"
    assert transitions[-1] == ("p1", "half_open", "open")
    clock.advance(29)
    assert state(breaker) == "open"
    clock.advance(1)
    assert state(breaker) == "half_open"


@pytest.mark.parametrize("probes", [1, 2, 3])
async def test_half_open_admits_exactly_max_probes(probes: int) -> None:
    """Concurrent callers beyond half_open_max_probes get probe_busy until a probe resolves."""
    clock = FakeClock()
    breaker, _ = make(clock, probes=probes)
    await trip(breaker)
    clock.advance(30)
    release = asyncio.Event()
    entered = 0

    async def probe() -> None:
        nonlocal entered
        async with breaker.calling():
            entered += 1
            await release.wait()

    tasks = [asyncio.create_task(probe()) for _ in range(probes)]
    await asyncio.sleep(0)
    assert entered == probes
    assert breaker.probes_inflight == probes
    assert not breaker.probe_available
    with pytest.raises(BreakerOpenError) as info:
        await succeed(breaker)
    assert info.value.reason == "probe_busy"
    release.set()
    await asyncio.gather(*tasks)
    assert state(breaker) == "closed"
    assert breaker.probes_inflight == 0


async def test_cancellation_is_neutral_in_half_open() -> None:
    """A cancelled probe neither closes nor reopens: still half-open, with a free slot."""
    clock = FakeClock()
    breaker, transitions = make(clock)
    await trip(breaker)
    clock.advance(30)
    started = asyncio.Event()

    async def probe() -> None:
        async with breaker.calling():
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(probe())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert state(breaker) == "half_open"
    assert breaker.probe_available
    assert transitions[-1] == ("p1", "open", "half_open")


async def test_cancellation_is_neutral_when_closed() -> None:
    """CancelledError neither counts as a failure nor resets the failure count."""
    breaker, _ = make(FakeClock())
    await trip(breaker, 2)
    await fail(breaker, asyncio.CancelledError())
    assert breaker.failure_count == 2
    assert state(breaker) == "closed"


@pytest.mark.parametrize("kind", ["invalid_request", "content_policy", "rate_limited", "canceled"])
async def test_neutral_upstream_kinds_do_not_count(kind: str) -> None:
    """Caller faults, 429s and cancellations never trip the breaker nor reset its count."""
    breaker, _ = make(FakeClock())
    await trip(breaker, 2)
    for _ in range(5):
        await fail(breaker, UpstreamError(kind, "nope", provider="p1"))  # type: ignore[arg-type]
    assert breaker.failure_count == 2
    assert state(breaker) == "closed"


@pytest.mark.parametrize(
    "exc",
    [
        UpstreamError("upstream_unavailable", "503"),
        UpstreamError("timeout", "slow"),
        UpstreamError("malformed_response", "junk"),
        httpx.ConnectError("refused"),
        TimeoutError(),
    ],
)
async def test_provider_failures_count(exc: Exception) -> None:
    """Upstream 5xx, timeouts, connection errors and malformed bodies are failures."""
    breaker, _ = make(FakeClock(), fail_max=1)
    await fail(breaker, exc)
    assert state(breaker) == "open"


def test_is_provider_failure_classification() -> None:
    """The outcome classifier matches the breaker's accounting."""
    assert is_provider_failure(UpstreamError("auth", "bad key"))
    assert not is_provider_failure(UpstreamError("content_policy", "no"))
    assert not is_provider_failure(asyncio.CancelledError())
    assert not is_provider_failure(KeyboardInterrupt())


async def test_force_open_holds_until_force_closed() -> None:
    """An operator-forced open never half-opens on its own; force_closed closes and resets."""
    clock = FakeClock()
    breaker, transitions = make(clock)
    await trip(breaker, 2)
    breaker.force_open()
    clock.advance(3600)
    assert state(breaker) == "open"
    assert breaker.rejection_reason() == "breaker_open"
    breaker.force_closed()
    assert state(breaker) == "closed"
    assert breaker.failure_count == 0
    await succeed(breaker)
    assert transitions == [("p1", "closed", "open"), ("p1", "open", "closed")]


async def test_failing_callback_does_not_break_accounting() -> None:
    """An exception in on_transition is logged, not propagated into the breaker."""

    def bad(*_: str) -> None:
        raise RuntimeError("metrics down")

    breaker = ProviderBreaker(
        "p1", fail_max=1, reset_timeout_s=1, clock=FakeClock(), on_transition=bad
    )
    await fail(breaker)
    assert state(breaker) == "open"


async def test_probe_early_turns_an_open_breaker_half_open_after_min_open_s() -> None:
    """Panic mode: an open breaker may be probed before its reset timeout, but not
    before ``min_open_s``; a failed early probe reopens it with a fresh timeout."""
    clock = FakeClock()
    breaker, transitions = make(clock)
    assert not breaker.probe_early(3.0)  # closed: nothing to do
    await trip(breaker)
    clock.advance(2.9)
    assert not breaker.probe_early(3.0)
    assert state(breaker) == "open"
    clock.advance(0.1)
    assert breaker.probe_early(3.0)
    assert state(breaker) == "half_open"
    assert transitions[-1] == ("p1", "open", "half_open")
    await fail(breaker)
    assert state(breaker) == "open"
    assert breaker.open_remaining_s == pytest.approx(30.0)
    assert not breaker.probe_early(3.0)  # the reopening restarted the clock
    clock.advance(3.0)
    assert breaker.probe_early(3.0)
    await succeed(breaker)
    assert state(breaker) == "closed"


async def test_probe_early_refuses_a_forced_open_or_busy_breaker() -> None:
    """An operator's hold is never cut short, and a probe in flight blocks another."""
    clock = FakeClock()
    breaker, _ = make(clock)
    breaker.force_open()
    clock.advance(100)
    assert not breaker.probe_early(0.0)
    breaker.force_closed()
    await trip(breaker)
    clock.advance(30)  # half-open by timeout: its probe slot is taken below
    async with breaker.calling():
        assert not breaker.probe_early(0.0)
    assert breaker.reset_timeout_s == 30.0
