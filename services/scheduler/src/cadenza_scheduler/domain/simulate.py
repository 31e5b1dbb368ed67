"""A pure driver for decide(): plays runner, approvals and timer service with a fake clock.

Used by the unit tests and `bench/decide.py`; the Faust shell does not need it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from cadenza_common.events import (
    CancelRequested,
    ChildExecutionFinished,
    ErrorClass,
    Event,
    ExecutionRequested,
    ExecutionStatus,
    StepError,
    StepFailed,
    StepReady,
    StepSucceeded,
    WorkflowSnapshot,
)
from cadenza_scheduler.domain.decide import Decision, decide
from cadenza_scheduler.domain.state import ExecutionState, NodeStatus
from cadenza_scheduler.domain.timers import timer_fired

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ORG = uuid.UUID("0190f0f0-0000-7000-8000-000000000001")
WORKFLOW = uuid.UUID("0190f0f0-0000-7000-8000-000000000002")


def request(
    workflow: dict[str, Any],
    input: dict[str, Any] | None = None,
    execution_id: uuid.UUID | None = None,
    jitter_seed: int = 0,
    sub_workflows: dict[str, WorkflowSnapshot] | None = None,
) -> ExecutionRequested:
    """An ExecutionRequested for `workflow` (and its bundled sub-workflows) with fixed ids."""
    return ExecutionRequested(
        execution_id=execution_id or uuid.UUID(int=0xC0FFEE),
        org_id=ORG,
        workflow_id=WORKFLOW,
        workflow_version=1,
        workflow=workflow,
        input=input or {},
        jitter_seed=jitter_seed,
        sub_workflows=sub_workflows or {},
        occurred_at=T0,
        event_id=uuid.UUID(int=1),
    )


class Run:
    """One execution driven through decide(), keeping every input and every emit."""

    def __init__(
        self,
        workflow: dict[str, Any],
        input: dict[str, Any] | None = None,
        jitter_seed: int = 0,
        now: datetime = T0,
        sub_workflows: dict[str, WorkflowSnapshot] | None = None,
    ) -> None:
        self.now = now
        self.state: ExecutionState | None = None
        self.inputs: list[tuple[Event, datetime]] = []
        self.emits: list[Event] = []
        self.last = self.apply(
            request(workflow, input, jitter_seed=jitter_seed, sub_workflows=sub_workflows)
        )

    @property
    def execution_id(self) -> uuid.UUID:
        assert self.state is not None
        return self.state.execution_id

    def apply(self, event: Event) -> Decision:
        decision = decide(self.state, event, self.now)
        self.inputs.append((event, self.now))
        self.state = decision.state
        self.emits += decision.emits
        self.last = decision
        return decision

    def status(self, node_id: str) -> NodeStatus:
        assert self.state is not None
        return self.state.node(node_id).status

    @property
    def execution_status(self) -> ExecutionStatus:
        assert self.state is not None
        return self.state.status

    def of_type(self, cls: type[Event]) -> list[Any]:
        return [e for e in self.emits if isinstance(e, cls)]

    def outstanding(self) -> list[StepReady]:
        """StepReady emits whose node attempt (or map item) is still running."""
        assert self.state is not None
        return [r for r in self.of_type(StepReady) if self._waiting_for(r.node_id, r.attempt)]

    def _waiting_for(self, key: str, attempt: int) -> bool:
        from cadenza_scheduler.domain.nodes import parse_item_key

        assert self.state is not None
        if key.startswith("compensate:"):
            comp = self.state.compensation
            return bool(
                comp
                and comp.position < len(comp.order)
                and comp.order[comp.position] == key[11:]
                and self.state.phase == "compensating"
            )
        item = parse_item_key(key)
        if item is not None:
            states = self.state.node(item[0]).item_states or []
            s = states[item[1]]
            return s.status is NodeStatus.RUNNING and s.attempt == attempt
        node = self.state.node(key)
        return node.status is NodeStatus.RUNNING and node.attempt == attempt

    def attempt_of(self, key: str) -> int:
        ready = [r for r in self.of_type(StepReady) if r.node_id == key]
        if ready:
            return int(ready[-1].attempt)
        assert self.state is not None
        return max(self.state.node(key).attempt, 1)

    def succeed(self, key: str, output: Any = None, attempt: int | None = None) -> Decision:
        return self.apply(
            StepSucceeded(
                execution_id=self.execution_id,
                org_id=ORG,
                node_id=key,
                attempt=attempt or self.attempt_of(key),
                output=output,
                occurred_at=self.now,
                event_id=uuid.uuid5(uuid.NAMESPACE_OID, f"ok:{key}:{len(self.inputs)}"),
            )
        )

    def fail(
        self,
        key: str,
        error_class: ErrorClass = ErrorClass.HTTP_5XX,
        retryable: bool = True,
        status_code: int | None = None,
        attempt: int | None = None,
    ) -> Decision:
        error = StepError(
            error_class=error_class, message="boom", retryable=retryable, status_code=status_code
        )
        return self.apply(
            StepFailed(
                execution_id=self.execution_id,
                org_id=ORG,
                node_id=key,
                attempt=attempt or self.attempt_of(key),
                error=error,
                occurred_at=self.now,
                event_id=uuid.uuid5(uuid.NAMESPACE_OID, f"ko:{key}:{len(self.inputs)}"),
            )
        )

    def approve(self, key: str, decision: str = "approved") -> Decision:
        return self.succeed(key, {"decision": decision, "approvers": ["u1"], "comments": ["ok"]})

    def cancel(self, reason: str = "stop") -> Decision:
        return self.apply(
            CancelRequested(
                execution_id=self.execution_id, org_id=ORG, reason=reason, occurred_at=self.now
            )
        )

    def child_finished(self, node_id: str, status: ExecutionStatus, output: Any = None) -> Decision:
        assert self.state is not None
        child = self.state.node(node_id).child_execution_id
        assert child is not None
        return self.apply(
            ChildExecutionFinished(
                execution_id=self.execution_id,
                org_id=ORG,
                node_id=node_id,
                child_execution_id=child,
                status=status,
                output=output,
                occurred_at=self.now,
            )
        )

    def fire_next_timer(self) -> Decision | None:
        """Move the clock to the earliest timer and fire it (None when there is none)."""
        if self.state is None or not self.state.timers:
            return None
        timer = min(self.state.timers, key=lambda t: t.due_at)
        self.now = max(self.now, timer.due_at)
        return self.apply(timer_fired(self.state, timer))

    def advance(self, delta: timedelta) -> None:
        self.now += delta

    def replay(self) -> tuple[ExecutionState | None, list[Event]]:
        """Apply every recorded input again from nothing: the result must be identical."""
        state: ExecutionState | None = None
        emits: list[Event] = []
        for event, at in self.inputs:
            decision = decide(state, event, at)
            state = decision.state
            emits += decision.emits
        return state, emits
