"""The approvals service end to end over the real Kafka and Postgres."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import aiohttp
import pytest

from cadenza_approvals.handlers import build_outcome
from cadenza_approvals.repository import ApprovalRepository
from cadenza_common import events as ev
from cadenza_common.approval_links import DecisionToken, links_key, sign, verify
from cadenza_common.settings import SecuritySettings

from .conftest import Harness, running, service_settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


async def _only_outcome(harness: Harness, request: ev.ApprovalRequested) -> ev.Event:
    """The one outcome of the request, checked to stay one after a later record was handled."""
    [outcome] = await harness.completed.of(request.execution_id)
    marker = await harness.decide(request, "nobody-marker", "approve")
    await harness.recorded_event(marker)
    await asyncio.sleep(0.5)
    assert len(harness.completed.by_execution[request.execution_id]) == 1
    return outcome


async def test_one_approval_completes_the_step_approved(harness: Harness) -> None:
    request = await harness.request()

    await harness.decide(request, "alice", "approve", comment="looks right")

    outcome = await _only_outcome(harness, request)
    assert isinstance(outcome, ev.StepSucceeded)
    assert (outcome.node_id, outcome.attempt) == (request.node_id, request.attempt)
    assert outcome.output == {
        "decision": "approved",
        "approvers": ["alice"],
        "comments": ["looks right"],
    }
    task = await harness.task(request)
    assert task.status == "approved"
    assert task.outcome_emitted_at is not None


async def test_a_rejection_completes_the_step_rejected(harness: Harness) -> None:
    request = await harness.request()

    await harness.decide(request, "bob", "reject", "finance", comment="wrong amount")

    [outcome] = await harness.completed.of(request.execution_id)
    assert isinstance(outcome, ev.StepSucceeded)
    assert outcome.output == {
        "decision": "rejected",
        "approvers": [],
        "comments": ["wrong amount"],
        "rejected_by": "bob",
    }
    assert (await harness.task_status(request, "rejected")).close_reason == "decided"


async def test_a_rejection_fails_the_step_when_the_node_says_so(harness: Harness) -> None:
    request = await harness.request(on_reject="fail")

    await harness.decide(request, "alice", "reject")

    [outcome] = await harness.completed.of(request.execution_id)
    assert isinstance(outcome, ev.StepFailed)
    assert outcome.error.error_class == ev.ErrorClass.APPROVAL_REJECTED
    assert not outcome.error.retryable


async def test_two_of_three_completes_only_at_the_second_approval(harness: Harness) -> None:
    request = await harness.request(approvers=["key:alice", "key:bob", "key:carol"], required=2)

    await harness.decide(request, "alice", "approve")
    await harness.recorded(request.execution_id, 1)
    await asyncio.sleep(0.5)
    nothing_yet = list(harness.completed.by_execution.get(request.execution_id, []))
    await harness.decide(request, "carol", "approve", comment="ok")

    assert nothing_yet == []
    outcome = await _only_outcome(harness, request)
    assert isinstance(outcome, ev.StepSucceeded)
    assert outcome.output["approvers"] == ["alice", "carol"]


async def test_a_decider_without_the_role_is_refused_and_recorded(harness: Harness) -> None:
    request = await harness.request()

    await harness.decide(request, "mallory", "approve", "operator")

    [row] = await harness.recorded(request.execution_id, 1)
    assert not row.accepted
    assert row.refusal_reason == "not_an_approver"
    assert row.decided_by["id"] == "mallory"
    assert (await harness.task(request)).status == "open"


async def test_four_eyes_refuses_the_initiator_but_not_another_approver(harness: Harness) -> None:
    request = await harness.request(four_eyes=True, initiated_by="bob")

    await harness.decide(request, "bob", "approve", "finance")
    await harness.decide(request, "alice", "approve")

    first, second = await harness.recorded(request.execution_id, 2)
    assert (first.accepted, first.refusal_reason) == (False, "four_eyes")
    assert second.accepted
    [outcome] = await harness.completed.of(request.execution_id)
    assert isinstance(outcome, ev.StepSucceeded)
    assert outcome.output["approvers"] == ["alice"]


async def test_a_second_decision_by_the_same_approver_is_refused(harness: Harness) -> None:
    request = await harness.request(required=2)

    await harness.decide(request, "alice", "approve")
    await harness.decide(request, "alice", "approve")

    first, second = await harness.recorded(request.execution_id, 2)
    assert first.accepted
    assert (second.accepted, second.refusal_reason) == (False, "already_decided")
    assert (await harness.task(request)).status == "open"


async def test_an_expired_task_refuses_a_later_decision_as_late(harness: Harness) -> None:
    request = await harness.request()
    expired = ev.ApprovalExpired(
        execution_id=request.execution_id,
        org_id=request.org_id,
        node_id=request.node_id,
        on_timeout="reject",
    )

    await harness.publish(harness.topics.executions_events, expired)
    task = await harness.task_status(request, "expired")
    await harness.decide(request, "alice", "approve")

    [row] = await harness.recorded(request.execution_id, 1)
    assert task.closed_at is not None
    assert (row.accepted, row.refusal_reason) == (False, "late")
    await asyncio.sleep(0.5)
    assert request.execution_id not in harness.completed.by_execution


async def test_a_cancelled_execution_closes_its_task(harness: Harness) -> None:
    request = await harness.request()
    cancelled = ev.ExecutionCancelled(
        execution_id=request.execution_id, org_id=request.org_id, reason="user asked"
    )

    await harness.publish(harness.topics.executions_events, cancelled)

    task = await harness.task_status(request, "closed")
    assert task.close_reason == "execution ended: ExecutionCancelled"
    await harness.decide(request, "alice", "approve")
    [row] = await harness.recorded(request.execution_id, 1)
    assert row.refusal_reason == "late"


async def test_a_skipped_node_closes_its_task(harness: Harness) -> None:
    request = await harness.request()
    skipped = ev.StepSkipped(
        execution_id=request.execution_id,
        org_id=request.org_id,
        node_id=request.node_id,
        reason="branch not taken",
    )

    await harness.publish(harness.topics.executions_events, skipped)

    task = await harness.task_status(request, "closed")
    assert task.close_reason == "node ended: StepSkipped"


def _link(request: ev.ApprovalRequested, task_id: uuid.UUID, issued_to: str) -> DecisionToken:
    """Mint and verify a link as the trigger-api does; return what the token says."""
    key = links_key(SecuritySettings())
    token = DecisionToken(
        token_id=uuid.uuid4().hex,
        task_id=task_id,
        org_id=request.org_id,
        execution_id=request.execution_id,
        node_id=request.node_id,
        decision="approve",
        expires_at=ev.utcnow() + timedelta(hours=1),
        decided_by=issued_to,
    )
    return verify(key, sign(key, token), ev.utcnow())


async def test_a_signed_link_decides_once_and_never_twice(harness: Harness) -> None:
    request = await harness.request(approvers=["key:alice", "key:bob"], required=2)
    token = _link(request, (await harness.task(request)).id, "alice")

    for _ in range(2):
        await harness.decide(
            request,
            token.decided_by,
            token.decision,
            kind="signed_link",
            token_id=token.token_id,
            task_id=token.task_id,
        )

    first, second = await harness.recorded(request.execution_id, 2)
    assert first.accepted
    assert first.token_id == token.token_id
    assert (second.accepted, second.refusal_reason) == (False, "token_used")


async def test_a_signed_link_decides_as_the_key_it_was_issued_to(harness: Harness) -> None:
    request = await harness.request()
    task_id = (await harness.task(request)).id
    stranger, alice = _link(request, task_id, "mallory"), _link(request, task_id, "alice")

    for token in (stranger, alice):
        await harness.decide(
            request,
            token.decided_by,
            token.decision,
            kind="signed_link",
            token_id=token.token_id,
            task_id=token.task_id,
        )

    refused, accepted = await harness.recorded(request.execution_id, 2)
    assert refused.refusal_reason == "not_an_approver"
    assert accepted.accepted
    [outcome] = await harness.completed.of(request.execution_id)
    assert isinstance(outcome, ev.StepSucceeded)
    assert outcome.output["approvers"] == ["alice"]


async def test_a_decision_naming_its_task_completes_that_attempt(harness: Harness) -> None:
    request = await harness.request(attempt=2)
    task_id = (await harness.task(request)).id
    decision = ev.ApprovalDecisionSubmitted(
        execution_id=request.execution_id,
        org_id=request.org_id,
        node_id=request.node_id,
        decision="approve",
        decided_by=ev.Actor(kind="api_key", id="alice"),
        task_id=task_id,
    )

    await harness.publish(harness.topics.approvals_decisions, decision)

    [outcome] = await harness.completed.of(request.execution_id)
    assert isinstance(outcome, ev.StepSucceeded)
    assert outcome.attempt == 2


async def test_a_decision_naming_another_executions_task_is_refused(harness: Harness) -> None:
    other = await harness.request()
    request = await harness.request()

    await harness.decide(request, "alice", "approve", task_id=(await harness.task(other)).id)

    [row] = await harness.recorded(request.execution_id, 1)
    assert row.refusal_reason == "no_task"
    assert (await harness.task(other)).status == "open"


async def test_a_decision_delivered_twice_completes_the_step_once(harness: Harness) -> None:
    request = await harness.request()
    decision = await harness.decide(request, "alice", "approve")

    await harness.publish(harness.topics.approvals_decisions, decision)

    await _only_outcome(harness, request)
    rows = await harness.decisions(request.execution_id)
    assert [r.event_id for r in rows if r.accepted] == [decision.event_id]


async def test_a_redelivered_request_keeps_one_task(harness: Harness) -> None:
    request = await harness.request()
    first = await harness.task(request)

    await harness.publish(harness.topics.executions_events, request)
    await harness.decide(request, "alice", "approve")

    await harness.completed.of(request.execution_id)
    assert (await harness.task(request)).id == first.id


async def test_an_escalation_lets_the_escalation_targets_decide(harness: Harness) -> None:
    request = await harness.request()
    escalated = ev.ApprovalEscalated(
        execution_id=request.execution_id,
        org_id=request.org_id,
        node_id=request.node_id,
        escalate_to=["role:director"],
    )

    await harness.publish(harness.topics.executions_events, escalated)

    async def recorded() -> bool:
        task = await harness.task(request)
        return task.escalated_at is not None

    await harness.wait_for(recorded)
    await harness.decide(request, "dora", "approve", "director")
    [outcome] = await harness.completed.of(request.execution_id)
    assert isinstance(outcome, ev.StepSucceeded)


async def test_a_decision_without_a_task_is_refused_as_no_task(harness: Harness) -> None:
    phantom = ev.ApprovalRequested(
        execution_id=ev.new_event_id(), org_id=harness.org_id, node_id="ghost", approvers=[]
    )

    await harness.decide(phantom, "alice", "approve")

    [row] = await harness.recorded(phantom.execution_id, 1)
    assert (row.accepted, row.task_id, row.refusal_reason) == (False, None, "no_task")


async def test_an_outcome_committed_before_a_crash_is_sent_at_restart_once(
    harness: Harness, database_url: str
) -> None:
    request = await harness.request()
    decision = ev.ApprovalDecisionSubmitted(
        execution_id=request.execution_id,
        org_id=request.org_id,
        node_id=request.node_id,
        decision="approve",
        decided_by=ev.Actor(kind="api_key", id="alice"),
    )
    # the deciding transaction commits, then the process "dies" before sending
    await ApprovalRepository(harness.engine).record_decision(decision, build_outcome)

    async with running(service_settings(harness.kafka, database_url)):
        [outcome] = await harness.completed.of(request.execution_id)
    await harness.publish(harness.topics.approvals_decisions, decision)

    assert isinstance(outcome, ev.StepSucceeded)
    assert (await harness.task(request)).outcome_emitted_at is not None
    await _only_outcome(harness, request)


async def test_metrics_show_open_tasks_decisions_and_time_to_decision(harness: Harness) -> None:
    request = await harness.request()
    await harness.decide(request, "mallory", "approve")
    await harness.decide(request, "alice", "approve")
    await harness.completed.of(request.execution_id)
    url = f"http://127.0.0.1:{harness.service.http_port}"

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as resp:
            body = await resp.text()
        async with http.get(f"{url}/readyz") as ready:
            ready_status = ready.status

    assert ready_status == 200
    assert "cadenza_approvals_tasks_open " in body
    assert 'cadenza_approvals_decisions_total{outcome="not_an_approver"}' in body
    assert 'cadenza_approvals_decisions_total{outcome="accepted"}' in body
    assert "cadenza_approvals_time_to_decision_seconds_count" in body
