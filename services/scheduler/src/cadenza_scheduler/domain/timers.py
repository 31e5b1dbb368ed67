"""Timers as the Faust shell sees them: which are due, and the TimerFired to send for each."""

from __future__ import annotations

from datetime import datetime

from cadenza_common.events import TimerFired
from cadenza_scheduler.domain.state import ExecutionState, Timer
from cadenza_scheduler.domain.tx import derived_id


def timer_fired(state: ExecutionState, timer: Timer) -> TimerFired:
    """The command that fires `timer` (same event id every time: safe to send twice)."""
    return TimerFired(
        event_id=derived_id(state.execution_id, f"timer:{timer.timer_id}"),
        occurred_at=timer.due_at,
        execution_id=state.execution_id,
        org_id=state.org_id,
        timer_id=timer.timer_id,
        kind=timer.kind,
        due_at=timer.due_at,
        node_id=timer.node_id,
        attempt=timer.attempt,
    )


def due_timers(state: ExecutionState, now: datetime) -> list[TimerFired]:
    """TimerFired commands for every timer of `state` due at or before `now`, earliest first."""
    due = sorted((t for t in state.timers if t.due_at <= now), key=lambda t: t.due_at)
    return [timer_fired(state, t) for t in due]


def next_due(state: ExecutionState) -> datetime | None:
    """When this execution's earliest timer is due (None when it has none)."""
    return min((t.due_at for t in state.timers), default=None)
