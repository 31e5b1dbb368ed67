"""What the service does with each event: open, escalate, close and decide approval tasks."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy.exc import IntegrityError

from cadenza_approvals import metrics
from cadenza_approvals.domain.decide import Verdict
from cadenza_approvals.repository import ApprovalRepository, Recorded, TaskRef
from cadenza_common import events as ev
from cadenza_common.kafka import ConsumerRecord, UnhandleableRecord, send_event, traceparent_of

log = logging.getLogger(__name__)

NODE_ENDED = (ev.StepSucceeded, ev.StepFailed, ev.StepSkipped)


def build_outcome(task: TaskRef, verdict: Verdict) -> ev.StepSucceeded | ev.StepFailed | None:
    """The step outcome (for executions.commands) of a verdict that ended its task (None while
    still open)."""
    outcome = verdict.outcome
    if outcome is None:
        return None
    step = {
        "execution_id": task.execution_id,
        "org_id": task.org_id,
        "node_id": task.node_id,
        "attempt": task.attempt,
    }
    if not outcome.fails_step:
        return ev.StepSucceeded(**step, output=outcome.output())
    error = ev.StepError(
        error_class=ev.ErrorClass.APPROVAL_REJECTED,
        message=f"approval rejected by {outcome.rejected_by}",
        retryable=False,
        details=outcome.output(),
    )
    return ev.StepFailed(**step, error=error)


class OutcomeSender:
    """Sends decided tasks' outcomes to executions.commands and marks them sent.

    The outcome is stored on the task in the deciding transaction; it is sent
    after commit and `outcome_emitted_at` is set once Kafka acknowledged it. A
    crash in between leaves it pending: `send_pending` at startup (and every
    `resend_interval_s`) sends it again, with the same event id.
    """

    def __init__(
        self, repo: ApprovalRepository, producer: AIOKafkaProducer, topic: str, source: str
    ) -> None:
        self._repo = repo
        self._producer = producer
        self._topic = topic
        self._source = source
        self._lock = asyncio.Lock()

    async def send_pending(
        self, task_id: uuid.UUID | None = None, traceparent: str | None = None
    ) -> int:
        """Send every pending outcome (or the one of `task_id`); return how many were sent."""
        async with self._lock:
            pending = await self._repo.pending_outcomes(task_id)
            for item in pending:
                await send_event(
                    self._producer,
                    self._topic,
                    item.event,
                    source=self._source,
                    traceparent=traceparent,
                )
                await self._repo.mark_emitted(item.task_id, ev.utcnow())
                metrics.OUTCOMES_EMITTED.inc()
                log.info(
                    "approval outcome sent",
                    extra={
                        "execution_id": str(item.event.execution_id),
                        "node_id": item.event.node_id,
                    },
                )
            return len(pending)


class ApprovalHandler:
    """Decode → one repository call → send; every branch is safe to run twice."""

    def __init__(self, repo: ApprovalRepository, sender: OutcomeSender) -> None:
        self._repo = repo
        self._sender = sender

    async def handle(self, event: ev.Event, record: ConsumerRecord[Any, Any]) -> None:
        """Handle one record of executions.events or approvals.decisions."""
        try:
            await self._dispatch(event, record)
        except IntegrityError as exc:
            # e.g. an org that does not exist: retrying cannot help
            raise UnhandleableRecord(f"refused by the database: {exc.orig}") from None

    async def _dispatch(self, event: ev.Event, record: ConsumerRecord[Any, Any]) -> None:
        if isinstance(event, ev.ApprovalDecisionSubmitted):
            await self._decide(event, traceparent_of(record))
        elif isinstance(event, ev.ApprovalRequested):
            await self._open(event)
        elif isinstance(event, ev.ApprovalEscalated):
            await self._repo.record_escalation(event)
        elif isinstance(event, ev.ApprovalExpired):
            await self._close(event, event.node_id, event.attempt, "expired", "approval expired")
        elif isinstance(event, NODE_ENDED):
            reason = f"node ended: {type(event).__name__}"
            await self._close(event, event.node_id, None, "closed", reason)
        elif isinstance(event, ev.TERMINAL_EXECUTION_EVENTS):
            reason = f"execution ended: {type(event).__name__}"
            await self._close(event, None, None, "closed", reason)

    async def _open(self, event: ev.ApprovalRequested) -> None:
        if await self._repo.open_task(event, ev.new_event_id()):
            log.info("approval task opened", extra=_fields(event))
            await self.refresh_open_gauge()

    async def _close(
        self,
        event: ev.ExecutionEvent,
        node_id: str | None,
        attempt: int | None,
        status: str,
        reason: str,
    ) -> None:
        closed = await self._repo.close_tasks(
            event.execution_id,
            node_id=node_id,
            attempt=attempt,
            status=status,
            reason=reason,
            closed_at=event.occurred_at,
        )
        if closed:
            metrics.TASKS_CLOSED.labels(status).inc(closed)
            await self.refresh_open_gauge()

    async def _decide(self, event: ev.ApprovalDecisionSubmitted, traceparent: str | None) -> None:
        recorded = await self._repo.record_decision(event, build_outcome)
        if not recorded.duplicate:
            _observe(event, recorded)
            if recorded.outcome is not None:
                await self.refresh_open_gauge()
        if recorded.task_id is not None:
            # a redelivered decision may be the one whose outcome never reached Kafka
            await self._sender.send_pending(recorded.task_id, traceparent)

    async def refresh_open_gauge(self) -> None:
        """Set the open-tasks gauge from the table."""
        metrics.TASKS_OPEN.set(await self._repo.count_open())


def _fields(event: ev.StepEvent) -> dict[str, Any]:
    return {
        "execution_id": str(event.execution_id),
        "node_id": event.node_id,
        "attempt": event.attempt,
    }


def _observe(event: ev.ApprovalDecisionSubmitted, recorded: Recorded) -> None:
    verdict = recorded.verdict
    if verdict is None:
        return
    outcome = verdict.refusal.value if verdict.refusal else "accepted"
    metrics.DECISIONS.labels(outcome).inc()
    log.info("approval decision recorded", extra={**_fields(event), "outcome": outcome})
    if verdict.outcome is not None and recorded.requested_at is not None:
        waited = (event.occurred_at - recorded.requested_at).total_seconds()
        metrics.TIME_TO_DECISION.observe(max(waited, 0.0))
        metrics.TASKS_CLOSED.labels(verdict.outcome.decision).inc()
