"""Starting a node attempt, per node type: runner calls, inline decisions and transforms,
wait timers, approval requests, map items and child executions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cadenza_common import expressions, templating
from cadenza_common.events import (
    ApprovalRequested,
    ErrorClass,
    ExecutionRequested,
    ParentRef,
    StepError,
    StepReady,
    StepScheduled,
    TimerKind,
)
from cadenza_common.workflow import (
    DecisionNode,
    HumanApprovalNode,
    MapItemNode,
    MapNode,
    Node,
    ServiceCallNode,
    SubWorkflowNode,
    TransformNode,
    WaitNode,
    WebhookEmitNode,
    duration_seconds,
)
from cadenza_scheduler.domain import outcomes
from cadenza_scheduler.domain.state import ItemState, NodeStatus, by_identity
from cadenza_scheduler.domain.tx import Tx, derived_id

CALL_FIELDS = ("connection", "url", "method", "path", "query", "headers", "body")
WEBHOOK_FIELDS = ("url", "subscription", "event", "payload")


class InlineError(Exception):
    """An inline evaluation (expression, template, list of items) failed."""

    def __init__(self, message: str, error_class: ErrorClass = ErrorClass.EXPRESSION_ERROR):
        super().__init__(message)
        self.error = StepError(error_class=error_class, message=message[:500], retryable=False)


def start(tx: Tx, node_id: str, attempt: int) -> None:
    """Start attempt `attempt` of a node (its predecessors allow it)."""
    spec = tx.state.spec.node(node_id)
    node = tx.state.node(node_id)
    node.status, node.attempt, node.error = NodeStatus.RUNNING, attempt, None
    node.started_at = node.started_at or tx.now
    try:
        _STARTERS[spec.type](tx, spec, attempt)
    except InlineError as exc:
        outcomes.fail(tx, node_id, exc.error)


def _scheduled(tx: Tx, spec: Node, attempt: int, payload: Any = None) -> None:
    tx.history(StepScheduled, node_id=spec.id, attempt=attempt, node_type=spec.type, input=payload)


def _render(tx: Tx, value: Any, escape: bool = False, **extra: Any) -> Any:
    if not templating.has_templates(value):
        return value  # nothing to resolve: skip building the variables (shared, never mutated)
    try:
        return templating.render(value, tx.variables(**extra), escape_for_runner=escape)
    except templating.TemplateSyntaxError as exc:  # validated specs never get here
        raise InlineError(str(exc)) from None


def _call_request(tx: Tx, spec: Any, fields: tuple[str, ...], **extra: Any) -> dict[str, Any]:
    raw, templated = _request_fields(spec, fields)
    if not templated:
        return raw  # shared by every attempt of this node spec, never mutated
    request: dict[str, Any] = _render(tx, raw, escape=True, **extra)
    return request


# node spec -> (the spec, its request fields that are set, whether any holds a template):
# specs are immutable and shared by every execution of a workflow version (`validated_spec`)
_REQUESTS: dict[int, tuple[Any, tuple[dict[str, Any], bool]]] = {}


def _request_fields(spec: Any, fields: tuple[str, ...]) -> tuple[dict[str, Any], bool]:
    return by_identity(_REQUESTS, spec, 4096, _set_fields, spec, fields)


def _set_fields(spec: Any, fields: tuple[str, ...]) -> tuple[dict[str, Any], bool]:
    raw = {name: getattr(spec, name) for name in fields if getattr(spec, name) is not None}
    return raw, templating.has_templates(raw)


def _to_runner(
    tx: Tx, key: str, node_type: str, request: dict[str, Any], timeout: Any, attempt: int
) -> None:
    timeout_s = duration_seconds(timeout)
    deadline = tx.after(timeout_s) if timeout_s else None
    tx.send(
        StepReady,
        node_id=key,
        attempt=attempt,
        node_type=node_type,
        request=request,
        idempotency_key=f"{tx.state.execution_id}:{key}",
        timeout_s=timeout_s or None,
        deadline=deadline,
    )
    if deadline is not None:
        tx.add_timer(TimerKind.STEP_TIMEOUT, deadline, key, attempt)


def _start_call(tx: Tx, spec: Node, attempt: int) -> None:
    assert isinstance(spec, ServiceCallNode | WebhookEmitNode)
    fields = CALL_FIELDS if isinstance(spec, ServiceCallNode) else WEBHOOK_FIELDS
    request = _call_request(tx, spec, fields)
    _scheduled(tx, spec, attempt, request)
    _to_runner(tx, spec.id, spec.type, request, spec.timeout, attempt)


def _start_decision(tx: Tx, spec: Node, attempt: int) -> None:
    assert isinstance(spec, DecisionNode)
    _scheduled(tx, spec, attempt)
    variables = tx.variables()
    chosen, case = list(spec.default), None
    for index, branch in enumerate(spec.cases):
        if _condition(branch.when, variables):
            chosen, case = list(branch.next), index
            break
    tx.state.node(spec.id).chosen = chosen
    outcomes.succeed(tx, spec.id, {"case": case, "next": chosen})


def _condition(source: str, variables: dict[str, Any]) -> bool:
    try:
        return expressions.evaluate_condition(source, variables)
    except expressions.ExpressionError as exc:
        raise InlineError(str(exc)) from None


def _transform(source: str, variables: dict[str, Any]) -> Any:
    try:
        return expressions.evaluate_transform(source, variables)
    except expressions.ExpressionError as exc:
        raise InlineError(str(exc)) from None


def _start_transform(tx: Tx, spec: Node, attempt: int) -> None:
    assert isinstance(spec, TransformNode)
    _scheduled(tx, spec, attempt)
    outcomes.succeed(tx, spec.id, _transform(spec.expression, tx.variables()))


def _start_wait(tx: Tx, spec: Node, attempt: int) -> None:
    assert isinstance(spec, WaitNode)
    if spec.until is not None:
        due = _timestamp(_render(tx, spec.until))
    else:
        due = tx.after(duration_seconds(spec.duration) or 0.0)
    _scheduled(tx, spec, attempt, {"until": due.isoformat()})
    tx.add_timer(TimerKind.WAIT, due, spec.id, attempt)


def _timestamp(value: Any) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise InlineError(f"wait until {value!r}: not an ISO 8601 timestamp") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _start_approval(tx: Tx, spec: Node, attempt: int) -> None:
    assert isinstance(spec, HumanApprovalNode)
    _scheduled(tx, spec, attempt)
    expires_at = _timer_after(tx, spec.expires_in, TimerKind.APPROVAL_EXPIRY, spec.id, attempt)
    escalate_at = _timer_after(
        tx, spec.escalate_after, TimerKind.APPROVAL_ESCALATION, spec.id, attempt
    )
    context = _render(tx, spec.context) if spec.context is not None else {}
    tx.history(
        ApprovalRequested,
        node_id=spec.id,
        attempt=attempt,
        approvers=spec.approvers,
        required=spec.required,
        four_eyes=spec.four_eyes,
        expires_at=expires_at,
        escalate_at=escalate_at,
        escalate_to=spec.escalate_to,
        on_timeout=spec.on_timeout,
        on_reject=spec.on_reject,
        instructions=templating.to_text(_render(tx, spec.instructions)),
        initiated_by=tx.state.initiated_by,
        context=context if isinstance(context, dict) else {"value": context},
    )


def _timer_after(
    tx: Tx, duration: Any, kind: TimerKind, node_id: str, attempt: int
) -> datetime | None:
    seconds = duration_seconds(duration)
    if seconds is None:
        return None
    return tx.add_timer(kind, tx.after(seconds), node_id, attempt).due_at


def _start_sub_workflow(tx: Tx, spec: Node, attempt: int) -> None:
    assert isinstance(spec, SubWorkflowNode)
    ref = spec.workflow
    key = ref.slug if ref.version is None else f"{ref.slug}@{ref.version}"
    snapshot = tx.state.sub_workflows.get(key)
    if snapshot is None:
        raise InlineError(
            f"sub-workflow {key!r} was not bundled with the execution", ErrorClass.INVALID_REQUEST
        )
    child_input = _render(tx, spec.input) if spec.input is not None else {}
    child_id = derived_id(tx.state.execution_id, f"child:{spec.id}:{attempt}")
    tx.state.node(spec.id).child_execution_id = child_id
    _scheduled(tx, spec, attempt, {"child_execution_id": str(child_id), "input": child_input})
    tx.send(
        ExecutionRequested,
        execution_id=child_id,
        workflow_id=snapshot.workflow_id,
        workflow_version=snapshot.workflow_version,
        workflow=snapshot.workflow,
        input=child_input if isinstance(child_input, dict) else {"value": child_input},
        initiated_by=tx.state.initiated_by,
        parent=ParentRef(execution_id=tx.state.execution_id, node_id=spec.id),
        jitter_seed=tx.state.jitter_seed + attempt,
        workflow_ref=key,
        # the whole bundle goes on: it holds the snapshots of the child's own children too
        sub_workflows=tx.state.sub_workflows,
    )
    seconds = duration_seconds(spec.timeout)
    if seconds:
        tx.add_timer(TimerKind.STEP_TIMEOUT, tx.after(seconds), spec.id, attempt)


# --- map ---------------------------------------------------------------------------------


def _start_map(tx: Tx, spec: Node, attempt: int) -> None:
    assert isinstance(spec, MapNode)
    items = _render(tx, spec.items)
    if not isinstance(items, list):
        raise InlineError(f"map items must be a list, got {type(items).__name__}")
    if len(items) > spec.max_items:
        raise InlineError(f"{len(items)} map items, at most {spec.max_items}")
    node = tx.state.node(spec.id)
    node.items, node.item_states = items, [ItemState() for _ in items]
    _scheduled(tx, spec, attempt, {"items": len(items)})
    fill_map(tx, spec.id)


def item_key(node_id: str, index: int) -> str:
    return f"{node_id}[{index}]"


def fill_map(tx: Tx, node_id: str) -> None:
    """Start pending items up to the concurrency limit; succeed when every item has."""
    spec = tx.state.spec.node(node_id)
    node = tx.state.node(node_id)
    assert isinstance(spec, MapNode)
    assert node.item_states is not None
    while node.status is NodeStatus.RUNNING:
        states = node.item_states
        if all(s.status is NodeStatus.SUCCEEDED for s in states):
            outcomes.succeed(tx, node_id, [s.output for s in states])
            return
        busy = sum(s.status in (NodeStatus.RUNNING, NodeStatus.RETRY_WAIT) for s in states)
        pending = next((i for i, s in enumerate(states) if s.status is NodeStatus.PENDING), None)
        if pending is None or busy >= spec.concurrency:
            return
        start_item(tx, node_id, pending, 1)


def start_item(tx: Tx, node_id: str, index: int, attempt: int) -> None:
    """Start one attempt of one map item (transform items finish inline)."""
    spec = tx.state.spec.node(node_id)
    node = tx.state.node(node_id)
    assert isinstance(spec, MapNode)
    assert node.item_states is not None
    assert node.items is not None
    item = node.item_states[index]
    item.status, item.attempt = NodeStatus.RUNNING, attempt
    extra = {"item": node.items[index], "index": index}
    try:
        _ITEM_STARTERS[spec.node.type](tx, spec.node, item_key(node_id, index), attempt, extra)
    except InlineError as exc:
        item_failed(tx, node_id, index, exc.error)


def _item_call(tx: Tx, item: MapItemNode, key: str, attempt: int, extra: dict[str, Any]) -> None:
    fields = CALL_FIELDS if item.type == "service_call" else WEBHOOK_FIELDS
    request = _call_request(tx, item, fields, **extra)
    _to_runner(tx, key, item.type, request, item.timeout, attempt)


def _item_transform(
    tx: Tx, item: MapItemNode, key: str, attempt: int, extra: dict[str, Any]
) -> None:
    output = _transform(item.expression or "null", tx.variables(**extra))
    node_id, index = parse_item_key(key) or (key, 0)
    state = tx.state.node(node_id).item_states
    assert state is not None
    # fill_map's loop moves on; calling it again from here would recurse per item
    state[index].status, state[index].output = NodeStatus.SUCCEEDED, output


def parse_item_key(key: str) -> tuple[str, int] | None:
    """`"m[3]"` → `("m", 3)`; None for a plain node id."""
    if not key.endswith("]") or "[" not in key:
        return None
    node_id, _, rest = key[:-1].partition("[")
    return (node_id, int(rest)) if rest.isdigit() else None


def item_succeeded(tx: Tx, node_id: str, index: int, output: Any) -> None:
    """A runner finished an item: record it and start the next ones."""
    node = tx.state.node(node_id)
    assert node.item_states is not None
    item = node.item_states[index]
    item.status, item.output = NodeStatus.SUCCEEDED, output
    tx.state.drop_timers(item_key(node_id, index))
    fill_map(tx, node_id)


def item_failed(tx: Tx, node_id: str, index: int, error: StepError) -> None:
    """An item attempt failed: retry it under the map's policy, or fail the map node."""
    spec = tx.state.spec.node(node_id)
    node = tx.state.node(node_id)
    assert node.item_states is not None
    item = node.item_states[index]
    key = item_key(node_id, index)
    tx.state.drop_timers(key)
    if outcomes.should_retry(spec.retry, error, item.attempt):
        item.status, item.error = NodeStatus.RETRY_WAIT, error
        outcomes.schedule_retry(tx, key, item.attempt, spec.retry, error)
        return
    item.status, item.error = NodeStatus.FAILED, error
    outcomes.fail(tx, node_id, error, retry=False)  # items were retried one by one


_STARTERS: dict[str, Callable[[Tx, Node, int], None]] = {
    "service_call": _start_call,
    "webhook_emit": _start_call,
    "decision": _start_decision,
    "transform": _start_transform,
    "wait": _start_wait,
    "human_approval": _start_approval,
    "sub_workflow": _start_sub_workflow,
    "map": _start_map,
}
_ITEM_STARTERS: dict[str, Callable[[Tx, MapItemNode, str, int, dict[str, Any]], None]] = {
    "service_call": _item_call,
    "webhook_emit": _item_call,
    "transform": _item_transform,
}
