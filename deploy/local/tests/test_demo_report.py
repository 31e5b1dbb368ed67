"""How `make run` judges and prints an execution (no servers)."""

from __future__ import annotations

from typing import Any

from cadenza_devstack.demo_branches import BRANCHES, Outcome, problems, timeline
from cadenza_devstack.demo_setup import DemoState

T0 = "2026-11-21T10:00:00+00:00"


def step(node: str, status: str, scheduled: str | None, finished: str | None,
         node_type: str = "service_call") -> dict[str, Any]:
    return {"nodeId": node, "nodeType": node_type, "status": status, "attempts": 1,
            "scheduledAt": scheduled, "startedAt": scheduled, "finishedAt": finished}


def execution(status: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "x-1", "status": status, "createdAt": T0, "startedAt": T0,
            "finishedAt": "2026-11-21T10:00:01.500000+00:00", "steps": steps}


CLEAR = execution("succeeded", [
    step("onboarded_webhook", "succeeded", "2026-11-21T10:00:01+00:00",
         "2026-11-21T10:00:01.500000+00:00", "webhook_emit"),
    step("capture_ktp", "succeeded", T0, "2026-11-21T10:00:00.250000+00:00"),
    step("aml_screening", "succeeded", "2026-11-21T10:00:00.250000+00:00",
         "2026-11-21T10:00:01+00:00"),
    step("reject_customer", "skipped", None, None, ""),
])


def test_an_execution_that_took_its_branch_has_no_problems() -> None:
    assert problems(BRANCHES[0], CLEAR) == []


def test_a_wrong_status_and_a_wrong_step_are_both_reported() -> None:
    failed = execution("failed", [step("capture_ktp", "failed", T0, T0)])

    found = problems(BRANCHES[0], failed)

    assert "status failed, expected succeeded" in found
    assert "aml_screening is None, expected succeeded" in found


def test_timeline_lists_steps_in_the_order_they_ran_with_durations() -> None:
    text = timeline(Outcome(BRANCHES[0], CLEAR))
    rows = [line.split()[0] for line in text.splitlines()[4:]]

    assert rows == ["capture_ktp", "aml_screening", "onboarded_webhook", "reject_customer"]
    assert "250 ms" in text
    assert "[ok]" in text


def test_demo_state_survives_a_save_and_load(tmp_path: Any) -> None:
    state = DemoState(api_port=1234, demo_port=5678, admin_key="cdz_a_b", approver_key="cdz_c_d")

    state.save(tmp_path)

    assert DemoState.load(tmp_path) == state
    assert (tmp_path / "demo.json").stat().st_mode & 0o077 == 0
