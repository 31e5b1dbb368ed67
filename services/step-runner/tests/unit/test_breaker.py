"""The circuit breaker: closed → open on the failure rate → half-open probe → closed/open."""

from __future__ import annotations

import pytest

from cadenza_step_runner.breaker import BreakerState, CircuitBreaker, CircuitOpen
from cadenza_step_runner.settings import BreakerSettings

SETTINGS = BreakerSettings(window=4, min_calls=3, failure_rate=0.5, cooldown_s=10)


def opened() -> CircuitBreaker:
    breaker = CircuitBreaker("crm", SETTINGS)
    for _ in range(3):
        breaker.before_call(0)
        breaker.record(False, 0)
    return breaker


def test_stays_closed_below_min_calls() -> None:
    breaker = CircuitBreaker("crm", SETTINGS)

    breaker.record(False, 0)
    breaker.record(False, 0)

    assert breaker.state is BreakerState.CLOSED


def test_opens_on_failure_rate_and_fails_fast_naming_itself() -> None:
    breaker = opened()

    with pytest.raises(CircuitOpen, match="crm") as info:
        breaker.before_call(5)

    assert breaker.state is BreakerState.OPEN
    assert info.value.retry_after_s == 5


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    breaker = opened()

    breaker.before_call(11)
    with pytest.raises(CircuitOpen):
        breaker.before_call(11)
    breaker.record(True, 11)

    assert breaker.state is BreakerState.CLOSED


def test_failed_probe_reopens() -> None:
    breaker = opened()

    breaker.before_call(11)
    breaker.record(False, 11)

    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        breaker.before_call(12)
