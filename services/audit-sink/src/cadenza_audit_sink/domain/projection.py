"""Folds execution history events into `execution_runs` and `step_runs` rows (no I/O).

`apply(projection, event)` changes the rows an event touches and returns the
status transition it caused, which becomes the event's audit row.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from cadenza_common import events as ev


class StepStatus(StrEnum):
    """A step's status as `step_runs.status` shows it."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING_APPROVAL = "waiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    COMPENSATED = "compensated"


OPEN_STEP = frozenset(
    {StepStatus.SCHEDULED, StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING_APPROVAL}
)
TERMINAL_RUN = frozenset(
    {
        ev.ExecutionStatus.SUCCEEDED,
        ev.ExecutionStatus.FAILED,
        ev.ExecutionStatus.CANCELLED,
        ev.ExecutionStatus.TIMED_OUT,
    }
)


@dataclass
class RunRow:
    """One `execution_runs` row."""

    id: uuid.UUID
    org_id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int
    status: str
    started_at: datetime
    workflow_slug: str = ""
    external_id: str | None = None
    parent_execution_id: uuid.UUID | None = None
    input: Any = field(default_factory=dict)
    output: Any = None
    error: Any = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    last_seq: int = 0
    compensation_order: list[str] | None = None


@dataclass
class StepRow:
    """One `step_runs` row."""

    execution_id: uuid.UUID
    node_id: str
    org_id: uuid.UUID
    status: str
    node_type: str = ""
    attempts: int = 0
    input: Any = None
    output: Any = None
    output_ref: str | None = None
    error: Any = None
    status_reason: str | None = None
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class Transition:
    """What one history event did: the resource it moved and its status before and after."""

    resource_type: str
    resource_id: str
    before: str | None
    after: str | None


@dataclass
class Projection:
    """The rows of the executions a batch touches, as loaded, then as changed by `apply`."""

    runs: dict[uuid.UUID, RunRow] = field(default_factory=dict)
    steps: dict[uuid.UUID, dict[str, StepRow]] = field(default_factory=dict)
    dirty_runs: set[uuid.UUID] = field(default_factory=set)
    dirty_steps: set[tuple[uuid.UUID, str]] = field(default_factory=set)

    def add_step(self, row: StepRow) -> None:
        self.steps.setdefault(row.execution_id, {})[row.node_id] = row

    def changed_runs(self) -> list[RunRow]:
        return [self.runs[i] for i in sorted(self.dirty_runs)]

    def changed_steps(self) -> list[StepRow]:
        return [self.steps[x][n] for x, n in sorted(self.dirty_steps)]


def apply(projection: Projection, event: ev.ExecutionEvent) -> Transition:
    """Apply one history event to the projection; return the transition for the audit log."""
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise TypeError(f"{type(event).__name__} is not a history event")
    run = projection.runs.get(event.execution_id)
    if run is not None and event.seq is not None:
        run.last_seq = max(run.last_seq, event.seq)
        projection.dirty_runs.add(run.id)
    return handler(projection, event)


# --- executions ---------------------------------------------------------------------------------


def _execution(event: ev.ExecutionEvent, before: str | None, after: str | None) -> Transition:
    return Transition("execution", str(event.execution_id), before, after)


def _started(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.ExecutionStarted)
    run = p.runs.get(e.execution_id)
    before = run.status if run else None
    if run is None:
        run = RunRow(
            id=e.execution_id,
            org_id=e.org_id,
            workflow_id=e.workflow_id,
            workflow_version=e.workflow_version,
            status=ev.ExecutionStatus.RUNNING,
            started_at=e.occurred_at,
        )
        p.runs[run.id] = run
    run.workflow_slug = e.workflow_slug
    run.external_id = e.external_id
    run.parent_execution_id = e.parent.execution_id if e.parent else None
    run.input = e.input
    run.last_seq = max(run.last_seq, e.seq or 0)
    p.dirty_runs.add(run.id)
    return _execution(e, before, run.status)


def _finish(
    p: Projection, e: ev.ExecutionEvent, status: str, output: Any, error: Any
) -> Transition:
    run = p.runs.get(e.execution_id)
    if run is None:  # history without its ExecutionStarted (retention or a foreign topic)
        return _execution(e, None, status)
    before = run.status
    run.status, run.output, run.error, run.finished_at = status, output, error, e.occurred_at
    run.duration_ms = (e.occurred_at - run.started_at).total_seconds() * 1000.0
    p.dirty_runs.add(run.id)
    for step in p.steps.get(run.id, {}).values():
        if step.status in OPEN_STEP:
            step.status, step.finished_at = StepStatus.CANCELLED, e.occurred_at
            step.status_reason = f"execution {status}"
            p.dirty_steps.add((step.execution_id, step.node_id))
    return _execution(e, before, status)


def _succeeded(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.ExecutionSucceeded)
    return _finish(p, e, ev.ExecutionStatus.SUCCEEDED, e.output, None)


def _failed(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.ExecutionFailed)
    error = {
        **e.error.model_dump(mode="json"),
        "failed_node": e.failed_node,
        "compensated": e.compensated,
    }
    return _finish(p, e, ev.ExecutionStatus.FAILED, None, error)


def _cancelled(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.ExecutionCancelled)
    error = {
        "error_class": ev.ErrorClass.CANCELLED.value,
        "message": e.reason or "cancelled",
        "retryable": False,
        "cancelled_by": e.cancelled_by.model_dump(mode="json"),
    }
    return _finish(p, e, ev.ExecutionStatus.CANCELLED, None, error)


def _timed_out(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.ExecutionTimedOut)
    error = {
        "error_class": ev.ErrorClass.TIMEOUT.value,
        "message": "execution timed out",
        "retryable": False,
        "timeout_s": e.timeout_s,
    }
    return _finish(p, e, ev.ExecutionStatus.TIMED_OUT, None, error)


def _compensation_started(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.CompensationStarted)
    run = p.runs.get(e.execution_id)
    if run is None:
        return _execution(e, None, None)
    run.compensation_order = list(e.order)
    p.dirty_runs.add(run.id)
    return _execution(e, run.status, run.status)


# --- steps --------------------------------------------------------------------------------------


def _step(p: Projection, e: ev.StepEvent, *, ran: bool = True) -> StepRow:
    """The node's row, created on first sight; `ran=False` for a node skipped before it ran."""
    steps = p.steps.setdefault(e.execution_id, {})
    row = steps.get(e.node_id)
    if row is None:
        row = StepRow(e.execution_id, e.node_id, e.org_id, status=StepStatus.SCHEDULED)
        steps[e.node_id] = row
    if ran:
        row.attempts = max(row.attempts, e.attempt)
    p.dirty_steps.add((e.execution_id, e.node_id))
    return row


def _compensation_order(p: Projection, e: ev.StepEvent) -> list[str]:
    run = p.runs.get(e.execution_id)
    return (run.compensation_order or []) if run else []


def _is_compensation_of_done_node(p: Projection, e: ev.StepEvent) -> bool:
    """A step event for a node that already succeeded, after compensation started: its undo."""
    row = p.steps.get(e.execution_id, {}).get(e.node_id)
    return (
        row is not None
        and row.status in (StepStatus.SUCCEEDED, StepStatus.COMPENSATED)
        and e.node_id in _compensation_order(p, e)
    )


_SEPARATORS = re.compile(r"[:./]")


def _compensation_target(p: Projection, e: ev.StepEvent) -> StepRow | None:
    """The node a separately named compensation step (`compensate:X`, `X.compensation`) undoes."""
    order = _compensation_order(p, e)
    tokens = set(_SEPARATORS.split(e.node_id)) - {e.node_id}
    for node_id in order:
        if node_id in tokens:
            return p.steps.get(e.execution_id, {}).get(node_id)
    return None


def _transition(e: ev.StepEvent, row: StepRow, before: str | None) -> Transition:
    return Transition("step", f"{e.execution_id}/{e.node_id}", before, row.status)


def _scheduled(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.StepScheduled)
    if _is_compensation_of_done_node(p, e):
        row = _step(p, e)
        row.status_reason = "compensating"
        return _transition(e, row, row.status)
    existing = p.steps.get(e.execution_id, {}).get(e.node_id)
    before = existing.status if existing else None
    row = _step(p, e)
    row.status, row.node_type, row.input = StepStatus.SCHEDULED, e.node_type, e.input
    row.scheduled_at = row.scheduled_at or e.occurred_at
    row.finished_at, row.status_reason = None, None
    return _transition(e, row, before)


def _step_started(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.StepStarted)
    if _is_compensation_of_done_node(p, e):
        row = _step(p, e)
        return _transition(e, row, row.status)
    row = _step(p, e)
    before = row.status
    row.status = StepStatus.RUNNING
    row.node_type = row.node_type or e.node_type
    row.started_at = row.started_at or e.occurred_at
    row.finished_at = None
    return _transition(e, row, before)


def _step_succeeded(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.StepSucceeded)
    if _is_compensation_of_done_node(p, e):
        row = _step(p, e)
        before = row.status
        row.status, row.status_reason = StepStatus.COMPENSATED, "compensated"
        return _transition(e, row, before)
    row = _step(p, e)
    before = row.status
    row.status, row.output, row.output_ref = StepStatus.SUCCEEDED, e.output, e.output_ref
    row.error, row.finished_at = None, e.occurred_at
    target = _compensation_target(p, e)
    if target is not None:
        target.status, target.status_reason = StepStatus.COMPENSATED, f"compensated by {e.node_id}"
        p.dirty_steps.add((target.execution_id, target.node_id))
    return _transition(e, row, before)


def _step_failed(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.StepFailed)
    error = e.error.model_dump(mode="json")
    if _is_compensation_of_done_node(p, e):
        row = _step(p, e)
        row.error, row.status_reason = error, "compensation failed"
        return _transition(e, row, row.status)
    row = _step(p, e)
    before = row.status
    # the scheduler ends a node still running at cancellation with StepFailed(cancelled)
    cancelled = e.error.error_class == ev.ErrorClass.CANCELLED
    status = StepStatus.CANCELLED if cancelled else StepStatus.FAILED
    row.status, row.error, row.finished_at = status, error, e.occurred_at
    return _transition(e, row, before)


def _step_retrying(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.StepRetrying)
    row = _step(p, e)
    before = row.status
    row.status, row.error, row.finished_at = (
        StepStatus.RETRYING,
        e.error.model_dump(mode="json"),
        None,
    )
    row.status_reason = f"attempt {e.next_attempt} at {e.retry_at.isoformat()}"
    return _transition(e, row, before)


def _step_skipped(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.StepSkipped)
    existing = p.steps.get(e.execution_id, {}).get(e.node_id)
    before = existing.status if existing else None
    row = _step(p, e, ran=existing is not None)
    row.status, row.status_reason, row.finished_at = StepStatus.SKIPPED, e.reason, e.occurred_at
    return _transition(e, row, before)


def _approval_requested(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.ApprovalRequested)
    existing = p.steps.get(e.execution_id, {}).get(e.node_id)
    before = existing.status if existing else None
    row = _step(p, e)
    row.status, row.node_type = StepStatus.WAITING_APPROVAL, row.node_type or "human_approval"
    row.started_at = row.started_at or e.occurred_at
    row.scheduled_at = row.scheduled_at or e.occurred_at
    return _transition(e, row, before)


def _approval_decided(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.ApprovalDecided)
    row = _step(p, e)
    row.output = {"decision": e.decision, "approvers": e.approvers, "comments": e.comments}
    row.status_reason = e.decision
    return _transition(e, row, row.status)


def _approval_escalated(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.ApprovalEscalated)
    row = _step(p, e)
    row.status_reason = "escalated to " + ", ".join(e.escalate_to)
    return _transition(e, row, row.status)


def _approval_expired(p: Projection, e: ev.ExecutionEvent) -> Transition:
    assert isinstance(e, ev.ApprovalExpired)
    row = _step(p, e)
    row.status_reason = f"expired (on_timeout: {e.on_timeout})"
    return _transition(e, row, row.status)


_HANDLERS: dict[type[ev.Event], Callable[[Projection, ev.ExecutionEvent], Transition]] = {
    ev.ExecutionStarted: _started,
    ev.ExecutionSucceeded: _succeeded,
    ev.ExecutionFailed: _failed,
    ev.ExecutionCancelled: _cancelled,
    ev.ExecutionTimedOut: _timed_out,
    ev.CompensationStarted: _compensation_started,
    ev.StepScheduled: _scheduled,
    ev.StepStarted: _step_started,
    ev.StepSucceeded: _step_succeeded,
    ev.StepFailed: _step_failed,
    ev.StepRetrying: _step_retrying,
    ev.StepSkipped: _step_skipped,
    ev.ApprovalRequested: _approval_requested,
    ev.ApprovalDecided: _approval_decided,
    ev.ApprovalEscalated: _approval_escalated,
    ev.ApprovalExpired: _approval_expired,
}

HISTORY_EVENTS: frozenset[type[ev.Event]] = frozenset(_HANDLERS)
