"""Workflow shapes end to end, checked through the public API (and what the stub saw)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest
from system_harness import System
from system_stub import StubServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def call(node_id: str, path: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "service_call", "connection": "stub", "path": path,
            "depends_on": list(deps), **extra}


def steps_by_id(execution: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["nodeId"]: s for s in execution["steps"]}


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_fan_out_runs_three_calls_in_parallel_and_the_join_combines_them(
    system: System, stub: StubServer
) -> None:
    slug = unique("fan")
    spec = {
        "nodes": [
            call("a", f"/{slug}/a", query={"latency_ms": "300"}),
            call("b", f"/{slug}/b", query={"latency_ms": "300"}),
            call("c", f"/{slug}/c", query={"latency_ms": "300"}),
            {"id": "combine", "type": "transform", "depends_on": ["a", "b", "c"],
             "expression": '{"paths": [step.a.output.path, step.b.output.path, '
                           'step.c.output.path]}'},
        ],
        "output": "${step.combine.output}",
    }
    system.api.workflow(slug, spec)

    done = system.api.wait_finished(system.api.execute(slug)["executionId"])

    assert done["status"] == "succeeded", done
    assert done["output"] == {"paths": [f"/{slug}/a", f"/{slug}/b", f"/{slug}/c"]}
    steps = steps_by_id(done)
    assert {n: s["status"] for n, s in steps.items()} == dict.fromkeys(
        ["a", "b", "c", "combine"], "succeeded")
    calls = stub.recorder.matching(f"/{slug}/")
    arrivals = sorted(c.at for c in calls)
    assert len(calls) == 3
    assert arrivals[-1] - arrivals[0] < 0.3, "the three calls did not overlap"
    assert stub.recorder.max_in_flight[slug] == 3
    last_call_end = max(at(steps[n]["finishedAt"]) for n in "abc")
    assert at(steps["combine"]["startedAt"] or steps["combine"]["scheduledAt"]) >= last_call_end


def test_saga_failing_at_step_three_compensates_two_then_one(
    system: System, stub: StubServer
) -> None:
    slug = unique("saga")

    def undo(node: str) -> dict[str, Any]:
        return {"connection": "stub", "method": "DELETE", "path": f"/{slug}/undo/{node}"}

    spec = {
        "on_failure": "compensate",
        "nodes": [
            call("reserve", f"/{slug}/reserve", method="POST", compensation=undo("reserve")),
            call("charge", f"/{slug}/charge", "reserve", method="POST",
                 compensation=undo("charge")),
            call("ship", f"/{slug}/ship", "charge", method="POST",
                 query={"fail": "always", "status": "400"}, compensation=undo("ship")),
        ],
    }
    system.api.workflow(slug, spec)

    done = system.api.wait_finished(system.api.execute(slug)["executionId"])

    assert done["status"] == "failed", done
    assert done["error"]["failed_node"] == "ship"
    assert done["error"]["compensated"] is True
    undone = [c.path for c in stub.recorder.matching(f"/{slug}/undo/")]
    assert undone == [f"/{slug}/undo/charge", f"/{slug}/undo/reserve"]
    steps = steps_by_id(done)
    assert {n: s["status"] for n, s in steps.items()} == {
        "reserve": "compensated", "charge": "compensated", "ship": "failed",
        "compensate:charge": "succeeded", "compensate:reserve": "succeeded",
    }
    assert steps["ship"]["error"]["error_class"] == "http_4xx"
    assert at(steps["compensate:charge"]["finishedAt"]) <= at(
        steps["compensate:reserve"]["finishedAt"])
    started = system.api.audit_log(action="compensation.started", resourceId=done["id"])
    assert [e["after"]["order"] for e in started] == [["charge", "reserve"]]


def test_wait_holds_the_next_step_for_its_duration(system: System) -> None:
    slug = unique("wait")
    spec = {
        "nodes": [
            call("before", f"/{slug}/before"),
            {"id": "pause", "type": "wait", "duration": "2s", "depends_on": ["before"]},
            call("after", f"/{slug}/after", "pause"),
        ]
    }
    system.api.workflow(slug, spec)

    done = system.api.wait_finished(system.api.execute(slug)["executionId"])

    assert done["status"] == "succeeded", done
    steps = steps_by_id(done)
    assert steps["pause"]["status"] == "succeeded"
    waited = at(steps["after"]["scheduledAt"]) - at(steps["before"]["finishedAt"])
    assert waited.total_seconds() >= 2.0


def test_a_retried_call_succeeds_on_the_third_attempt_with_one_idempotency_key(
    system: System, stub: StubServer
) -> None:
    slug = unique("retry")
    system.connection(slug)  # its own breaker: the failures must not trip the shared one
    spec = {
        "nodes": [
            {"id": "flaky", "type": "service_call", "connection": slug, "path": f"/{slug}/x",
             "query": {"fail": "2"},
             "retry": {"max_attempts": 3, "initial_interval": "200ms"}},
        ]
    }
    system.api.workflow(slug, spec)

    started = system.api.execute(slug)
    done = system.api.wait_finished(started["executionId"])

    assert done["status"] == "succeeded", done
    flaky = steps_by_id(done)["flaky"]
    assert flaky["attempts"] == 3
    assert flaky["output"]["attempt"] == 3
    keys = [c.idempotency_key for c in stub.recorder.matching(f"/{slug}/")]
    assert keys == [f"{started['executionId']}:flaky"] * 3


def test_map_over_twenty_items_runs_five_at_a_time_and_keeps_their_order(
    system: System, stub: StubServer
) -> None:
    slug = unique("map")
    spec = {
        "nodes": [
            {"id": "each", "type": "map", "items": "${trigger.items}", "concurrency": 5,
             "node": {"type": "service_call", "connection": "stub",
                      "path": f"/{slug}/item/${{item}}", "query": {"latency_ms": "50-150"}}},
        ],
        "output": "${step.each.output}",
    }
    system.api.workflow(slug, spec)
    items = list(range(100, 120))

    done = system.api.wait_finished(system.api.execute(slug, {"items": items})["executionId"],
                                    timeout=90)

    assert done["status"] == "succeeded", done
    assert [o["path"] for o in done["output"]] == [f"/{slug}/item/{i}" for i in items]
    assert len(stub.recorder.matching(f"/{slug}/item/")) == 20
    assert stub.recorder.max_in_flight[slug] == 5


def test_execute_with_the_same_external_id_returns_the_first_execution(system: System) -> None:
    slug = unique("extid")
    system.api.workflow(slug, {"nodes": [call("only", f"/{slug}/only")]})
    external = f"order-{uuid.uuid4().hex[:6]}"

    first = system.api.execute(slug, {"n": 1}, external_id=external)
    again = system.api.execute(slug, {"n": 2}, external_id=external)
    other = system.api.execute(slug, {"n": 3}, external_id=external + "-b")

    assert first["created"] is True
    assert again["created"] is False
    assert again["executionId"] == first["executionId"]
    assert other["executionId"] != first["executionId"]
    done = system.api.wait_finished(first["executionId"])
    assert done["status"] == "succeeded"
    assert done["input"] == {"n": 1}
    assert done["externalId"] == external
    listed = system.api.pages("/api/executions", {"workflow": slug, "externalId": external})
    assert [e["id"] for e in listed] == [first["executionId"]]


def test_cancel_stops_a_running_execution(system: System, stub: StubServer) -> None:
    slug = unique("cancel")
    spec = {
        "nodes": [
            call("first", f"/{slug}/first"),
            {"id": "long_wait", "type": "wait", "duration": "10m", "depends_on": ["first"]},
            call("never", f"/{slug}/never", "long_wait"),
        ]
    }
    system.api.workflow(slug, spec)
    execution_id = system.api.execute(slug)["executionId"]
    system.api.wait_status(execution_id, {"running"})
    system.api.wait_for_step(execution_id, "first", "succeeded")

    system.api.call("POST", f"/api/executions/{execution_id}/cancel",
                    json={"reason": "customer withdrew"})
    done = system.api.wait_finished(execution_id)

    assert done["status"] == "cancelled", done
    assert done["error"]["message"] == "customer withdrew"
    steps = steps_by_id(done)
    assert steps["first"]["status"] == "succeeded"
    assert steps["long_wait"]["status"] == "cancelled"
    assert "never" not in steps or steps["never"]["status"] in {"cancelled", "skipped"}
    assert stub.recorder.matching(f"/{slug}/never") == []
    cancelled = system.api.audit_log(action="execution.cancelled", resourceId=execution_id)
    assert len(cancelled) == 1
    assert cancelled[0]["actor"]["kind"] == "api_key"


def test_an_approval_decided_by_signed_link_resumes_the_execution(system: System) -> None:
    slug = unique("approve")
    approver_id, approver_key = system.key("approver")
    spec = {
        "nodes": [
            {"id": "review", "type": "human_approval", "approvers": ["role:approver"],
             "four_eyes": True, "instructions": "check ${trigger.who}"},
            call("after", f"/{slug}/after", "review",
                 method="POST", body={"decision": "${step.review.output.decision}"}),
        ]
    }
    system.api.workflow(slug, spec)
    execution_id = system.api.execute(slug, {"who": "ada"})["executionId"]
    approver = system.api_as(approver_key)
    task = system.wait_for_task(approver, execution_id, "review")

    link = task["links"]["approve"]
    answer = system.anonymous().post(link)
    done = system.api.wait_finished(execution_id)
    # single use: once the approvals service recorded the decision, the API refuses the
    # link (a reuse racing the first is refused by the approvals service instead)
    reused = system.anonymous().post(link)

    assert answer.status_code == 202, answer.text
    assert reused.status_code in (409, 410), reused.text
    assert task["instructions"] == "check ada"
    assert done["status"] == "succeeded", done
    review = steps_by_id(done)["review"]
    assert review["status"] == "succeeded"
    assert review["output"]["decision"] == "approved"
    assert review["output"]["approvers"] == [approver_id]
    assert steps_by_id(done)["after"]["output"]["body"] == {"decision": "approved"}
    decided = system.api.audit_log(action="execution.approve")
    assert any(e["executionId"] == execution_id and e["actor"]["kind"] == "signed_link"
               for e in decided)


def test_a_sub_workflow_runs_as_a_child_execution_whose_output_the_parent_uses(
    system: System, stub: StubServer
) -> None:
    base = unique("sub")
    grandchild, child, parent = f"{base}-gc", f"{base}-c", f"{base}-p"
    system.api.workflow(grandchild, {
        "nodes": [call("leaf", f"/{base}/leaf", method="POST", body={"n": "${trigger.n}"})],
        "output": {"leaf_n": "${step.leaf.output.body.n}"},
    })
    system.api.workflow(child, {
        "nodes": [
            {"id": "double", "type": "transform", "expression": "trigger.n * 2"},
            {"id": "deeper", "type": "sub_workflow", "workflow": {"slug": grandchild},
             "depends_on": ["double"], "input": {"n": "${step.double.output}"}},
        ],
        "output": {"doubled": "${step.double.output}", "deep": "${step.deeper.output}"},
    })
    version = system.api.workflow(parent, {
        "nodes": [
            call("before", f"/{base}/before"),
            {"id": "kid", "type": "sub_workflow", "workflow": {"slug": child, "version": 1},
             "depends_on": ["before"], "input": {"n": "${trigger.n}"}},
            call("after", f"/{base}/after", "kid", method="POST",
                 body={"got": "${step.kid.output}"}),
        ]
    })

    started = system.api.execute(parent, {"n": 21})
    done = system.api.wait_finished(started["executionId"])

    assert version["version"] == 1
    assert done["status"] == "succeeded", done
    steps = steps_by_id(done)
    expected = {"doubled": 42, "deep": {"leaf_n": 42}}
    assert steps["kid"]["output"] == expected
    assert steps["after"]["output"]["body"] == {"got": expected}
    [kid] = system.api.pages("/api/executions", {"workflow": child})
    [leaf] = system.api.pages("/api/executions", {"workflow": grandchild})
    assert kid["parentExecutionId"] == started["executionId"]
    assert leaf["parentExecutionId"] == kid["id"]
    assert (kid["status"], leaf["status"]) == ("succeeded", "succeeded")
    assert [c.body for c in stub.recorder.matching(f"/{base}/leaf")] == [{"n": 42}]


def test_publishing_a_workflow_whose_sub_workflow_does_not_exist_is_refused(
    system: System,
) -> None:
    slug = unique("orphan")
    system.api.call("POST", "/api/workflows", json={"slug": slug, "name": slug, "spec": {
        "nodes": [{"id": "kid", "type": "sub_workflow", "workflow": {"slug": "no-such-wf"}}]}})

    refused = system.api.call("POST", f"/api/workflows/{slug}/publish", expect=(422,))

    assert refused["type"].endswith("/unresolvable-sub-workflow")
