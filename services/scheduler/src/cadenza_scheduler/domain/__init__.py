"""The scheduler's pure core: execution state and `decide()` (no I/O, no clock, no randomness)."""

from cadenza_scheduler.domain.decide import Decision, decide, topic_for
from cadenza_scheduler.domain.state import (
    ExecutionState,
    NodeState,
    NodeStatus,
    Timer,
    dump_state,
    load_state,
)
from cadenza_scheduler.domain.timers import due_timers, timer_fired

__all__ = [
    "Decision",
    "ExecutionState",
    "NodeState",
    "NodeStatus",
    "Timer",
    "decide",
    "due_timers",
    "dump_state",
    "load_state",
    "timer_fired",
    "topic_for",
]
