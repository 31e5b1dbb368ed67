"""decide(): one table-driven test per semantic (joins, decisions, errors, timers, ...)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from cadenza_common.events import (
    ApprovalDecided,
    ApprovalEscalated,
    ApprovalExpired,
    ApprovalRequested,
    CancelRequested,
    ChildExecutionFinished,
    CompensationStarted,
    ErrorClass,
    ExecutionCancelled,
    ExecutionFailed,
    ExecutionRequested,
    ExecutionStarted,
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
    Topic,
    WorkflowSnapshot,
)
from cadenza_common.workflow import RetryPolicy
from cadenza_scheduler.domain import ExecutionState, NodeStatus, decide, due_timers
from cadenza_scheduler.domain.outcomes import backoff_seconds
from cadenza_scheduler.domain.simulate import T0, Run, request

S = NodeStatus


def call(node_id: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": "service_call",
        "connection": "svc",
        "path": f"/{node_id}",
        "depends_on": list(deps),
        **extra,
    }


def wf(*nodes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"slug": "t", "nodes": list(nodes), **extra}


def ready_ids(run: Run) -> list[str]:
    return sorted(r.node_id for r in run.outstanding())


# --- start, fork/join ---------------------------------------------------------------------


def test_start_emits_history_and_ready_steps_for_roots() -> None:
    run = Run(wf(call("a"), call("b"), call("c", "a", "b")), {"x": 1})

    routed = run.last.routed()

    assert [type(e).__name__ for _, e in routed][:1] == ["ExecutionStarted"]
    assert ready_ids(run) == ["a", "b"]
    assert {t for t, e in routed if isinstance(e, StepReady)} == {Topic.STEPS_READY}
    assert [e.seq for _, e in routed if t_is_history(_)] == list(
        range(1, 1 + sum(t_is_history(t) for t, _ in routed))
    )


def t_is_history(topic: Topic) -> bool:
    return topic is Topic.EXECUTIONS_EVENTS


def test_step_ready_carries_rendered_request_and_idempotency_key() -> None:
    run = Run(
        wf(call("a", method="POST", body={"n": "${trigger.n}", "s": "${secrets.K}"})), {"n": 7}
    )

    [ready] = run.outstanding()

    assert ready.request["body"] == {"n": 7, "s": "${secrets.K}"}
    assert ready.idempotency_key == f"{run.execution_id}:a"
    assert ready.node_type == "service_call"


@pytest.mark.parametrize(
    ("join", "extra", "finish", "expect_ready"),
    [
        ("all", {}, ["a"], False),
        ("all", {}, ["a", "b", "c"], True),
        ("any", {}, ["a"], True),
        ("n_of_m", {"join_n": 2}, ["a"], False),
        ("n_of_m", {"join_n": 2}, ["a", "c"], True),
    ],
)
def test_join_policies(
    join: str, extra: dict[str, Any], finish: list[str], expect_ready: bool
) -> None:
    run = Run(wf(call("a"), call("b"), call("c"), call("d", "a", "b", "c", join=join, **extra)))

    for node_id in finish:
        run.succeed(node_id)

    assert (run.status("d") is S.RUNNING) is expect_ready


@pytest.mark.parametrize(
    ("join", "extra", "expected"),
    [("all", {}, S.SKIPPED), ("any", {}, S.SKIPPED), ("n_of_m", {"join_n": 1}, S.SKIPPED)],
)
def test_join_is_skipped_when_it_can_no_longer_be_satisfied(
    join: str, extra: dict[str, Any], expected: NodeStatus
) -> None:
    run = Run(
        wf(
            call("a", on_error="skip"),
            call("b", on_error="skip"),
            call("d", "a", "b", join=join, **extra),
        )
    )

    run.fail("a", retryable=False)
    run.fail("b", retryable=False)

    assert run.status("d") is expected
    assert run.execution_status is ExecutionStatus.SUCCEEDED


def test_join_all_runs_when_non_skipped_predecessors_succeeded() -> None:
    run = Run(wf(call("a", on_error="skip"), call("b"), call("d", "a", "b")))

    run.fail("a", retryable=False)
    run.succeed("b")

    assert run.status("d") is S.RUNNING


# --- decisions and skip propagation ------------------------------------------------------


def branching() -> dict[str, Any]:
    return wf(
        call("a"),
        {
            "id": "pick",
            "type": "decision",
            "depends_on": ["a"],
            "cases": [
                {"when": "step.a.output.v > 10", "next": ["big"]},
                {"when": "step.a.output.v > 5", "next": ["mid"]},
            ],
            "default": ["small"],
        },
        call("big", "pick"),
        call("mid", "pick"),
        call("small", "pick"),
        call("after_big", "big"),
        call("join", "big", "mid", "small", join="any"),
    )


@pytest.mark.parametrize(
    ("value", "taken", "skipped"),
    [
        (20, "big", {"mid", "small"}),
        (7, "mid", {"big", "small", "after_big"}),
        (1, "small", {"big", "mid", "after_big"}),
    ],
)
def test_decision_takes_one_branch_and_skips_the_rest(
    value: int, taken: str, skipped: set[str]
) -> None:
    run = Run(branching())

    run.succeed("a", {"v": value})

    assert run.status(taken) is S.RUNNING
    assert {
        n for n in ("big", "mid", "small", "after_big") if run.status(n) is S.SKIPPED
    } == skipped
    assert {e.node_id for e in run.of_type(StepSkipped)} == skipped


def test_skipping_propagates_and_the_execution_still_succeeds() -> None:
    run = Run(branching())

    run.succeed("a", {"v": 1})
    run.succeed("small")
    run.succeed("join")

    assert run.execution_status is ExecutionStatus.SUCCEEDED
    assert run.status("after_big") is S.SKIPPED


def test_decision_expression_error_fails_the_node() -> None:
    run = Run(
        wf(
            call("a"),
            {
                "id": "d",
                "type": "decision",
                "depends_on": ["a"],
                "cases": [{"when": "step.a.output.missing == 1", "next": ["b"]}],
            },
            call("b", "d"),
        )
    )

    run.succeed("a", {})

    assert run.status("d") is S.FAILED
    [failed] = run.of_type(ExecutionFailed)
    assert failed.error.error_class is ErrorClass.EXPRESSION_ERROR


def test_transform_runs_inline() -> None:
    run = Run(
        wf(
            call("a"),
            {
                "id": "t",
                "type": "transform",
                "depends_on": ["a"],
                "expression": '{"total": $sum(step.a.output.items)}',
            },
        )
    )

    run.succeed("a", {"items": [1, 2, 3]})

    assert run.state is not None
    assert run.state.node("t").output == {"total": 6}
    assert run.execution_status is ExecutionStatus.SUCCEEDED


def test_execution_output_is_the_output_template() -> None:
    run = Run(wf(call("a"), output={"id": "${trigger.id}", "a": "${step.a.output.v}"}), {"id": "x"})

    run.succeed("a", {"v": [1]})

    [done] = run.of_type(ExecutionSucceeded)
    assert done.output == {"id": "x", "a": [1]}


# --- retries and on_error ----------------------------------------------------------------


RETRY = {
    "max_attempts": 3,
    "initial_interval": "10s",
    "backoff_coefficient": 2,
    "max_interval": "15s",
}


def test_retries_with_exponential_backoff_until_max_attempts_then_fails() -> None:
    run = Run(wf(call("a", retry=RETRY)))

    run.fail("a")
    first = run.of_type(StepRetrying)[-1]
    run.fire_next_timer()
    run.fail("a")
    second = run.of_type(StepRetrying)[-1]
    run.fire_next_timer()
    run.fail("a")

    assert first.retry_at == T0 + timedelta(seconds=10)
    assert second.retry_at - first.retry_at == timedelta(seconds=15)  # 20s capped at 15s
    assert [r.attempt for r in run.of_type(StepReady)] == [1, 2, 3]
    assert run.execution_status is ExecutionStatus.FAILED


@pytest.mark.parametrize(
    ("retry", "error", "retried"),
    [
        ({"max_attempts": 3}, {"retryable": False}, False),
        ({"max_attempts": 3}, {"retryable": True}, True),
        ({"max_attempts": 3, "non_retryable": [503]}, {"status_code": 503}, False),
        ({"max_attempts": 3, "non_retryable": ["http_5xx"]}, {}, False),
        ({"max_attempts": 3, "retry_on": ["timeout"]}, {}, False),
        ({"max_attempts": 3, "retry_on": ["http_5xx"]}, {"retryable": False}, True),
        ({"max_attempts": 1}, {}, False),
    ],
)
def test_retry_policy_decides_what_is_retried(
    retry: dict[str, Any], error: dict[str, Any], retried: bool
) -> None:
    run = Run(wf(call("a", retry=retry)))

    run.fail("a", **error)

    assert (run.status("a") is S.RETRY_WAIT) is retried


def test_jitter_is_drawn_from_the_seed_so_replay_is_identical() -> None:
    policy = RetryPolicy(initial_interval="10s", jitter=0.5)

    same = backoff_seconds(policy, 1, 42, "a"), backoff_seconds(policy, 1, 42, "a")
    other = backoff_seconds(policy, 1, 43, "a")

    assert same[0] == same[1]
    assert same[0] != other
    assert 5 <= same[0] <= 15


def test_retry_after_from_the_runner_is_respected() -> None:
    run = Run(wf(call("a", retry={"max_attempts": 2, "initial_interval": "1s"})))

    run.apply(
        StepFailed(
            execution_id=run.execution_id,
            org_id=run.state.org_id if run.state else None,
            node_id="a",
            attempt=1,  # type: ignore[arg-type]
            error=StepError(
                error_class=ErrorClass.RATE_LIMITED,
                message="slow",
                retryable=True,
                retry_after_s=30,
            ),
        )
    )

    assert run.of_type(StepRetrying)[-1].retry_at == T0 + timedelta(seconds=30)


@pytest.mark.parametrize(
    ("on_error", "a_status", "b_status", "execution"),
    [
        ("fail", S.FAILED, S.SKIPPED, ExecutionStatus.FAILED),
        ("skip", S.SKIPPED, S.SKIPPED, ExecutionStatus.SUCCEEDED),
        ("continue", S.SUCCEEDED, S.RUNNING, ExecutionStatus.RUNNING),
        ({"goto": "handler"}, S.FAILED, S.SKIPPED, ExecutionStatus.RUNNING),
        ("compensate", S.FAILED, S.SKIPPED, ExecutionStatus.RUNNING),
    ],
)
def test_on_error_policies(
    on_error: Any, a_status: NodeStatus, b_status: NodeStatus, execution: ExecutionStatus
) -> None:
    run = Run(
        wf(
            call("z", compensation={"connection": "svc", "method": "DELETE"}),
            call("a", "z", on_error=on_error),
            call("b", "a"),
            call("handler"),
        )
    )
    run.succeed("z")
    if run.status("handler") is S.RUNNING:  # a plain root unless it is the goto target
        run.succeed("handler")

    run.fail("a", retryable=False)

    assert run.status("a") is a_status
    assert run.status("b") is b_status
    assert run.execution_status is execution


def test_on_error_continue_records_the_error_as_output() -> None:
    run = Run(wf(call("a", on_error="continue"), call("b", "a", body="${step.a.output.error}")))

    run.fail("a", retryable=False, status_code=500)

    [ready] = [r for r in run.outstanding() if r.node_id == "b"]
    assert ready.request["body"]["status_code"] == 500


def test_goto_runs_the_handler_only_when_the_node_fails() -> None:
    doc = wf(call("a", on_error={"goto": "h"}), call("h"), call("b", "a"))
    failing, passing = Run(doc), Run(doc)

    failing.fail("a", retryable=False)
    passing.succeed("a")

    assert failing.status("h") is S.RUNNING
    assert failing.status("b") is S.SKIPPED
    assert passing.status("h") is S.SKIPPED
    assert passing.status("b") is S.RUNNING


def test_compensation_runs_in_reverse_completion_order() -> None:
    comp = {"connection": "svc", "method": "DELETE", "path": "/undo"}
    run = Run(
        wf(
            call("a", compensation=comp),
            call("b", compensation=comp),
            call("c", "a", "b", compensation=comp),
            call("d", "c"),
            on_failure="compensate",
        )
    )
    run.succeed("b")
    run.succeed("a")
    run.succeed("c")

    run.fail("d", retryable=False)
    order = run.of_type(CompensationStarted)[0].order
    for node_id in order:
        run.succeed(f"compensate:{node_id}", attempt=1)

    assert order == ["c", "a", "b"]
    assert [r.node_id for r in run.of_type(StepReady) if r.node_type == "compensation"] == [
        "compensate:c",
        "compensate:a",
        "compensate:b",
    ]
    [failed] = run.of_type(ExecutionFailed)
    assert failed.compensated is True
    assert failed.failed_node == "d"


def test_a_failed_compensation_is_recorded_and_the_rest_still_run() -> None:
    comp = {"connection": "svc", "method": "DELETE"}
    run = Run(
        wf(
            call("a", compensation=comp),
            call("b", "a", compensation=comp),
            call("c", "b"),
            on_failure="compensate",
        )
    )
    run.succeed("a")
    run.succeed("b")
    run.fail("c", retryable=False)

    run.fail("compensate:b", attempt=1)
    run.succeed("compensate:a", attempt=1)

    [failed] = run.of_type(ExecutionFailed)
    assert failed.compensated is False
    assert run.state is not None
    assert run.state.finished


# --- timers: wait, step timeout, execution timeout ---------------------------------------


def test_wait_becomes_a_timer_and_completes_when_it_fires() -> None:
    run = Run(wf({"id": "w", "type": "wait", "duration": "5m"}, call("b", "w")))
    assert run.state is not None
    [timer] = run.state.timers

    fired = due_timers(run.state, T0 + timedelta(minutes=5))
    run.fire_next_timer()

    assert timer.kind is TimerKind.WAIT
    assert timer.due_at == T0 + timedelta(minutes=5)
    assert [t.timer_id for t in fired] == [timer.timer_id]
    assert due_timers(run.state, T0) == []
    assert run.status("b") is S.RUNNING


def test_wait_until_a_templated_timestamp() -> None:
    run = Run(
        wf({"id": "w", "type": "wait", "until": "${trigger.at}"}),
        {"at": "2026-01-02T00:00:00+00:00"},
    )

    assert run.state is not None
    assert run.state.timers[0].due_at.isoformat() == "2026-01-02T00:00:00+00:00"


def test_step_timeout_fails_the_attempt_and_a_late_result_is_ignored() -> None:
    run = Run(wf(call("a", timeout="30s", retry={"max_attempts": 2, "initial_interval": "1s"})))

    run.fire_next_timer()
    late = run.succeed("a", attempt=1)

    assert run.of_type(StepFailed)[0].error.error_class is ErrorClass.TIMEOUT
    assert late.emits == []
    assert run.status("a") is S.RETRY_WAIT


def test_execution_timeout_cancels_running_steps() -> None:
    run = Run(wf(call("a"), call("b", "a"), timeout="1h"))

    run.fire_next_timer()

    assert run.execution_status is ExecutionStatus.TIMED_OUT
    assert run.status("a") is S.CANCELLED
    assert run.status("b") is S.SKIPPED
    assert run.of_type(ExecutionTimedOut)[0].timeout_s == 3600


def test_a_stale_timer_is_ignored() -> None:
    run = Run(wf(call("a", timeout="30s")))
    assert run.state is not None
    from cadenza_scheduler.domain import timer_fired

    stale = timer_fired(run.state, run.state.timers[0])
    run.succeed("a")
    decision = decide(run.state, stale, T0 + timedelta(minutes=1))

    assert decision.emits == []
    assert decision.state is run.state


# --- human approval ---------------------------------------------------------------------


def approval(**extra: Any) -> dict[str, Any]:
    return wf(
        {
            "id": "ok",
            "type": "human_approval",
            "approvers": ["mlro"],
            "required": 2,
            "four_eyes": True,
            "expires_in": "2d",
            "escalate_after": "1d",
            "escalate_to": ["lead"],
            "instructions": "Check ${trigger.name}",
            "context": {"n": "${trigger.name}"},
            **extra,
        },
        call("next", "ok"),
    )


def test_approval_request_carries_everything() -> None:
    run = Run(approval(), {"name": "Siti"})

    [req] = run.of_type(ApprovalRequested)

    assert req.approvers == ["mlro"]
    assert req.required == 2
    assert req.four_eyes is True
    assert req.expires_at == T0 + timedelta(days=2)
    assert req.escalate_at == T0 + timedelta(days=1)
    assert req.escalate_to == ["lead"]
    assert req.instructions == "Check Siti"
    assert req.context == {"n": "Siti"}
    assert run.outstanding() == []  # nothing goes to the runners


@pytest.mark.parametrize(
    ("decision", "on_reject", "node", "execution"),
    [
        ("approved", "succeed", S.SUCCEEDED, ExecutionStatus.RUNNING),
        ("rejected", "succeed", S.SUCCEEDED, ExecutionStatus.RUNNING),
        ("rejected", "fail", S.FAILED, ExecutionStatus.FAILED),
    ],
)
def test_approval_decision(
    decision: str, on_reject: str, node: NodeStatus, execution: ExecutionStatus
) -> None:
    run = Run(approval(on_reject=on_reject))

    run.approve("ok", decision)

    assert run.status("ok") is node
    assert run.execution_status is execution
    assert run.of_type(ApprovalDecided)[0].decision == decision
    assert run.state is not None
    assert not [t for t in run.state.timers if t.node_id == "ok"]


def test_a_rejection_the_approvals_service_sends_as_step_failed_is_recorded_as_decided() -> None:
    run = Run(approval(on_reject="fail"))
    assert run.state is not None
    details = {"decision": "rejected", "approvers": [], "comments": ["no"], "rejected_by": "k2"}

    run.apply(
        StepFailed(
            execution_id=run.execution_id,
            org_id=run.state.org_id,
            node_id="ok",
            error=StepError(
                error_class=ErrorClass.APPROVAL_REJECTED,
                message="approval rejected by k2",
                retryable=False,
                details=details,
            ),
        )
    )

    [decided] = run.of_type(ApprovalDecided)
    assert (decided.decision, decided.comments) == ("rejected", ["no"])
    assert run.status("ok") is S.FAILED
    assert run.execution_status is ExecutionStatus.FAILED
    assert run.of_type(ExecutionFailed)[0].error.error_class is ErrorClass.APPROVAL_REJECTED


def test_escalation_then_expiry_with_on_timeout() -> None:
    run = Run(approval(on_timeout="approve"))

    run.fire_next_timer()
    run.fire_next_timer()

    assert run.of_type(ApprovalEscalated)[0].escalate_to == ["lead"]
    assert run.of_type(ApprovalExpired)[0].on_timeout == "approve"
    assert run.state is not None
    assert run.state.node("ok").output["decision"] == "approved"
    assert run.status("next") is S.RUNNING


def test_expiry_with_on_timeout_fail_fails_the_node() -> None:
    run = Run(approval(on_timeout="fail", escalate_after=None))

    run.fire_next_timer()

    assert run.status("ok") is S.FAILED
    assert run.of_type(ExecutionFailed)[0].error.error_class is ErrorClass.APPROVAL_EXPIRED


def test_a_decision_after_expiry_is_ignored() -> None:
    run = Run(approval(on_timeout="reject", escalate_after=None))
    run.fire_next_timer()

    late = run.approve("ok")

    assert late.emits == []
    assert run.state is not None
    assert run.state.node("ok").output["decision"] == "rejected"


# --- cancel --------------------------------------------------------------------------------


def test_cancel_stops_running_steps_and_closes_pending_approvals() -> None:
    run = Run(wf(call("a"), approval()["nodes"][0], call("b", "a")))

    run.cancel("customer withdrew")
    after = run.succeed("a", attempt=1)

    assert run.execution_status is ExecutionStatus.CANCELLED
    assert run.status("a") is S.CANCELLED
    assert run.status("ok") is S.CANCELLED
    assert run.status("b") is S.SKIPPED
    assert {e.node_id for e in run.of_type(StepFailed)} == {"a", "ok"}
    assert run.of_type(ExecutionCancelled)[0].reason == "customer withdrew"
    assert run.state is not None
    assert run.state.timers == []
    assert after.emits == []


# --- map ------------------------------------------------------------------------------------


def test_map_respects_its_concurrency_and_collects_outputs_in_order() -> None:
    run = Run(
        wf(
            {
                "id": "m",
                "type": "map",
                "items": "${trigger.ids}",
                "concurrency": 2,
                "node": {"type": "service_call", "connection": "svc", "path": "/x/${item}"},
            }
        ),
        {"ids": [10, 11, 12, 13]},
    )
    assert ready_ids(run) == ["m[0]", "m[1]"]

    run.succeed("m[1]", "r1")
    in_flight = ready_ids(run)
    run.succeed("m[0]", "r0")
    run.succeed("m[2]", "r2")
    run.succeed("m[3]", "r3")

    assert in_flight == ["m[0]", "m[2]"]
    assert [r.request["path"] for r in run.of_type(StepReady)] == [
        "/x/10",
        "/x/11",
        "/x/12",
        "/x/13",
    ]
    assert run.state is not None
    assert run.state.node("m").output == ["r0", "r1", "r2", "r3"]
    assert run.execution_status is ExecutionStatus.SUCCEEDED


def test_map_item_failure_fails_the_map_after_item_retries() -> None:
    run = Run(
        wf(
            {
                "id": "m",
                "type": "map",
                "items": [1, 2],
                "retry": {"max_attempts": 2},
                "node": {"type": "service_call", "connection": "svc"},
            }
        )
    )

    run.fail("m[0]")
    run.fire_next_timer()
    run.fail("m[0]")

    assert [r.node_id for r in run.of_type(StepReady)] == ["m[0]", "m[1]", "m[0]"]
    assert run.status("m") is S.FAILED
    assert run.execution_status is ExecutionStatus.FAILED


def test_map_of_transforms_runs_inline() -> None:
    run = Run(
        wf(
            {
                "id": "m",
                "type": "map",
                "items": [1, 2, 3],
                "concurrency": 1,
                "node": {"type": "transform", "expression": "item * 10 + index"},
            }
        )
    )

    assert run.state is not None
    assert run.state.node("m").output == [10, 21, 32]


def test_map_over_something_that_is_not_a_list_fails() -> None:
    run = Run(
        wf(
            {
                "id": "m",
                "type": "map",
                "items": "${trigger.x}",
                "node": {"type": "transform", "expression": "item"},
            }
        ),
        {"x": 5},
    )

    assert run.status("m") is S.FAILED


# --- sub_workflow ----------------------------------------------------------------------------


CHILD_ID = __import__("uuid").UUID("0190f0f0-0000-7000-8000-0000000000c1")
GRANDCHILD_ID = __import__("uuid").UUID("0190f0f0-0000-7000-8000-0000000000c2")
BUNDLE = {
    "child@3": WorkflowSnapshot(
        workflow_id=CHILD_ID,
        workflow_version=3,
        workflow=wf({"id": "deeper", "type": "sub_workflow", "workflow": {"slug": "grandchild"}}),
    ),
    "child": WorkflowSnapshot(workflow_id=CHILD_ID, workflow_version=4, workflow=wf(call("c"))),
    "grandchild": WorkflowSnapshot(
        workflow_id=GRANDCHILD_ID, workflow_version=1, workflow=wf(call("g"))
    ),
}


def test_sub_workflow_requests_a_child_with_its_bundled_snapshot_and_takes_its_output() -> None:
    run = Run(
        wf(
            {
                "id": "kid",
                "type": "sub_workflow",
                "workflow": {"slug": "child", "version": 3},
                "input": {"v": "${trigger.v}"},
            },
            call("after", "kid"),
        ),
        {"v": 1},
        sub_workflows=BUNDLE,
    )
    [(topic, child)] = [(t, e) for t, e in run.last.routed() if isinstance(e, ExecutionRequested)]

    run.child_finished("kid", ExecutionStatus.SUCCEEDED, {"result": 9})

    assert topic is Topic.EXECUTIONS_COMMANDS
    assert child.parent is not None
    assert child.parent.node_id == "kid"
    assert child.workflow_ref == "child@3"
    assert (child.workflow_id, child.workflow_version) == (CHILD_ID, 3)
    assert child.workflow == BUNDLE["child@3"].workflow
    assert child.sub_workflows == BUNDLE
    assert child.input == {"v": 1}
    assert run.state is not None
    assert run.state.node("kid").output == {"result": 9}
    assert run.status("after") is S.RUNNING


def test_a_child_starts_its_own_child_from_the_bundle_it_was_given() -> None:
    parent = Run(
        wf({"id": "kid", "type": "sub_workflow", "workflow": {"slug": "child", "version": 3}}),
        sub_workflows=BUNDLE,
    )
    [child_request] = parent.of_type(ExecutionRequested)

    child = decide(None, child_request, T0)

    [grandchild] = [e for e in child.emits if isinstance(e, ExecutionRequested)]
    assert (grandchild.workflow_id, grandchild.workflow_version) == (GRANDCHILD_ID, 1)
    assert grandchild.workflow == BUNDLE["grandchild"].workflow
    assert grandchild.parent is not None
    assert grandchild.parent.execution_id == child_request.execution_id


def test_a_sub_workflow_missing_from_the_bundle_fails_the_node_without_a_child() -> None:
    run = Run(wf({"id": "kid", "type": "sub_workflow", "workflow": {"slug": "elsewhere"}}))

    failed = run.of_type(ExecutionFailed)

    assert run.of_type(ExecutionRequested) == []
    assert run.status("kid") is S.FAILED
    assert failed[0].error.error_class is ErrorClass.INVALID_REQUEST
    assert "elsewhere" in failed[0].error.message


def test_failed_child_fails_the_node() -> None:
    run = Run(
        wf({"id": "kid", "type": "sub_workflow", "workflow": {"slug": "child"}}),
        sub_workflows=BUNDLE,
    )

    run.child_finished("kid", ExecutionStatus.FAILED)

    assert run.of_type(ExecutionFailed)[0].error.error_class is ErrorClass.CHILD_FAILED


def test_a_child_reports_its_end_to_the_parent_key() -> None:
    from cadenza_common.events import ParentRef

    parent = ParentRef(execution_id=request({}).execution_id, node_id="kid")
    req = request(wf(call("a")), execution_id=__import__("uuid").UUID(int=77))
    child = decide(None, req.model_copy(update={"parent": parent}), T0)
    assert child.state is not None
    done = decide(
        child.state,
        StepSucceeded(
            execution_id=req.execution_id, org_id=req.org_id, node_id="a", output={"x": 1}
        ),
        T0,
    )

    [(topic, finished)] = [
        (t, e) for t, e in done.routed() if isinstance(e, ChildExecutionFinished)
    ]

    assert topic is Topic.EXECUTIONS_COMMANDS
    assert finished.partition_key() == str(parent.execution_id)
    assert finished.status is ExecutionStatus.SUCCEEDED
    assert finished.output == {"a": {"x": 1}}


# --- duplicates, stale events, invalid snapshots, serialisation --------------------------------


def test_duplicate_completion_changes_nothing() -> None:
    run = Run(wf(call("a"), call("b", "a")))
    first = run.succeed("a")
    before = run.state

    again = decide(before, run.inputs[-1][0], T0)

    assert first.emits
    assert again.emits == []
    assert again.state is before


@pytest.mark.parametrize("event_factory", ["requested", "cancel", "completion"])
def test_events_for_a_finished_execution_change_nothing(event_factory: str) -> None:
    run = Run(wf(call("a")))
    run.succeed("a")
    events = {
        "requested": run.inputs[0][0],
        "completion": run.inputs[1][0],
        "cancel": CancelRequested(execution_id=run.execution_id, org_id=request({}).org_id),
    }

    decision = decide(run.state, events[event_factory], T0)

    assert decision.emits == []
    assert decision.state is run.state


def test_events_for_an_unknown_execution_change_nothing() -> None:
    event = CancelRequested(execution_id=request({}).execution_id, org_id=request({}).org_id)

    assert decide(None, event, T0).state is None


def test_an_invalid_snapshot_fails_the_execution_without_state() -> None:
    decision = decide(None, request({"slug": "x", "nodes": [{"id": "a", "type": "nope"}]}), T0)

    assert decision.state is None
    assert [type(e) for e in decision.emits] == [ExecutionStarted, ExecutionFailed]
    assert decision.emits[1].error.error_class is ErrorClass.INVALID_REQUEST  # type: ignore[attr-defined]


def test_state_round_trips_through_json() -> None:
    run = Run(approval(), {"name": "x"})
    assert run.state is not None

    restored = ExecutionState.model_validate_json(run.state.model_dump_json())

    assert restored == run.state
    assert decide(restored, run.inputs[0][0], T0).emits == []


def test_decide_does_not_mutate_its_input_state() -> None:
    run = Run(wf(call("a"), call("b", "a")))
    assert run.state is not None
    snapshot = run.state.model_dump_json()

    decide(run.state, run.inputs[0][0].model_copy(), T0)
    run2 = decide(
        run.state,
        StepSucceeded(execution_id=run.execution_id, org_id=run.state.org_id, node_id="a"),
        T0,
    )

    assert run.state.model_dump_json() == snapshot
    assert run2.state is not run.state


def test_event_ids_are_deterministic_and_unique() -> None:
    first, second = Run(branching()), Run(branching())
    for run in (first, second):
        run.succeed("a", {"v": 7})

    ids = [e.event_id for e in first.emits]

    assert ids == [e.event_id for e in second.emits]
    assert len(set(ids)) == len(ids)


def test_state_survives_dump_and_load_and_reuses_the_parsed_spec() -> None:
    from cadenza_scheduler.domain import dump_state, load_state

    run = Run(approval(), {"name": "x"})
    assert run.state is not None

    first = load_state(dump_state(run.state))
    second = load_state(dump_state(run.state))

    assert first == run.state
    assert first.spec is second.spec
    assert decide(first, run.inputs[0][0], T0).emits == []


def test_executions_of_one_snapshot_share_one_spec_and_one_graph() -> None:
    from cadenza_scheduler.domain import dump_state, load_state
    from cadenza_scheduler.domain.graph import graph_of

    first, second = Run(wf(call("a"), call("b", "a"))), Run(wf(call("a"), call("b", "a")))
    other = Run(wf(call("a"), call("c", "a")))
    assert first.state is not None
    assert second.state is not None
    assert other.state is not None

    assert first.state.spec is second.state.spec
    assert graph_of(first.state.spec) is graph_of(second.state.spec)
    assert other.state.spec is not first.state.spec
    assert load_state(dump_state(second.state)).spec is first.state.spec


def test_an_invalid_snapshot_is_refused_every_time_it_comes() -> None:
    for _ in range(2):
        run = Run(wf(call("a", "missing")))

        assert run.state is None
        assert [type(e).__name__ for e in run.emits] == ["ExecutionStarted", "ExecutionFailed"]


def test_a_trigger_value_cannot_smuggle_a_secret_reference_to_the_runner() -> None:
    from cadenza_common.templating import resolve_runner_refs

    run = Run(
        wf(call("a", headers={"X-Name": "n=${trigger.name}"}, body={"name": "${trigger.name}"})),
        {"name": "${secrets.DB_PASSWORD}"},
    )
    [ready] = run.outstanding()

    final = resolve_runner_refs(ready.request, env=lambda _: None, secrets=lambda _: "LEAK")

    assert final["headers"] == {"X-Name": "n=${secrets.DB_PASSWORD}"}
    assert final["body"] == {"name": "${secrets.DB_PASSWORD}"}


def test_service_call_output_mapping_shapes_the_response() -> None:
    run = Run(wf(call("a", output='{"id": output.body.customer.id}'), call("b", "a")))

    run.succeed("a", {"status": 200, "body": {"customer": {"id": "k-1", "noise": 1}}})

    assert run.state is not None
    assert run.state.node("a").output == {"id": "k-1"}


def test_webhook_emit_goes_to_the_runner_with_its_event_and_payload() -> None:
    run = Run(
        wf(
            {
                "id": "w",
                "type": "webhook_emit",
                "url": "https://hooks.example/x",
                "event": "thing.done",
                "payload": {"n": "${trigger.n}"},
            }
        ),
        {"n": 2},
    )

    [ready] = run.outstanding()

    assert ready.node_type == "webhook_emit"
    assert ready.request == {
        "url": "https://hooks.example/x",
        "event": "thing.done",
        "payload": {"n": 2},
    }


def test_sub_workflow_timeout_cancels_the_child() -> None:
    run = Run(
        wf({"id": "kid", "type": "sub_workflow", "workflow": {"slug": "child"}, "timeout": "1m"}),
        sub_workflows=BUNDLE,
    )
    assert run.state is not None
    child = run.state.node("kid").child_execution_id

    run.fire_next_timer()

    [cancel] = [e for e in run.last.emits if isinstance(e, CancelRequested)]
    assert cancel.execution_id == child
    assert run.execution_status is ExecutionStatus.FAILED


def test_a_compensation_that_never_answers_times_out_and_the_execution_ends() -> None:
    comp = {"connection": "svc", "method": "DELETE", "timeout": "10s"}
    run = Run(wf(call("a", compensation=comp), call("b", "a"), on_failure="compensate"))
    run.succeed("a")
    run.fail("b", retryable=False)

    run.fire_next_timer()

    [failed] = run.of_type(ExecutionFailed)
    assert failed.compensated is False
    assert run.state is not None
    assert run.state.finished
