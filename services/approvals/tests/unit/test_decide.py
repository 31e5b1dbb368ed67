"""The pure approval rules: who may decide, refusals, quorum and rejection."""

from __future__ import annotations

from cadenza_approvals.domain.decide import Decision, Refusal, Task, judge, may_decide
from cadenza_common.events import Actor


def _task(**overrides: object) -> Task:
    fields: dict[str, object] = {
        "is_open": True,
        "approvers": ("role:finance", "key:alice"),
        "required": 1,
        "four_eyes": False,
        "initiated_by": "starter",
    }
    fields.update(overrides)
    return Task(**fields)  # type: ignore[arg-type]


def _by(key: str, *roles: str, kind: str = "api_key") -> Actor:
    return Actor(kind=kind, id=key, roles=list(roles))  # type: ignore[arg-type]


def _approve(key: str, *roles: str, comment: str = "", token_id: str | None = None) -> Decision:
    return Decision(_by(key, *roles), "approve", comment, token_id)


def test_a_named_key_or_a_listed_role_may_decide_others_may_not() -> None:
    task = _task()

    assert may_decide(task, _by("alice"))
    assert may_decide(task, _by("bob", "finance"))
    assert not may_decide(task, _by("carol", "operator"))
    assert not may_decide(task, Actor(kind="system", id="alice"))


def test_a_signed_link_decides_as_the_key_it_was_issued_to() -> None:
    task = _task()

    assert may_decide(task, _by("alice", kind="signed_link"))
    assert not may_decide(task, _by("mallory", kind="signed_link"))


def test_escalation_makes_the_escalation_targets_approvers() -> None:
    task = _task(escalate_to=("role:director",))

    assert may_decide(task, _by("dora", "director"))


def test_one_approval_meets_a_quorum_of_one() -> None:
    verdict = judge(_task(), [], _approve("alice", comment="fine"))

    assert verdict.accepted
    assert verdict.outcome is not None
    assert verdict.outcome.output() == {
        "decision": "approved",
        "approvers": ["alice"],
        "comments": ["fine"],
    }


def test_two_of_three_needs_two_distinct_approvals() -> None:
    task = _task(required=2)

    first = judge(task, [], _approve("alice"))
    second = judge(task, first.accepted_so_far, _approve("bob", "finance"))

    assert first.accepted
    assert first.outcome is None
    assert second.outcome is not None
    assert second.outcome.approvers == ["alice", "bob"]


def test_one_rejection_rejects_and_fails_the_step_when_the_node_says_so() -> None:
    rejection = Decision(_by("alice"), "reject", "no")

    succeeding = judge(_task(), [], rejection)
    failing = judge(_task(on_reject="fail"), [], rejection)

    assert succeeding.outcome is not None
    assert succeeding.outcome.decision == "rejected"
    assert not succeeding.outcome.fails_step
    assert succeeding.outcome.output()["rejected_by"] == "alice"
    assert failing.outcome is not None
    assert failing.outcome.fails_step


def test_refusals_name_their_reason() -> None:
    accepted = [_approve("alice")]
    cases = [
        (None, [], _approve("alice"), False, Refusal.NO_TASK),
        (_task(is_open=False), [], _approve("alice"), False, Refusal.LATE),
        (_task(), [], _approve("carol", "operator"), False, Refusal.NOT_AN_APPROVER),
        (_task(four_eyes=True), [], _approve("starter", "finance"), False, Refusal.FOUR_EYES),
        (_task(required=2), accepted, _approve("alice"), False, Refusal.ALREADY_DECIDED),
        (_task(), [], _approve("alice", token_id="t1"), True, Refusal.TOKEN_USED),
        (
            _task(),
            [],
            Decision(_by("alice", kind="signed_link"), "approve"),
            False,
            Refusal.TOKEN_MISSING,
        ),
    ]

    for task, prior, decision, token_used, reason in cases:
        verdict = judge(task, prior, decision, token_used=token_used)

        assert verdict.refusal == reason
        assert verdict.outcome is None


def test_without_four_eyes_the_initiator_may_approve() -> None:
    verdict = judge(_task(), [], _approve("starter", "finance"))

    assert verdict.accepted
