"""The onboarding workflow of the product docs, driven through decide() along every path."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadenza_common.events import (
    ApprovalRequested,
    CompensationStarted,
    ExecutionFailed,
    ExecutionStatus,
    ExecutionSucceeded,
    StepReady,
)
from cadenza_common.workflow import load_workflow_text
from cadenza_scheduler.domain import NodeStatus
from cadenza_scheduler.domain.simulate import Run

ONBOARDING = load_workflow_text(
    (Path(__file__).parents[4] / "examples" / "onboarding.yaml").read_text()
)
CUSTOMER = {"customer_id": "c-1", "ktp_number": "3171234567890001", "full_name": "Siti Rahma"}
S = NodeStatus
ALL = (
    "capture_ktp",
    "route_kyc",
    "kyc_review",
    "review_gate",
    "aml_screening",
    "route_aml",
    "mlro_approval",
    "onboarded_webhook",
    "reject_customer",
)


def start() -> Run:
    return Run(ONBOARDING, CUSTOMER)


def statuses(run: Run) -> dict[str, NodeStatus]:
    return {n: run.status(n) for n in ALL}


def ran(run: Run) -> set[str]:
    return {n for n, s in statuses(run).items() if s is S.SUCCEEDED}


def test_capture_request_is_rendered_and_keeps_the_secret_for_the_runner() -> None:
    run = start()

    [ready] = run.outstanding()

    assert ready.node_id == "capture_ktp"
    assert ready.request["body"] == {"nik": CUSTOMER["ktp_number"], "name": "Siti Rahma"}
    assert ready.request["headers"] == {"Authorization": "Bearer ${secrets.KYC_TOKEN}"}
    assert ready.timeout_s == 30


def test_passed_and_clear_goes_straight_to_the_onboarded_webhook() -> None:
    run = start()

    run.succeed("capture_ktp", {"verdict": "passed"})
    run.succeed("aml_screening", {"result": "clear"})
    webhook = [r for r in run.outstanding() if r.node_id == "onboarded_webhook"]
    run.succeed("onboarded_webhook")

    assert webhook[0].request["event"] == "customer.onboarded"
    assert webhook[0].request["payload"] == {"customer_id": "c-1", "screening": "clear"}
    assert ran(run) == {
        "capture_ktp",
        "route_kyc",
        "aml_screening",
        "route_aml",
        "onboarded_webhook",
    }
    assert {n for n, s in statuses(run).items() if s is S.SKIPPED} == {
        "kyc_review",
        "review_gate",
        "mlro_approval",
        "reject_customer",
    }
    assert run.of_type(ExecutionSucceeded)[0].output == {"customer_id": "c-1", "kyc": "passed"}


@pytest.mark.parametrize(
    ("mlro", "outcome"),
    [("approved", ExecutionStatus.SUCCEEDED), ("rejected", ExecutionStatus.FAILED)],
)
def test_confirmed_hit_asks_the_mlro(mlro: str, outcome: ExecutionStatus) -> None:
    run = start()
    run.succeed("capture_ktp", {"verdict": "passed"})
    run.succeed("aml_screening", {"result": "confirmed_hit", "lists": ["UN"]})
    [request] = run.of_type(ApprovalRequested)

    run.approve("mlro_approval", mlro)
    if outcome is ExecutionStatus.SUCCEEDED:
        run.succeed("onboarded_webhook")
    else:  # on_failure: compensate undoes the identity capture first
        run.succeed("compensate:capture_ktp", attempt=1)

    assert request.approvers == ["role:approver"]
    assert request.four_eyes is True
    assert request.context == {"screening": {"result": "confirmed_hit", "lists": ["UN"]}}
    assert run.execution_status is outcome


def test_mlro_rejection_compensates_the_identity_capture() -> None:
    run = start()
    run.succeed("capture_ktp", {"verdict": "passed"})
    run.succeed("aml_screening", {"result": "confirmed_hit"})

    run.approve("mlro_approval", "rejected")
    [compensation] = [r for r in run.outstanding() if r.node_type == "compensation"]
    run.succeed(compensation.node_id, attempt=1)

    assert run.of_type(CompensationStarted)[0].order == ["capture_ktp"]
    assert compensation.request["path"] == "/v1/ktp/verify/c-1"
    assert compensation.request["method"] == "DELETE"
    [failed] = run.of_type(ExecutionFailed)
    assert failed.failed_node == "mlro_approval"
    assert failed.compensated is True


@pytest.mark.parametrize(
    ("review", "expected_ran"),
    [
        (
            "approved",
            {"kyc_review", "review_gate", "aml_screening", "route_aml", "onboarded_webhook"},
        ),
        ("rejected", {"kyc_review", "review_gate", "reject_customer"}),
    ],
)
def test_requires_review_asks_a_compliance_officer(review: str, expected_ran: set[str]) -> None:
    run = start()
    run.succeed("capture_ktp", {"verdict": "requires_review"})

    run.approve("kyc_review", review)
    if review == "approved":
        run.succeed("aml_screening", {"result": "clear"})
        run.succeed("onboarded_webhook")
    else:
        run.succeed("reject_customer")

    assert ran(run) == {"capture_ktp", "route_kyc", "review_gate", *expected_ran}
    assert run.execution_status is ExecutionStatus.SUCCEEDED


def test_review_expiry_escalates_then_rejects() -> None:
    run = start()
    run.succeed("capture_ktp", {"verdict": "requires_review"})

    run.fire_next_timer()  # escalation after 1d
    run.fire_next_timer()  # expiry after 2d: on_timeout reject
    run.succeed("reject_customer")

    assert run.status("reject_customer") is S.SUCCEEDED
    assert run.status("aml_screening") is S.SKIPPED
    assert run.execution_status is ExecutionStatus.SUCCEEDED


def test_mlro_expiry_fails_the_execution() -> None:
    run = start()
    run.succeed("capture_ktp", {"verdict": "passed"})
    run.succeed("aml_screening", {"result": "confirmed_hit"})

    run.fire_next_timer()  # mlro expires after 3d: on_timeout fail
    run.succeed("compensate:capture_ktp", attempt=1)

    assert run.execution_status is ExecutionStatus.FAILED


def test_failed_identity_check_goes_to_the_rejection_webhook() -> None:
    run = start()

    run.succeed("capture_ktp", {"verdict": "failed"})
    [ready] = [r for r in run.outstanding() if r.node_id == "reject_customer"]
    run.succeed("reject_customer")

    assert ready.request["payload"] == {"customer_id": "c-1", "verdict": "failed"}
    assert run.execution_status is ExecutionStatus.SUCCEEDED


def test_identity_provider_outage_is_retried_then_succeeds() -> None:
    run = start()

    run.fail("capture_ktp", status_code=503)
    run.fire_next_timer()
    run.succeed("capture_ktp", {"verdict": "passed"})

    assert [r.attempt for r in run.of_type(StepReady) if r.node_id == "capture_ktp"] == [1, 2]
    assert run.status("aml_screening") is S.RUNNING


def test_identity_rejected_with_4xx_is_not_retried() -> None:
    from cadenza_common.events import ErrorClass

    run = start()

    run.fail("capture_ktp", error_class=ErrorClass.HTTP_4XX, status_code=422)

    assert run.execution_status is ExecutionStatus.FAILED


def test_every_path_replays_identically() -> None:
    run = start()
    run.succeed("capture_ktp", {"verdict": "requires_review"})
    run.approve("kyc_review", "approved")
    run.succeed("aml_screening", {"result": "confirmed_hit"})
    run.approve("mlro_approval", "approved")
    run.succeed("onboarded_webhook")

    state, emits = run.replay()

    assert state == run.state
    assert emits == run.emits
