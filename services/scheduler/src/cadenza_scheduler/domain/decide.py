"""decide(state, event, now) -> Decision: apply one event to one execution (pure).

No I/O, no clock, no randomness: time comes from `now`, ids derive from the execution
id and counters in the state, jitter from the seed carried by ExecutionRequested.

What the Faust shell does per record of `executions.commands`:
    state = load_state(raw) if raw else None          # domain.state
    decision = decide(state, event, now)
    save dump_state(decision.state) (delete the key when it is None)
    for topic, event in decision.routed(): send to topic, key event.partition_key()
    re-index the execution's timers: decision.state.timers (timer_id, kind, due_at,
    node_id, attempt); when due, send timers.timer_fired(state, timer) to
    executions.commands (same event id every time, a stale one is ignored).
A child ExecutionRequested (sub_workflow) carries its snapshot, taken from the bundle
(`ExecutionRequested.sub_workflows`) the trigger-api resolved when the root execution was
requested; the bundle is kept in the state and passed on to every child.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cadenza_common import expressions
from cadenza_common.events import (
    ApprovalDecided,
    ApprovalEscalated,
    ApprovalExpired,
    CancelRequested,
    ChildExecutionFinished,
    ErrorClass,
    Event,
    ExecutionRequested,
    ExecutionStatus,
    SignalReceived,
    StepError,
    StepFailed,
    StepReady,
    StepSucceeded,
    TimerFired,
    TimerKind,
    Topic,
)
from cadenza_common.workflow import HumanApprovalNode, ServiceCallNode, duration_seconds
from cadenza_scheduler.domain import nodes, outcomes
from cadenza_scheduler.domain.graph import Readiness, graph_of, readiness
from cadenza_scheduler.domain.requested import requested
from cadenza_scheduler.domain.state import ExecutionState, NodeStatus
from cadenza_scheduler.domain.tx import Tx

_COMMANDS = (
    ExecutionRequested,
    CancelRequested,
    TimerFired,
    SignalReceived,
    ChildExecutionFinished,
)
RUNNER_TYPES = frozenset({"service_call", "webhook_emit", "human_approval"})


def topic_for(event: Event) -> Topic:
    """The topic an emitted event goes to (its key is `event.partition_key()`)."""
    if isinstance(event, StepReady):
        return Topic.STEPS_READY
    if isinstance(event, _COMMANDS):
        return Topic.EXECUTIONS_COMMANDS
    return Topic.EXECUTIONS_EVENTS


@dataclass(frozen=True)
class Decision:
    """The state after one event (None: no execution) and the events to send, in order."""

    state: ExecutionState | None
    emits: list[Event] = field(default_factory=list)

    def routed(self) -> list[tuple[Topic, Event]]:
        """Each emit with its topic: StepReady → steps.ready; child requests, cancels and
        ChildExecutionFinished → executions.commands; the history → executions.events."""
        return [(topic_for(e), e) for e in self.emits]


def decide(state: ExecutionState | None, event: Event, now: datetime) -> Decision:
    """Apply one event to one execution; return the new state and the events to send.

    Never mutates `state`. Duplicate and stale events (an attempt already applied, a timer
    no longer pending, anything for a finished execution) return `state` unchanged and
    emit nothing.
    """
    if isinstance(event, ExecutionRequested):
        if state is not None:
            return Decision(state)  # idempotency guard: execution already exists
        new_state, emits = requested(event, now)
        return Decision(new_state, emits)
    handler = _HANDLERS.get(type(event))
    if state is None or state.finished or handler is None:
        return Decision(state)
    tx = Tx(state.clone(), now)
    if not handler(tx, event):
        return Decision(state)
    advance(tx, tx.state.written())
    return Decision(tx.state, tx.emits)


def advance(tx: Tx, touched: Iterable[str] | None = None) -> None:
    """Start every node whose join is satisfied, skip the dead ones, finish when all ended.

    Only nodes that depend on a `touched` node (all nodes when None) can have become ready
    or dead, as readiness depends on the predecessors alone. They are looked at in
    topological order, and a node started or skipped adds its own dependents: the same
    outcome as sweeping every node until nothing changes, without the sweeps.
    """
    graph = graph_of(tx.state.spec)
    position = graph.position
    if touched is None:
        expanded: set[str] = set()
        queue = list(range(len(graph.order)))  # sorted: already a heap
    else:
        expanded = set(touched)
        queue = list({position[s] for t in expanded for s in graph.succs[t]})
        heapq.heapify(queue)
    while queue and tx.state.phase == "running":
        node_id = graph.order[heapq.heappop(queue)]
        node = tx.state.nodes[node_id]  # read-only here; start() and _skip() take it writable
        if node.status is not NodeStatus.PENDING:
            continue
        verdict = readiness(graph.nodes[node_id], tx.state.nodes, graph)
        if verdict is Readiness.READY:
            nodes.start(tx, node_id, 1)
        elif verdict is Readiness.SKIP:
            _skip(tx, node_id, "no path leads here (branch not taken or predecessors skipped)")
        else:
            continue
        # the node, and whatever else its start changed, may make its dependents ready
        for changed in tx.state.written() - expanded:
            expanded.add(changed)
            for succ in graph.succs[changed]:
                heapq.heappush(queue, position[succ])
    if tx.state.phase == "running" and all(n.status.terminal for n in tx.state.nodes.values()):
        outcomes.finish(tx, ExecutionStatus.SUCCEEDED)


def _skip(tx: Tx, node_id: str, reason: str) -> None:
    from cadenza_common.events import StepSkipped

    node = tx.state.node(node_id)
    node.status, node.reason = NodeStatus.SKIPPED, reason
    tx.history(StepSkipped, node_id=node_id, attempt=1, reason=reason)


# --- step completions (runners and approvals) ------------------------------------------------


def _step_succeeded(tx: Tx, event: Any) -> bool:
    assert isinstance(event, StepSucceeded)
    if event.node_id.startswith(outcomes.COMPENSATE_PREFIX):
        return _compensated(tx, event.node_id, event.attempt, None)
    if tx.state.phase != "running":
        return False
    if (item := _running_item(tx, event.node_id, event.attempt)) is not None:
        nodes.item_succeeded(tx, *item, event.output)
        return True
    spec = _running_node(tx, event.node_id, event.attempt)
    if isinstance(spec, HumanApprovalNode):
        _approval_result(tx, spec, event.output)
    elif spec is not None:
        _call_succeeded(tx, spec, event.output)
    return spec is not None


def _step_failed(tx: Tx, event: Any) -> bool:
    assert isinstance(event, StepFailed)
    if event.node_id.startswith(outcomes.COMPENSATE_PREFIX):
        return _compensated(tx, event.node_id, event.attempt, event.error)
    if tx.state.phase != "running":
        return False
    if (item := _running_item(tx, event.node_id, event.attempt)) is not None:
        nodes.item_failed(tx, *item, event.error)
        return True
    spec = _running_node(tx, event.node_id, event.attempt)
    if isinstance(spec, HumanApprovalNode) and _is_rejection(event.error):
        # the approvals service answers an `on_reject: fail` rejection with StepFailed and
        # the decision in `details`: record it (ApprovalDecided) like any other decision
        _approval_result(tx, spec, event.error.details)
    elif spec is not None:
        outcomes.fail(tx, spec.id, event.error)
    return spec is not None


def _is_rejection(error: StepError) -> bool:
    return (
        error.error_class is ErrorClass.APPROVAL_REJECTED
        and isinstance(error.details, dict)
        and error.details.get("decision") == "rejected"
    )


def _compensated(tx: Tx, key: str, attempt: int, error: StepError | None) -> bool:
    if tx.state.phase != "compensating":
        return False
    before = tx.state.seq
    outcomes.compensation_done(tx, key.removeprefix(outcomes.COMPENSATE_PREFIX), attempt, error)
    return tx.state.seq != before


def _running_node(tx: Tx, node_id: str, attempt: int) -> Any:
    """The spec of the node this completion is for, if it is still waiting for it."""
    node = tx.state.nodes.get(node_id)
    if node is None or node.status is not NodeStatus.RUNNING or node.attempt != attempt:
        return None  # idempotency guard: unknown node, or this attempt already applied
    spec = tx.state.spec.node(node_id)
    return spec if spec.type in RUNNER_TYPES else None


def _running_item(tx: Tx, key: str, attempt: int) -> tuple[str, int] | None:
    parsed = nodes.parse_item_key(key)
    if parsed is None or parsed[0] not in tx.state.nodes:
        return None
    node = tx.state.node(parsed[0])
    states = node.item_states or []
    if node.status is not NodeStatus.RUNNING or parsed[1] >= len(states):
        return None
    item = states[parsed[1]]
    if item.status is not NodeStatus.RUNNING or item.attempt != attempt:
        return None  # idempotency guard: this item attempt already applied
    return parsed


def _call_succeeded(tx: Tx, spec: Any, output: Any) -> None:
    if isinstance(spec, ServiceCallNode) and spec.output is not None:
        try:
            output = expressions.evaluate_transform(spec.output, tx.variables(output=output))
        except expressions.ExpressionError as exc:
            error = StepError(
                error_class=ErrorClass.EXPRESSION_ERROR, message=str(exc), retryable=False
            )
            outcomes.fail(tx, spec.id, error, retry=False)
            return
    outcomes.succeed(tx, spec.id, output)


def _approval_result(tx: Tx, spec: HumanApprovalNode, output: Any) -> None:
    result = output if isinstance(output, dict) else {}
    decision = result.get("decision")
    attempt = tx.state.node(spec.id).attempt
    if decision not in ("approved", "rejected"):
        error = StepError(
            error_class=ErrorClass.INVALID_REQUEST,
            retryable=False,
            message=f"approval output has no valid decision: {decision!r}",
        )
        outcomes.fail(tx, spec.id, error, retry=False)
        return
    tx.history(
        ApprovalDecided,
        node_id=spec.id,
        attempt=attempt,
        decision=decision,
        approvers=[str(a) for a in result.get("approvers") or []],
        comments=[str(c) for c in result.get("comments") or []],
    )
    if decision == "rejected" and spec.on_reject == "fail":
        error = StepError(
            error_class=ErrorClass.APPROVAL_REJECTED,
            retryable=False,
            message="the approval was rejected",
        )
        outcomes.fail(tx, spec.id, error, retry=False)
        return
    outcomes.succeed(tx, spec.id, result)


# --- timers, cancel, children --------------------------------------------------------------


def _timer_fired(tx: Tx, event: Any) -> bool:
    assert isinstance(event, TimerFired)
    timer = tx.state.timer(event.timer_id)
    if timer is None:
        return False  # idempotency guard: stale or already fired
    tx.state.timers.remove(timer)
    if timer.kind is TimerKind.EXECUTION_TIMEOUT:
        return _timed_out(tx)
    handler = _TIMER_HANDLERS[timer.kind]
    key, attempt = timer.node_id or "", timer.attempt or 1
    if key.startswith(outcomes.COMPENSATE_PREFIX):
        return _compensated(tx, key, attempt, _timeout_error())
    if (item := nodes.parse_item_key(key)) is not None:
        return _item_timer(tx, timer.kind, item, attempt)
    node = tx.state.nodes.get(key)
    expected = NodeStatus.RETRY_WAIT if timer.kind is TimerKind.RETRY else NodeStatus.RUNNING
    wanted_attempt = attempt - 1 if timer.kind is TimerKind.RETRY else attempt
    if node is None or node.status is not expected or node.attempt != wanted_attempt:
        return True  # the timer is consumed; the node moved on
    handler(tx, key, attempt, timer.due_at)
    return True


def _item_timer(tx: Tx, kind: TimerKind, item: tuple[str, int], attempt: int) -> bool:
    node = tx.state.nodes.get(item[0])
    states = node.item_states if node is not None else None
    if node is None or node.status is not NodeStatus.RUNNING or not states:
        return True
    state = states[item[1]]
    if kind is TimerKind.RETRY and state.status is NodeStatus.RETRY_WAIT:
        nodes.start_item(tx, item[0], item[1], attempt)
        nodes.fill_map(tx, item[0])
    elif kind is TimerKind.STEP_TIMEOUT and _running_at(state.status, state.attempt, attempt):
        nodes.item_failed(tx, item[0], item[1], _timeout_error())
    return True


def _running_at(status: NodeStatus, current: int, attempt: int) -> bool:
    return status is NodeStatus.RUNNING and current == attempt


def _timeout_error() -> StepError:
    return StepError(error_class=ErrorClass.TIMEOUT, message="step timed out", retryable=True)


def _on_wait(tx: Tx, node_id: str, attempt: int, due_at: datetime) -> None:
    outcomes.succeed(tx, node_id, {"waited_until": due_at.isoformat()})


def _on_retry(tx: Tx, node_id: str, attempt: int, due_at: datetime) -> None:
    nodes.start(tx, node_id, attempt)


def _on_step_timeout(tx: Tx, node_id: str, attempt: int, due_at: datetime) -> None:
    child = tx.state.node(node_id).child_execution_id
    if child is not None:
        tx.send(CancelRequested, execution_id=child, reason="step timed out")
    outcomes.fail(tx, node_id, _timeout_error())


def _on_approval_expiry(tx: Tx, node_id: str, attempt: int, due_at: datetime) -> None:
    spec = tx.state.spec.node(node_id)
    assert isinstance(spec, HumanApprovalNode)
    tx.history(ApprovalExpired, node_id=node_id, attempt=attempt, on_timeout=spec.on_timeout)
    if spec.on_timeout == "fail":
        error = StepError(
            error_class=ErrorClass.APPROVAL_EXPIRED, retryable=False, message="the approval expired"
        )
        outcomes.fail(tx, node_id, error, retry=False)
        return
    decision = "approved" if spec.on_timeout == "approve" else "rejected"
    result = {"decision": decision, "approvers": [], "comments": [], "expired": True}
    _approval_result(tx, spec, result)


def _on_approval_escalation(tx: Tx, node_id: str, attempt: int, due_at: datetime) -> None:
    spec = tx.state.spec.node(node_id)
    assert isinstance(spec, HumanApprovalNode)
    tx.history(ApprovalEscalated, node_id=node_id, attempt=attempt, escalate_to=spec.escalate_to)


_TIMER_HANDLERS: dict[TimerKind, Callable[[Tx, str, int, datetime], None]] = {
    TimerKind.WAIT: _on_wait,
    TimerKind.RETRY: _on_retry,
    TimerKind.STEP_TIMEOUT: _on_step_timeout,
    TimerKind.APPROVAL_EXPIRY: _on_approval_expiry,
    TimerKind.APPROVAL_ESCALATION: _on_approval_escalation,
    TimerKind.EXECUTION_TIMEOUT: _on_retry,  # handled before dispatch
}


def _timed_out(tx: Tx) -> bool:
    if tx.state.phase != "running":
        return True
    outcomes.stop_unfinished(tx, "execution timed out")
    outcomes.finish(
        tx, ExecutionStatus.TIMED_OUT, timeout_s=duration_seconds(tx.state.spec.timeout)
    )
    return True


def _cancel(tx: Tx, event: Any) -> bool:
    assert isinstance(event, CancelRequested)
    outcomes.stop_unfinished(tx, event.reason or "cancelled")
    outcomes.finish(
        tx, ExecutionStatus.CANCELLED, reason=event.reason, cancelled_by=event.requested_by
    )
    return True


def _child_finished(tx: Tx, event: Any) -> bool:
    assert isinstance(event, ChildExecutionFinished)
    node = tx.state.nodes.get(event.node_id)
    if tx.state.phase != "running" or node is None or node.status is not NodeStatus.RUNNING:
        return False
    if node.child_execution_id != event.child_execution_id:
        return False  # idempotency guard: a child of an earlier attempt
    if event.status is ExecutionStatus.SUCCEEDED:
        outcomes.succeed(tx, event.node_id, event.output)
        return True
    message = event.error.message if event.error else f"child execution {event.status.value}"
    error = StepError(error_class=ErrorClass.CHILD_FAILED, message=message, retryable=False)
    outcomes.fail(tx, event.node_id, error)
    return True


_HANDLERS: dict[type[Event], Callable[[Tx, Any], bool]] = {
    StepSucceeded: _step_succeeded,
    StepFailed: _step_failed,
    TimerFired: _timer_fired,
    CancelRequested: _cancel,
    ChildExecutionFinished: _child_finished,
}
