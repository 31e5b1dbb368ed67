"""Fakes and factories shared by tests: one sample of every event, fixed ids."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from cadenza_common import events as ev

ORG_ID = uuid.UUID("0190f0f0-0000-7000-8000-000000000001")
WORKFLOW_ID = uuid.UUID("0190f0f0-0000-7000-8000-000000000002")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def execution_id(n: int = 0) -> uuid.UUID:
    """A stable execution id for test number `n`."""
    return uuid.UUID(int=(0x0190F0F0_0000_7000_8000_100000000000 + n))


def sample_events(exec_id: uuid.UUID | None = None) -> list[ev.Event]:
    """One instance of every event type in `events.EVENT_TYPES`, with every field set."""
    xid = exec_id or execution_id()
    base: dict[str, Any] = {"execution_id": xid, "org_id": ORG_ID, "occurred_at": T0}
    step = {**base, "node_id": "capture", "attempt": 1}
    err = ev.StepError(
        error_class=ev.ErrorClass.HTTP_5XX, message="boom", retryable=True, status_code=503
    )
    actor = ev.Actor(kind="api_key", id="key1", roles=["operator"])
    samples: list[ev.Event] = [
        ev.ExecutionRequested(
            **base,
            workflow_id=WORKFLOW_ID,
            workflow_version=1,
            workflow={"slug": "demo", "nodes": []},
            input={"a": 1},
            external_id="x-1",
            initiated_by=actor,
            jitter_seed=7,
            sub_workflows={
                "child": ev.WorkflowSnapshot(
                    workflow_id=WORKFLOW_ID,
                    workflow_version=2,
                    workflow={"slug": "child", "nodes": []},
                )
            },
        ),
        ev.CancelRequested(**base, reason="user asked", requested_by=actor),
        ev.TimerFired(
            **base, timer_id="t1", kind=ev.TimerKind.WAIT, due_at=T0, node_id="wait", attempt=1
        ),
        ev.SignalReceived(**base, name="go", payload={"k": "v"}),
        ev.ChildExecutionFinished(
            **base,
            child_execution_id=execution_id(99),
            node_id="child",
            status=ev.ExecutionStatus.SUCCEEDED,
            output={"ok": True},
        ),
        ev.ApprovalDecisionSubmitted(**step, decision="approve", comment="ok", decided_by=actor),
        ev.StepReady(
            **step,
            node_type="service_call",
            request={"method": "POST", "path": "/x", "body": {"n": 1}},
            idempotency_key=f"{xid}:capture",
            timeout_s=5.0,
        ),
        ev.StepSucceeded(**step, output={"verdict": "passed"}, status_code=200, duration_ms=3.5),
        ev.StepFailed(**step, error=err, duration_ms=1.0),
        ev.ExecutionStarted(
            **base,
            seq=0,
            workflow_id=WORKFLOW_ID,
            workflow_version=1,
            workflow_slug="demo",
            input={"a": 1},
        ),
        ev.StepScheduled(**step, seq=1, node_type="service_call", input={"n": 1}),
        ev.StepStarted(**step, seq=2, node_type="service_call"),
        ev.StepRetrying(
            **step, seq=3, error=err, next_attempt=2, retry_at=T0 + timedelta(seconds=1)
        ),
        ev.StepSkipped(**step, seq=4, reason="branch not taken"),
        ev.ApprovalRequested(
            **step,
            seq=5,
            approvers=["role:compliance"],
            required=2,
            four_eyes=True,
            expires_at=T0 + timedelta(days=1),
            instructions="check",
            initiated_by=actor,
        ),
        ev.ApprovalDecided(**step, seq=6, decision="approved", approvers=["key1"], comments=["ok"]),
        ev.ApprovalEscalated(**step, seq=7, escalate_to=["role:mlro"]),
        ev.ApprovalExpired(**step, seq=8, on_timeout="reject"),
        ev.CompensationStarted(**base, seq=9, order=["b", "a"], reason="step c failed"),
        ev.ExecutionSucceeded(**base, seq=10, output={"done": True}),
        ev.ExecutionFailed(**base, seq=10, error=err, failed_node="capture"),
        ev.ExecutionCancelled(**base, seq=10, reason="user asked", cancelled_by=actor),
        ev.ExecutionTimedOut(**base, seq=10, timeout_s=60.0),
        ev.AuditRecorded(
            org_id=ORG_ID,
            occurred_at=T0,
            actor=actor,
            action="workflow.publish",
            resource_type="workflow",
            resource_id=str(WORKFLOW_ID),
            before={"v": 0},
            after={"v": 1},
        ),
    ]
    return samples


@asynccontextmanager
async def serving(
    serve: Callable[[asyncio.Event], Coroutine[Any, Any, None]], timeout: float = 30.0
) -> AsyncIterator[None]:
    """Run a service's `serve(stop)` in this process; stop it gracefully when the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=timeout)
