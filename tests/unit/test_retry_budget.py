"""RetryBudget: retries bounded by a ratio of traffic plus a floor, over a sliding window."""

from __future__ import annotations

from breakers.clock import FakeClock
from breakers.retry_budget import RetryBudget
from router.config import RetryBudgetConfig


def spend_all(budget: RetryBudget, limit: int = 10_000) -> int:
    spent = 0
    while spent < limit and budget.try_spend():
        spent += 1
    return spent


def test_ratio_of_requests() -> None:
    """With no floor, 50 requests at ratio 0.2 allow exactly 10 retries."""
    budget = RetryBudget(0.2, 0.0, FakeClock())
    assert not budget.try_spend()
    for _ in range(50):
        budget.record_request()
    assert spend_all(budget) == 10
    assert budget.retries_in_window == 10


def test_floor_allows_retries_without_traffic() -> None:
    """min_per_s × window_s retries are allowed even with no first attempts."""
    budget = RetryBudget(0.2, 0.5, FakeClock(), window_s=10)
    assert spend_all(budget) == 5


def test_ratio_and_floor_add_up() -> None:
    """The allowance is ratio × requests + floor."""
    budget = RetryBudget(0.5, 0.1, FakeClock(), window_s=10)
    for _ in range(8):
        budget.record_request()
    assert budget.allowance == 5
    assert spend_all(budget) == 5


def test_window_slides() -> None:
    """Requests and retries older than the window stop counting."""
    clock = FakeClock(start=1_000.0)
    budget = RetryBudget(1.0, 0.0, clock, window_s=10)
    for _ in range(3):
        budget.record_request()
    assert spend_all(budget) == 3
    clock.advance(9)
    assert not budget.try_spend()  # still inside the window
    budget.record_request()
    assert spend_all(budget) == 1
    clock.advance(1)  # the first second's bucket has left the window
    assert budget.requests_in_window == 1
    assert budget.retries_in_window == 1
    assert not budget.try_spend()
    clock.advance(10)
    assert budget.requests_in_window == 0
    assert budget.retries_in_window == 0


def test_from_config() -> None:
    """The config's defaults give 50 retries of floor over 10 s."""
    budget = RetryBudget.from_config(RetryBudgetConfig(), FakeClock())
    assert budget.allowance == 50
