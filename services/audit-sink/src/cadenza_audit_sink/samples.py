"""Recorded histories for tests and the benchmark: the onboarding workflow as emitted."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from cadenza_audit_sink.domain.projection import Projection, apply
from cadenza_common import events as ev

WORKFLOW_ID = uuid.UUID("0190f0f0-0000-7000-8000-0000000000aa")
INITIATOR = ev.Actor(kind="api_key", id="key-ops-1", roles=["operator"])
SCREENING_DOWN = ev.StepError(
    error_class=ev.ErrorClass.HTTP_5XX,
    message="screening unavailable",
    retryable=True,
    status_code=503,
)


def onboarding_history(
    execution_id: uuid.UUID, org_id: uuid.UUID, t0: datetime, external_id: str = "cust-1"
) -> list[ev.ExecutionEvent]:
    """capture identity -> decision (passed) -> AML screening (one retry, confirmed hit)
    -> MLRO approval (approved) -> webhook "customer onboarded"; manual review skipped."""
    base: dict[str, Any] = {"execution_id": execution_id, "org_id": org_id}
    plan: list[tuple[type[ev.ExecutionEvent], dict[str, Any]]] = [
        (
            ev.ExecutionStarted,
            {
                "workflow_id": WORKFLOW_ID,
                "workflow_version": 3,
                "workflow_slug": "customer-onboarding",
                "input": {"nik": "3171234567890001", "name": "Siti", "apiKey": "sk-live-1"},
                "external_id": external_id,
                "initiated_by": INITIATOR,
            },
        ),
        (
            ev.StepScheduled,
            _node("capture_identity", node_type="service_call", input={"nik": "3171"}),
        ),
        (ev.StepStarted, _node("capture_identity", node_type="service_call")),
        (
            ev.StepSucceeded,
            _node("capture_identity", output={"verdict": "passed"}, status_code=200),
        ),
        (ev.StepScheduled, _node("verdict", node_type="decision", input={"verdict": "passed"})),
        (ev.StepSucceeded, _node("verdict", output={"next": ["screening"]})),
        (ev.StepSkipped, _node("manual_review", reason="branch not taken")),
        (ev.StepScheduled, _node("screening", node_type="service_call", input={"name": "Siti"})),
        (ev.StepStarted, _node("screening", node_type="service_call")),
        (ev.StepFailed, _node("screening", error=SCREENING_DOWN)),
        (
            ev.StepRetrying,
            _node(
                "screening",
                error=SCREENING_DOWN,
                next_attempt=2,
                retry_at=t0 + timedelta(seconds=11),
            ),
        ),
        (ev.StepScheduled, _node("screening", 2, node_type="service_call", input={"name": "Siti"})),
        (ev.StepStarted, _node("screening", 2, node_type="service_call")),
        (ev.StepSucceeded, _node("screening", 2, output={"hit": "confirmed_hit"}, status_code=200)),
        (ev.StepScheduled, _node("mlro_approval", node_type="human_approval")),
        (
            ev.ApprovalRequested,
            _node("mlro_approval", approvers=["role:mlro"], instructions="confirm the hit"),
        ),
        (ev.ApprovalDecided, _node("mlro_approval", decision="approved", approvers=["key-mlro-1"])),
        (ev.StepSucceeded, _node("mlro_approval", output={"decision": "approve"})),
        (ev.StepScheduled, _node("notify", node_type="webhook_emit", input={"event": "onboarded"})),
        (ev.StepStarted, _node("notify", node_type="webhook_emit")),
        (ev.StepSucceeded, _node("notify", output={"delivered": True}, status_code=200)),
        (ev.ExecutionSucceeded, {"output": {"customer": "onboarded", "token": "tok-9"}}),
    ]
    return [
        cls(**base, **fields, seq=seq, occurred_at=t0 + timedelta(seconds=seq))
        for seq, (cls, fields) in enumerate(plan)
    ]


def _node(node_id: str, attempt: int = 1, **fields: Any) -> dict[str, Any]:
    return {"node_id": node_id, "attempt": attempt, **fields}


def fold(events: Iterable[ev.ExecutionEvent]) -> Projection:
    """The read model these events produce from nothing (what the sink should have written)."""
    projection = Projection()
    for event in events:
        apply(projection, event)
    return projection
