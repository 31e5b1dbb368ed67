"""Per-connection circuit breaker: closed → open on a failure rate, half-open after a cool-down.

Pure: the caller passes the monotonic time in, so tests drive the clock.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

from cadenza_step_runner.settings import BreakerSettings


class BreakerState(IntEnum):
    """Breaker states; the values are what the `breaker_state` gauge shows."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitOpen(Exception):
    """The connection's breaker is open: fail fast (retryable) for `retry_after_s`."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"circuit breaker '{name}' is open")
        self.name = name
        self.retry_after_s = retry_after_s


class CircuitBreaker:
    """Counts outcomes of the last `window` calls; opens when the failure rate is too high."""

    def __init__(self, name: str, settings: BreakerSettings) -> None:
        self.name = name
        self._settings = settings
        self._outcomes: deque[bool] = deque(maxlen=settings.window)
        self.state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probe_in_flight = False

    def before_call(self, now: float) -> None:
        """Admit a call or raise `CircuitOpen`; after the cool-down one probe is let through."""
        if self.state is BreakerState.OPEN:
            remaining = self._opened_at + self._settings.cooldown_s - now
            if remaining > 0:
                raise CircuitOpen(self.name, remaining)
            self.state = BreakerState.HALF_OPEN
            self._probe_in_flight = False
        if self.state is BreakerState.HALF_OPEN:
            if self._probe_in_flight:
                raise CircuitOpen(self.name, self._settings.cooldown_s)
            self._probe_in_flight = True

    def record(self, success: bool, now: float) -> None:
        """Record a call's outcome (only failures that say the service is unwell count)."""
        if self.state is BreakerState.HALF_OPEN:
            self._probe_in_flight = False
            if success:
                self.state = BreakerState.CLOSED
                self._outcomes.clear()
            else:
                self._open(now)
            return
        self._outcomes.append(success)
        failures = self._outcomes.count(False)
        enough = len(self._outcomes) >= self._settings.min_calls
        if enough and failures / len(self._outcomes) >= self._settings.failure_rate:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = now
        self._outcomes.clear()
