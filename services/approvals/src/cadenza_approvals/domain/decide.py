"""Whether one submitted decision is accepted, and whether it decides the task (pure).

No I/O and no clock: the repository loads the task and the decisions already
accepted, `judge` says what to record and what the step's outcome is, if any.
Expiry is never judged here by time: a task is closed by the scheduler's
ApprovalExpired, and a decision on a closed task is refused as `late`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from cadenza_common.events import Actor

PERSON_KINDS = frozenset({"api_key", "signed_link"})


class Refusal(StrEnum):
    """Why a submitted decision was refused (stored in approval_decisions.refusal_reason)."""

    NO_TASK = "no_task"
    LATE = "late"
    TOKEN_USED = "token_used"
    TOKEN_MISSING = "token_missing"
    NOT_AN_APPROVER = "not_an_approver"
    FOUR_EYES = "four_eyes"
    ALREADY_DECIDED = "already_decided"


@dataclass(frozen=True)
class Task:
    """What the rules need to know about an approval task."""

    is_open: bool
    approvers: tuple[str, ...]
    required: int
    four_eyes: bool
    initiated_by: str
    on_reject: Literal["succeed", "fail"] = "succeed"
    escalate_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """One decision: who (identity and roles), approve or reject, a comment, a link token."""

    decider: Actor
    decision: Literal["approve", "reject"]
    comment: str = ""
    token_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    """How the approval node ended: the step's output, and whether it fails the step."""

    decision: Literal["approved", "rejected"]
    approvers: list[str]
    comments: list[str]
    rejected_by: str | None = None
    fails_step: bool = False

    def output(self) -> dict[str, object]:
        """The StepSucceeded output (or the StepFailed details) the workflow branches on."""
        out: dict[str, object] = {
            "decision": self.decision,
            "approvers": self.approvers,
            "comments": self.comments,
        }
        if self.rejected_by is not None:
            out["rejected_by"] = self.rejected_by
        return out


@dataclass(frozen=True)
class Verdict:
    """The judgement on one decision: refused with a reason, or accepted (maybe deciding)."""

    refusal: Refusal | None = None
    outcome: Outcome | None = None
    accepted_so_far: list[Decision] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.refusal is None


def may_decide(task: Task, decider: Actor) -> bool:
    """Whether `decider` is a named approver (`key:<id>`) or holds a listed role (`role:<name>`).

    Escalation widens the set: after ApprovalEscalated, `escalate_to` counts as approvers.
    A signed link's identity is the key id it was issued to, so it matches `key:<id>` too.
    """
    if decider.kind not in PERSON_KINDS:
        return False
    allowed = set(task.approvers) | set(task.escalate_to)
    if f"key:{decider.id}" in allowed:
        return True
    return any(f"role:{role}" in allowed for role in decider.roles)


def _refusal(
    task: Task | None, accepted: list[Decision], decision: Decision, token_used: bool
) -> Refusal | None:
    if task is None:
        return Refusal.NO_TASK
    if not task.is_open:
        return Refusal.LATE
    if decision.token_id is not None and token_used:
        return Refusal.TOKEN_USED
    if decision.decider.kind == "signed_link" and decision.token_id is None:
        return Refusal.TOKEN_MISSING
    if not may_decide(task, decision.decider):
        return Refusal.NOT_AN_APPROVER
    if task.four_eyes and decision.decider.id == task.initiated_by:
        return Refusal.FOUR_EYES
    if any(prior.decider.id == decision.decider.id for prior in accepted):
        return Refusal.ALREADY_DECIDED
    return None


def judge(
    task: Task | None,
    accepted: list[Decision],
    decision: Decision,
    *,
    token_used: bool = False,
) -> Verdict:
    """Judge one submitted decision against the task and the decisions accepted before it.

    Args:
        task: the task the decision names, or None when there is none.
        accepted: the task's decisions accepted so far, oldest first.
        decision: the decision to judge.
        token_used: whether the decision's link token was already accepted once.

    Returns:
        A refusal, or an acceptance with the outcome when this decision ends the task:
        one rejection rejects; `required` distinct approvals approve.
    """
    refusal = _refusal(task, accepted, decision, token_used)
    if refusal is not None or task is None:
        return Verdict(refusal=refusal)
    so_far = [*accepted, decision]
    return Verdict(outcome=_outcome(task, so_far), accepted_so_far=so_far)


def _outcome(task: Task, so_far: list[Decision]) -> Outcome | None:
    approvers = [d.decider.id for d in so_far if d.decision == "approve"]
    comments = [d.comment for d in so_far if d.comment]
    last = so_far[-1]
    if last.decision == "reject":
        return Outcome(
            decision="rejected",
            approvers=approvers,
            comments=comments,
            rejected_by=last.decider.id,
            fails_step=task.on_reject == "fail",
        )
    if len(approvers) >= task.required:
        return Outcome(decision="approved", approvers=approvers, comments=comments)
    return None
