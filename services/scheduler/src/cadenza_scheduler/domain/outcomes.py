"""How nodes and executions end: success, retry with backoff, on_error policies, compensation."""

from __future__ import annotations

import random
from typing import Any

from cadenza_common import templating
from cadenza_common.events import (
    ChildExecutionFinished,
    CompensationStarted,
    ErrorClass,
    ExecutionCancelled,
    ExecutionEvent,
    ExecutionFailed,
    ExecutionStatus,
    ExecutionSucceeded,
    ExecutionTimedOut,
    StepError,
    StepFailed,
    StepReady,
    StepRetrying,
    StepSkipped,
    StepSucceeded,
    TimerKind,
)
from cadenza_common.workflow import Goto, RetryPolicy, ServiceCallNode, duration_seconds
from cadenza_scheduler.domain.graph import graph_of
from cadenza_scheduler.domain.state import Compensation, NodeStatus
from cadenza_scheduler.domain.tx import Tx

COMPENSATE_PREFIX = "compensate:"


def succeed(tx: Tx, node_id: str, output: Any) -> None:
    """The node's current attempt succeeded with `output`."""
    node = tx.state.node(node_id)
    node.status, node.output, node.finished_at = NodeStatus.SUCCEEDED, output, tx.now
    tx.state.completed.append(node_id)
    tx.state.drop_timers(node_id)
    tx.history(StepSucceeded, node_id=node_id, attempt=max(node.attempt, 1), output=output)


def fail(tx: Tx, node_id: str, error: StepError, retry: bool = True) -> None:
    """The node's current attempt failed: retry it, or apply its on_error policy."""
    node = tx.state.node(node_id)
    spec = tx.state.spec.node(node_id)
    attempt = max(node.attempt, 1)
    tx.state.drop_timers(node_id)
    tx.history(StepFailed, node_id=node_id, attempt=attempt, error=error)
    if retry and should_retry(spec.retry, error, attempt):
        schedule_retry(tx, node_id, attempt, spec.retry, error)
        node.status, node.error = NodeStatus.RETRY_WAIT, error
        return
    node.error, node.finished_at = error, tx.now
    apply_on_error(tx, node_id, error)


def should_retry(policy: RetryPolicy, error: StepError, attempt: int) -> bool:
    """Whether the policy allows another attempt after this error."""
    if attempt >= policy.max_attempts:
        return False
    tags = {error.error_class.value}
    if error.status_code is not None:
        tags.add(str(error.status_code))
    if tags & {str(x) for x in policy.non_retryable}:
        return False
    if policy.retry_on is not None:
        return bool(tags & {str(x) for x in policy.retry_on})
    return error.retryable


def backoff_seconds(policy: RetryPolicy, attempt: int, seed: int, key: str) -> float:
    """Exponential backoff after `attempt`, capped, with jitter drawn from the execution's seed."""
    initial = duration_seconds(policy.initial_interval) or 0.0
    cap = duration_seconds(policy.max_interval) or initial
    delay = min(initial * policy.backoff_coefficient ** (attempt - 1), cap)
    if policy.jitter:
        draw = random.Random(f"{seed}:{key}:{attempt}").random()
        delay *= 1 + policy.jitter * (2 * draw - 1)
    return max(delay, 0.0)


def schedule_retry(tx: Tx, key: str, attempt: int, policy: RetryPolicy, error: StepError) -> None:
    """Set the retry timer for `key` (a node or a map item) and say so in the history."""
    delay = backoff_seconds(policy, attempt, tx.state.jitter_seed, key)
    delay = max(delay, error.retry_after_s or 0.0)
    retry_at = tx.after(delay)
    tx.add_timer(TimerKind.RETRY, retry_at, key, attempt + 1)
    tx.history(
        StepRetrying,
        node_id=key,
        attempt=attempt,
        error=error,
        next_attempt=attempt + 1,
        retry_at=retry_at,
    )


def apply_on_error(tx: Tx, node_id: str, error: StepError) -> None:
    """The node failed for good: fail | skip | continue | goto | compensate."""
    node = tx.state.node(node_id)
    policy = tx.state.spec.node(node_id).on_error
    if policy == "skip":
        node.status, node.reason = NodeStatus.SKIPPED, "on_error: skip"
        tx.history(StepSkipped, node_id=node_id, attempt=max(node.attempt, 1), reason=node.reason)
    elif policy == "continue":
        recorded = {"error": error.model_dump(mode="json")}
        node.status, node.output = NodeStatus.SUCCEEDED, recorded
        tx.history(StepSucceeded, node_id=node_id, attempt=max(node.attempt, 1), output=recorded)
    elif isinstance(policy, Goto):
        node.status, node.goto_fired = NodeStatus.FAILED, True
    else:
        node.status = NodeStatus.FAILED
        compensate = policy == "compensate" or tx.state.spec.on_failure == "compensate"
        fail_execution(tx, node_id, error, compensate)


def fail_execution(tx: Tx, node_id: str | None, error: StepError, compensate: bool) -> None:
    """Stop everything still running; compensate completed nodes or end as failed."""
    tx.state.failure, tx.state.failed_node = error, node_id
    stop_unfinished(tx, "execution failed")
    order = [n for n in reversed(tx.state.completed) if _compensation_of(tx, n) is not None]
    if not compensate or not order:
        finish(tx, ExecutionStatus.FAILED)
        return
    tx.state.phase = "compensating"
    tx.state.compensation = Compensation(order=order)
    tx.history(CompensationStarted, order=order, reason=error.message)
    send_compensation(tx)


def _compensation_of(tx: Tx, node_id: str) -> Any:
    spec = tx.state.spec.node(node_id)
    return spec.compensation if isinstance(spec, ServiceCallNode) else None


def send_compensation(tx: Tx) -> None:
    """Send the next compensation call, or end the execution when none is left."""
    comp = tx.state.compensation
    assert comp is not None
    if comp.position >= len(comp.order):
        finish(tx, ExecutionStatus.FAILED)
        return
    node_id = comp.order[comp.position]
    call = _compensation_of(tx, node_id)
    request = templating.render(
        call.model_dump(exclude={"timeout"}), tx.variables(), escape_for_runner=True
    )
    key = COMPENSATE_PREFIX + node_id
    timeout_s = duration_seconds(call.timeout)
    tx.send(
        StepReady,
        node_id=key,
        attempt=comp.attempt,
        node_type="compensation",
        request=request,
        idempotency_key=f"{tx.state.execution_id}:{key}",
        timeout_s=timeout_s or None,
    )
    if timeout_s:  # a compensation that never answers must not hold the execution open
        tx.add_timer(TimerKind.STEP_TIMEOUT, tx.after(timeout_s), key, comp.attempt)


def compensation_done(tx: Tx, node_id: str, attempt: int, error: StepError | None) -> None:
    """A compensation call ended; record it and move to the next one."""
    comp = tx.state.compensation
    expected = comp.order[comp.position] if comp and comp.position < len(comp.order) else None
    if comp is None or expected != node_id or attempt != comp.attempt:
        return  # idempotency guard: not the compensation in flight
    key = COMPENSATE_PREFIX + node_id
    tx.state.drop_timers(key)
    if error is None:
        tx.history(StepSucceeded, node_id=key, attempt=attempt)
    else:
        tx.history(StepFailed, node_id=key, attempt=attempt, error=error)
        comp.failed.append(node_id)
    comp.position += 1
    send_compensation(tx)


def stop_unfinished(tx: Tx, reason: str) -> None:
    """Cancel running nodes and skip pending ones (each ends in exactly one terminal state)."""
    for node_id in list(tx.state.nodes):
        if tx.state.nodes[node_id].status.terminal:
            continue
        node = tx.state.node(node_id)
        attempt = max(node.attempt, 1)
        if node.status is NodeStatus.PENDING:
            node.status, node.reason = NodeStatus.SKIPPED, reason
            tx.history(StepSkipped, node_id=node_id, attempt=attempt, reason=reason)
            continue
        node.status, node.finished_at = NodeStatus.CANCELLED, tx.now
        error = StepError(error_class=ErrorClass.CANCELLED, message=reason, retryable=False)
        tx.history(StepFailed, node_id=node_id, attempt=attempt, error=error)
        _cancel_child(tx, node.child_execution_id, reason)
    tx.state.drop_timers()


def _cancel_child(tx: Tx, child: Any, reason: str) -> None:
    from cadenza_common.events import CancelRequested

    if child is not None:
        tx.send(CancelRequested, execution_id=child, reason=reason)


_FINAL_EVENTS: dict[ExecutionStatus, type[ExecutionEvent]] = {
    ExecutionStatus.SUCCEEDED: ExecutionSucceeded,
    ExecutionStatus.FAILED: ExecutionFailed,
    ExecutionStatus.CANCELLED: ExecutionCancelled,
    ExecutionStatus.TIMED_OUT: ExecutionTimedOut,
}


def finish(tx: Tx, status: ExecutionStatus, **fields: Any) -> None:
    """End the execution: terminal history event, and the parent's ChildExecutionFinished."""
    state = tx.state
    state.phase, state.status, state.finished_at = "finished", status, tx.now
    state.drop_timers()
    if status is ExecutionStatus.SUCCEEDED:
        state.output = execution_output(tx)
        fields["output"] = state.output
    if status is ExecutionStatus.FAILED:
        fields.update(_failure_fields(tx))
    tx.history(_FINAL_EVENTS[status], **fields)
    if state.parent is not None:
        tx.send(
            ChildExecutionFinished,
            execution_id=state.parent.execution_id,
            node_id=state.parent.node_id,
            child_execution_id=state.execution_id,
            status=status,
            output=state.output,
            error=_child_error(tx, status),
        )


def _failure_fields(tx: Tx) -> dict[str, Any]:
    comp = tx.state.compensation
    error = tx.state.failure or StepError(
        error_class=ErrorClass.INTERNAL, message="execution failed", retryable=False
    )
    compensated = comp is not None and not comp.failed
    return {"error": error, "failed_node": tx.state.failed_node, "compensated": compensated}


def _child_error(tx: Tx, status: ExecutionStatus) -> StepError | None:
    if status is ExecutionStatus.SUCCEEDED:
        return None
    if tx.state.failure is not None:
        return tx.state.failure
    return StepError(
        error_class=ErrorClass.CHILD_FAILED, message=f"child {status.value}", retryable=False
    )


def execution_output(tx: Tx) -> Any:
    """The spec's `output` template, or the outputs of the succeeded sink nodes."""
    spec = tx.state.spec
    if spec.output is not None:
        return templating.render(spec.output, tx.variables())
    graph = graph_of(spec)
    has_successor = {p for preds in graph.preds.values() for p in preds}
    return {
        node_id: node.output
        for node_id, node in tx.state.nodes.items()
        if node_id not in has_successor and node.status is NodeStatus.SUCCEEDED
    }
