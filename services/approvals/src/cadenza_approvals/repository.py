"""Postgres access for approval_tasks and approval_decisions (the service is their sole writer)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cadenza_approvals.domain.decide import Decision, Task, Verdict, judge
from cadenza_common import events as ev
from cadenza_common.db.tables import approval_decisions, approval_tasks
from cadenza_common.events import Actor

OPEN = "open"

OutcomeBuilder = Callable[["TaskRef", Verdict], "ev.StepSucceeded | ev.StepFailed | None"]


@dataclass(frozen=True)
class TaskRef:
    """Which step attempt a task belongs to (what its outcome event names)."""

    id: uuid.UUID
    org_id: uuid.UUID
    execution_id: uuid.UUID
    node_id: str
    attempt: int


@dataclass(frozen=True)
class Recorded:
    """What recording one submitted decision did."""

    duplicate: bool
    task_id: uuid.UUID | None
    verdict: Verdict | None = None
    requested_at: datetime | None = None
    outcome: ev.StepSucceeded | ev.StepFailed | None = None


@dataclass(frozen=True)
class PendingOutcome:
    """A decided task whose step outcome has not been acknowledged by Kafka yet."""

    task_id: uuid.UUID
    event: ev.StepSucceeded | ev.StepFailed


def _task(row: Any) -> Task:
    return Task(
        is_open=row.status == OPEN,
        approvers=tuple(row.approvers),
        required=row.required,
        four_eyes=row.four_eyes,
        initiated_by=str(row.initiated_by.get("id", "")),
        on_reject=row.on_reject,
        escalate_to=tuple(row.escalate_to),
    )


def _ref(row: Any) -> TaskRef:
    return TaskRef(row.id, row.org_id, row.execution_id, row.node_id, row.attempt)


def _decision(row: Any) -> Decision:
    return Decision(
        decider=Actor.model_validate(row.decided_by),
        decision=row.decision,
        comment=row.comment,
        token_id=row.token_id,
    )


def _outcome_json(event: ev.StepSucceeded | ev.StepFailed) -> dict[str, Any]:
    return {"ce_type": event.CE_TYPE, "event": event.model_dump(mode="json")}


def _outcome_event(data: dict[str, Any]) -> ev.StepSucceeded | ev.StepFailed:
    cls = ev.StepFailed if data["ce_type"] == ev.StepFailed.CE_TYPE else ev.StepSucceeded
    return cls.model_validate(data["event"])


class ApprovalRepository:
    """Tasks and decisions; each public method is one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def open_task(self, event: ev.ApprovalRequested, task_id: uuid.UUID) -> bool:
        """Create the task of an ApprovalRequested; False when it exists already (redelivery)."""
        stmt = (
            pg_insert(approval_tasks)
            .values(
                id=task_id,
                org_id=event.org_id,
                execution_id=event.execution_id,
                node_id=event.node_id,
                attempt=event.attempt,
                approvers=event.approvers,
                required=event.required,
                four_eyes=event.four_eyes,
                initiated_by=event.initiated_by.model_dump(mode="json"),
                instructions=event.instructions,
                context=event.context,
                on_reject=event.on_reject,
                expires_at=event.expires_at,
                escalate_to=[],
                created_at=event.occurred_at,
            )
            # idempotency guard: one task per (execution, node, attempt)
            .on_conflict_do_nothing(index_elements=["execution_id", "node_id", "attempt"])
            .returning(approval_tasks.c.id)
        )
        async with self._engine.begin() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def close_tasks(
        self,
        execution_id: uuid.UUID,
        *,
        node_id: str | None,
        attempt: int | None,
        status: str,
        reason: str,
        closed_at: datetime,
    ) -> int:
        """Close the open tasks of an execution (or of one node, or one attempt) without outcome."""
        where = [approval_tasks.c.execution_id == execution_id, approval_tasks.c.status == OPEN]
        if node_id is not None:
            where.append(approval_tasks.c.node_id == node_id)
        if attempt is not None:
            where.append(approval_tasks.c.attempt == attempt)
        stmt = (
            update(approval_tasks)
            .where(*where)
            .values(status=status, close_reason=reason, closed_at=closed_at)
            .returning(approval_tasks.c.id)
        )
        async with self._engine.begin() as conn:
            return len((await conn.execute(stmt)).all())

    async def record_escalation(self, event: ev.ApprovalEscalated) -> bool:
        """Note an escalation on the task; its `escalate_to` become approvers too."""
        stmt = (
            update(approval_tasks)
            .where(
                approval_tasks.c.execution_id == event.execution_id,
                approval_tasks.c.node_id == event.node_id,
                approval_tasks.c.attempt == event.attempt,
            )
            .values(escalated_at=event.occurred_at, escalate_to=event.escalate_to)
            .returning(approval_tasks.c.id)
        )
        async with self._engine.begin() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def record_decision(
        self,
        event: ev.ApprovalDecisionSubmitted,
        build_outcome: OutcomeBuilder,
    ) -> Recorded:
        """Judge and record one submitted decision; close the task if it decided it.

        The decision row, the task's closing and the outcome to send are one
        transaction, with the task row locked, so concurrent or repeated decisions
        on one task are judged one after the other.
        """
        async with self._engine.begin() as conn:
            row = await self._lock_task(conn, event)
            if await self._seen(conn, event.event_id):
                # idempotency guard: this Kafka record was recorded already (redelivery)
                return Recorded(duplicate=True, task_id=row.id if row is not None else None)
            task_id = row.id if row is not None else None
            accepted = await self._accepted(conn, task_id) if task_id else []
            token_used = await self._token_used(conn, event.token_id)
            submitted = Decision(event.decided_by, event.decision, event.comment, event.token_id)
            verdict = judge(_task(row) if row else None, accepted, submitted, token_used=token_used)
            if not await self._insert_decision(conn, event, task_id, verdict):
                return Recorded(duplicate=True, task_id=task_id)
            ref = _ref(row) if row is not None else None
            outcome = build_outcome(ref, verdict) if ref is not None else None
            if task_id and outcome is not None and verdict.outcome is not None:
                await self._close_decided(conn, task_id, verdict.outcome.decision, outcome)
            return Recorded(
                duplicate=False,
                task_id=task_id,
                verdict=verdict,
                requested_at=row.created_at if row is not None else None,
                outcome=outcome,
            )

    async def _seen(self, conn: AsyncConnection, event_id: uuid.UUID) -> bool:
        stmt = select(exists().where(approval_decisions.c.event_id == event_id))
        return bool((await conn.execute(stmt)).scalar())

    async def _lock_task(self, conn: AsyncConnection, event: ev.ApprovalDecisionSubmitted) -> Any:
        where = [
            approval_tasks.c.org_id == event.org_id,
            approval_tasks.c.execution_id == event.execution_id,
            approval_tasks.c.node_id == event.node_id,
        ]
        if event.task_id is not None:
            # the submitter named the task: its attempt wins over the event's default
            where.append(approval_tasks.c.id == event.task_id)
        else:
            where.append(approval_tasks.c.attempt == event.attempt)
        stmt = select(approval_tasks).where(*where).with_for_update()
        return (await conn.execute(stmt)).first()

    async def _accepted(self, conn: AsyncConnection, task_id: uuid.UUID) -> list[Decision]:
        stmt = (
            select(approval_decisions)
            .where(approval_decisions.c.task_id == task_id, approval_decisions.c.accepted)
            .order_by(approval_decisions.c.id)
        )
        return [_decision(r) for r in (await conn.execute(stmt)).all()]

    async def _token_used(self, conn: AsyncConnection, token_id: str | None) -> bool:
        if token_id is None:
            return False
        stmt = select(
            exists().where(
                and_(approval_decisions.c.token_id == token_id, approval_decisions.c.accepted)
            )
        )
        return bool((await conn.execute(stmt)).scalar())

    async def _insert_decision(
        self,
        conn: AsyncConnection,
        event: ev.ApprovalDecisionSubmitted,
        task_id: uuid.UUID | None,
        verdict: Verdict,
    ) -> bool:
        stmt = (
            pg_insert(approval_decisions)
            .values(
                id=ev.new_event_id(),
                event_id=event.event_id,
                task_id=task_id,
                org_id=event.org_id,
                execution_id=event.execution_id,
                node_id=event.node_id,
                attempt=event.attempt,
                decided_by=event.decided_by.model_dump(mode="json"),
                decision=event.decision,
                comment=event.comment,
                accepted=verdict.accepted,
                refusal_reason=verdict.refusal.value if verdict.refusal else None,
                token_id=event.token_id,
                decided_at=event.occurred_at,
            )
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(approval_decisions.c.id)
        )
        return (await conn.execute(stmt)).first() is not None

    async def _close_decided(
        self,
        conn: AsyncConnection,
        task_id: uuid.UUID,
        status: str,
        outcome: ev.StepSucceeded | ev.StepFailed,
    ) -> None:
        await conn.execute(
            update(approval_tasks)
            .where(approval_tasks.c.id == task_id)
            .values(
                status=status,
                close_reason="decided",
                closed_at=outcome.occurred_at,
                outcome=_outcome_json(outcome),
            )
        )

    async def pending_outcomes(self, task_id: uuid.UUID | None = None) -> list[PendingOutcome]:
        """Decided tasks whose outcome was not acknowledged by Kafka (all, or one task)."""
        stmt = select(approval_tasks.c.id, approval_tasks.c.outcome).where(
            approval_tasks.c.outcome.is_not(None), approval_tasks.c.outcome_emitted_at.is_(None)
        )
        if task_id is not None:
            stmt = stmt.where(approval_tasks.c.id == task_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt.order_by(approval_tasks.c.closed_at))).all()
        return [PendingOutcome(r.id, _outcome_event(r.outcome)) for r in rows]

    async def mark_emitted(self, task_id: uuid.UUID, at: datetime) -> None:
        """Remember that Kafka acknowledged the task's outcome."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(approval_tasks)
                .where(approval_tasks.c.id == task_id)
                .values(outcome_emitted_at=at)
            )

    async def count_open(self) -> int:
        """How many tasks wait for a decision."""
        stmt = (
            select(func.count()).select_from(approval_tasks).where(approval_tasks.c.status == OPEN)
        )
        async with self._engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())
