"""The read-model fold: the onboarding history, failures, cancellation, compensation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from cadenza_audit_sink.domain.projection import Projection, StepStatus, apply
from cadenza_audit_sink.samples import WORKFLOW_ID, fold, onboarding_history
from cadenza_common import events as ev

ORG = uuid.UUID("0190f0f0-0000-7000-8000-0000000000b1")
XID = uuid.UUID("0190f0f0-0000-7000-8000-0000000000c1")
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_onboarding_history_ends_with_a_succeeded_run_and_every_step_settled() -> None:
    events = onboarding_history(XID, ORG, T0)

    projection = fold(events)

    run = projection.runs[XID]
    assert (run.status, run.workflow_id, run.workflow_version) == ("succeeded", WORKFLOW_ID, 3)
    assert run.output == {"customer": "onboarded", "token": "tok-9"}
    assert run.duration_ms == 21_000.0
    assert run.last_seq == 21
    steps = projection.steps[XID]
    assert {n: s.status for n, s in steps.items()} == {
        "capture_identity": "succeeded",
        "verdict": "succeeded",
        "manual_review": "skipped",
        "screening": "succeeded",
        "mlro_approval": "succeeded",
        "notify": "succeeded",
    }
    assert (steps["screening"].attempts, steps["screening"].error) == (2, None)
    assert steps["manual_review"].attempts == 0
    assert steps["mlro_approval"].node_type == "human_approval"


def test_retrying_step_keeps_the_error_until_the_next_attempt_succeeds() -> None:
    events = onboarding_history(XID, ORG, T0)[:11]

    projection = fold(events)

    screening = projection.steps[XID]["screening"]
    assert screening.status == StepStatus.RETRYING
    assert screening.error is not None
    assert screening.error["error_class"] == "http_5xx"


def test_cancelled_execution_cancels_its_open_steps() -> None:
    events = onboarding_history(XID, ORG, T0)[:16]
    cancel = ev.ExecutionCancelled(
        execution_id=XID, org_id=ORG, seq=16, occurred_at=T0 + timedelta(seconds=16), reason="stop"
    )

    projection = fold([*events, cancel])

    assert projection.runs[XID].status == "cancelled"
    assert projection.runs[XID].error["message"] == "stop"
    assert projection.steps[XID]["mlro_approval"].status == StepStatus.CANCELLED


def test_a_step_the_scheduler_ends_as_cancelled_is_projected_cancelled_not_failed() -> None:
    events = onboarding_history(XID, ORG, T0)[:16]
    at = T0 + timedelta(seconds=16)
    base = {"execution_id": XID, "org_id": ORG, "occurred_at": at}
    error = ev.StepError(error_class=ev.ErrorClass.CANCELLED, message="stop", retryable=False)
    tail: list[ev.ExecutionEvent] = [
        ev.StepFailed(**base, seq=16, node_id="mlro_approval", error=error),
        ev.ExecutionCancelled(**base, seq=17, reason="stop"),
    ]

    projection = fold([*events, *tail])

    step = projection.steps[XID]["mlro_approval"]
    assert step.status == StepStatus.CANCELLED
    assert step.error is not None
    assert step.error["error_class"] == "cancelled"


def test_compensation_marks_undone_nodes_compensated() -> None:
    events = onboarding_history(XID, ORG, T0)[:4]
    at = T0 + timedelta(seconds=30)
    base = {"execution_id": XID, "org_id": ORG, "occurred_at": at}
    tail: list[ev.ExecutionEvent] = [
        ev.CompensationStarted(**base, seq=4, order=["capture_identity"]),
        ev.StepScheduled(**base, seq=5, node_id="capture_identity", node_type="compensation"),
        ev.StepSucceeded(**base, seq=6, node_id="capture_identity"),
    ]

    projection = fold([*events, *tail])

    assert projection.steps[XID]["capture_identity"].status == StepStatus.COMPENSATED


def test_each_event_reports_its_status_transition() -> None:
    events = onboarding_history(XID, ORG, T0)
    projection = Projection()

    transitions = [apply(projection, e) for e in events]

    assert (transitions[0].before, transitions[0].after) == (None, "running")
    assert transitions[3].resource_id == f"{XID}/capture_identity"
    assert (transitions[3].before, transitions[3].after) == ("running", "succeeded")
    assert (transitions[-1].before, transitions[-1].after) == ("running", "succeeded")
