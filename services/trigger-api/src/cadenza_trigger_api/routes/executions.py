"""Executions: list and read (the audit-sink's projections), approve and cancel (via the outbox)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Query
from pydantic import Field
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from cadenza_common.db.tables import (
    approval_tasks,
    blobs,
    execution_requests,
    execution_runs,
    outbox,
    step_runs,
)
from cadenza_common.events import ApprovalDecisionSubmitted, CancelRequested, ExecutionStatus
from cadenza_trigger_api import audit
from cadenza_trigger_api.deps import Approver, Ctx, Cursor, Executor, Limit, Reader
from cadenza_trigger_api.errors import InvalidState, NotFound
from cadenza_trigger_api.outbox import outbox_row
from cadenza_trigger_api.pagination import (
    fetch_page,
)
from cadenza_trigger_api.routes.workflows import find as find_workflow
from cadenza_trigger_api.wire import CamelModel, Page

router = APIRouter(prefix="/api/executions", tags=["executions"])

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}

er, run = execution_requests, execution_runs
_exec_id: sa.ColumnElement[uuid.UUID] = sa.func.coalesce(run.c.id, er.c.id)
_at: sa.ColumnElement[datetime] = sa.func.coalesce(er.c.created_at, run.c.started_at)
_status: sa.ColumnElement[str] = sa.func.coalesce(run.c.status, ExecutionStatus.PENDING.value)
_workflow_id: sa.ColumnElement[uuid.UUID] = sa.func.coalesce(run.c.workflow_id, er.c.workflow_id)
_external_id: sa.ColumnElement[str] = sa.func.coalesce(run.c.external_id, er.c.external_id)
_joined = er.outerjoin(run, run.c.id == er.c.id, full=True)
_columns = [
    _exec_id.label("id"),
    _workflow_id.label("workflow_id"),
    sa.func.coalesce(run.c.workflow_version, er.c.workflow_version).label("workflow_version"),
    run.c.workflow_slug,
    _external_id.label("external_id"),
    _status.label("status"),
    sa.func.coalesce(run.c.input, er.c.input).label("input"),
    run.c.output, run.c.error, run.c.started_at, run.c.finished_at, run.c.duration_ms,
    run.c.parent_execution_id,
    _at.label("created_at"),
]


class StepOut(CamelModel):
    node_id: str
    node_type: str
    status: str
    attempts: int
    input: Any = None
    output: Any = None
    error: Any = None
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ExecutionOut(CamelModel):
    id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int
    workflow_slug: str | None = None
    external_id: str | None = None
    status: str
    input: Any = None
    output: Any = None
    error: Any = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    parent_execution_id: uuid.UUID | None = None
    steps: list[StepOut] | None = None


class ApproveRequest(CamelModel):
    step_id: str = Field(min_length=1, max_length=100)
    decision: Literal["approve", "reject"]
    comment: str = Field(default="", max_length=4000)


class CancelRequest(CamelModel):
    reason: str = Field(default="", max_length=1000)


class Accepted(CamelModel):
    execution_id: uuid.UUID
    status: Literal["accepted"] = "accepted"


def _in_org(org_id: uuid.UUID) -> sa.ColumnElement[bool]:
    return sa.or_(er.c.org_id == org_id, run.c.org_id == org_id)


def _out(row: Row[Any], steps: list[StepOut] | None = None) -> ExecutionOut:
    return ExecutionOut(
        id=row.id, workflow_id=row.workflow_id, workflow_version=row.workflow_version,
        workflow_slug=row.workflow_slug or None, external_id=row.external_id, status=row.status,
        input=row.input, output=row.output, error=row.error, created_at=row.created_at,
        started_at=row.started_at, finished_at=row.finished_at, duration_ms=row.duration_ms,
        parent_execution_id=row.parent_execution_id, steps=steps,
    )


@router.get("", response_model=Page[ExecutionOut], response_model_exclude_none=True)
async def list_executions(
    ctx: Ctx,
    who: Reader,
    limit: Limit = None,
    cursor: Cursor = None,
    workflow: Annotated[str | None, Query(max_length=200)] = None,
    status: ExecutionStatus | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    external_id: Annotated[str | None, Query(alias="externalId", max_length=200)] = None,
) -> Page[ExecutionOut]:
    size = ctx.page_size(limit)
    query = sa.select(*_columns).select_from(_joined).where(_in_org(who.org_id))
    async with ctx.engine.connect() as conn:
        if workflow is not None:
            wf = await find_workflow(conn, who.org_id, workflow)
            query = query.where(_workflow_id == wf.id)
        if status is not None:
            query = query.where(_status == status.value)
        if since is not None:
            query = query.where(since <= _at)
        if until is not None:
            query = query.where(until > _at)
        if external_id is not None:
            query = query.where(_external_id == external_id)
        rows, nxt = await fetch_page(conn, query, _at, _exec_id, cursor, size)
    return Page[ExecutionOut](items=[_out(r) for r in rows], next_cursor=nxt)


async def find_execution(conn: AsyncConnection, org_id: uuid.UUID, execution_id: uuid.UUID
                         ) -> Row[Any]:
    """The org's execution (requested or projected).

    Raises:
        NotFound: when the org has no such execution.
    """
    row = (
        await conn.execute(
            sa.select(*_columns).select_from(_joined)
            .where(_in_org(org_id), _exec_id == execution_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"execution {execution_id} not found")
    return row


@router.get("/{execution_id}", response_model=ExecutionOut)
async def get_execution(execution_id: uuid.UUID, ctx: Ctx, who: Reader) -> ExecutionOut:
    async with ctx.engine.connect() as conn:
        row = await find_execution(conn, who.org_id, execution_id)
        steps = await _steps(conn, who.org_id, execution_id)
    return _out(row, steps)


async def _steps(conn: AsyncConnection, org_id: uuid.UUID, execution_id: uuid.UUID
                 ) -> list[StepOut]:
    query = (
        sa.select(step_runs, blobs.c.data.label("blob"))
        .select_from(step_runs.outerjoin(
            blobs, sa.and_(blobs.c.id == step_runs.c.output_ref, blobs.c.org_id == org_id)))
        .where(step_runs.c.execution_id == execution_id, step_runs.c.org_id == org_id)
        .order_by(sa.func.coalesce(step_runs.c.scheduled_at, step_runs.c.started_at),
                  step_runs.c.node_id)
    )
    rows = (await conn.execute(query)).all()
    return [
        StepOut(
            node_id=r.node_id, node_type=r.node_type, status=r.status, attempts=r.attempts,
            input=r.input, output=_output(r), error=r.error, scheduled_at=r.scheduled_at,
            started_at=r.started_at, finished_at=r.finished_at,
        )
        for r in rows
    ]


def _output(row: Row[Any]) -> Any:
    if row.output is not None or row.blob is None:
        return row.output
    try:
        return orjson.loads(row.blob)
    except orjson.JSONDecodeError:
        return None


@router.post("/{execution_id}/approve", status_code=202, response_model=Accepted)
async def approve_step(
    execution_id: uuid.UUID, body: ApproveRequest, ctx: Ctx, who: Approver
) -> Accepted:
    async with ctx.engine.begin() as conn:
        await find_execution(conn, who.org_id, execution_id)
        task = (
            await conn.execute(
                sa.select(approval_tasks.c.status, approval_tasks.c.attempt)
                .where(approval_tasks.c.org_id == who.org_id,
                       approval_tasks.c.execution_id == execution_id,
                       approval_tasks.c.node_id == body.step_id)
                .order_by(approval_tasks.c.attempt.desc()).limit(1)
            )
        ).first()
        if task is not None and task.status != "open":
            raise InvalidState(f"the approval of step {body.step_id!r} is {task.status}")
        event = ApprovalDecisionSubmitted(
            execution_id=execution_id, org_id=who.org_id, node_id=body.step_id,
            attempt=task.attempt if task is not None else 1, decision=body.decision,
            comment=body.comment, decided_by=who.actor(),
        )
        row = outbox_row(ctx.topics.approvals_decisions, event)
        await conn.execute(outbox.insert().values(row))
        await audit.record(conn, ctx.topics, who, f"execution.{body.decision}",
                           ("execution", str(execution_id)), execution_id=execution_id,
                           after={"stepId": body.step_id, "decision": body.decision,
                                  "comment": body.comment})
    return Accepted(execution_id=execution_id)


@router.post("/{execution_id}/cancel", status_code=202, response_model=Accepted)
async def cancel_execution(
    execution_id: uuid.UUID, ctx: Ctx, who: Executor, body: CancelRequest | None = None
) -> Accepted:
    reason = body.reason if body is not None else ""
    async with ctx.engine.begin() as conn:
        row = await find_execution(conn, who.org_id, execution_id)
        if row.status in TERMINAL:
            raise InvalidState(f"the execution already ended ({row.status})")
        event = CancelRequested(execution_id=execution_id, org_id=who.org_id, reason=reason,
                                requested_by=who.actor())
        await conn.execute(
            outbox.insert().values(outbox_row(ctx.topics.executions_commands, event))
        )
        await audit.record(conn, ctx.topics, who, "execution.cancel_requested",
                           ("execution", str(execution_id)), execution_id=execution_id,
                           after={"reason": reason})
    return Accepted(execution_id=execution_id)
