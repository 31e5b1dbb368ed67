"""ExecutionRequested: create the state, or refuse a snapshot that is not a valid workflow."""

from __future__ import annotations

from datetime import datetime

from cadenza_common.events import (
    ChildExecutionFinished,
    ErrorClass,
    Event,
    ExecutionFailed,
    ExecutionRequested,
    ExecutionStarted,
    ExecutionStatus,
    StepError,
    TimerKind,
)
from cadenza_common.workflow import duration_seconds
from cadenza_scheduler.domain.state import ExecutionState, NodeState, validated_spec
from cadenza_scheduler.domain.tx import Tx, derived_id


def requested(
    event: ExecutionRequested, now: datetime
) -> tuple[ExecutionState | None, list[Event]]:
    """Start the execution (history + first ready nodes), or fail it when the spec is invalid."""
    from cadenza_scheduler.domain.decide import advance

    result = validated_spec(event.workflow)
    if result.spec is None:
        problems = "; ".join(f"{e.path}: {e.message}" for e in result.errors[:5])
        return None, _refused(event, now, f"invalid workflow snapshot: {problems}")
    state = ExecutionState(
        execution_id=event.execution_id,
        org_id=event.org_id,
        workflow_id=event.workflow_id,
        workflow_version=event.workflow_version,
        spec=result.spec,
        input=event.input,
        initiated_by=event.initiated_by,
        parent=event.parent,
        jitter_seed=event.jitter_seed,
        sub_workflows=event.sub_workflows,
        started_at=now,
        nodes={n.id: NodeState() for n in result.spec.nodes},
    )
    tx = Tx(state, now)
    tx.history(
        ExecutionStarted,
        workflow_id=event.workflow_id,
        workflow_version=event.workflow_version,
        workflow_slug=result.spec.slug,
        input=event.input,
        external_id=event.external_id,
        initiated_by=event.initiated_by,
        parent=event.parent,
    )
    timeout = duration_seconds(result.spec.timeout)
    if timeout:
        tx.add_timer(TimerKind.EXECUTION_TIMEOUT, tx.after(timeout), None, None)
    advance(tx)
    return tx.state, tx.emits


def _refused(event: ExecutionRequested, now: datetime, message: str) -> list[Event]:
    """No state is kept; a repeat of the request re-emits the same events (same ids)."""
    error = StepError(
        error_class=ErrorClass.INVALID_REQUEST, message=message[:2000], retryable=False
    )
    xid, org = event.execution_id, event.org_id
    emits: list[Event] = [
        ExecutionStarted(
            event_id=derived_id(xid, "refused:1"),
            occurred_at=now,
            execution_id=xid,
            org_id=org,
            seq=1,
            workflow_id=event.workflow_id,
            workflow_version=event.workflow_version,
            input=event.input,
            external_id=event.external_id,
            initiated_by=event.initiated_by,
            parent=event.parent,
        ),
        ExecutionFailed(
            event_id=derived_id(xid, "refused:2"),
            occurred_at=now,
            execution_id=xid,
            org_id=org,
            seq=2,
            error=error,
        ),
    ]
    if event.parent is not None:
        emits.append(
            ChildExecutionFinished(
                event_id=derived_id(xid, "refused:3"),
                occurred_at=now,
                execution_id=event.parent.execution_id,
                org_id=org,
                node_id=event.parent.node_id,
                child_execution_id=xid,
                status=ExecutionStatus.FAILED,
                error=error,
            )
        )
    return emits
