"""`POST /api/workflows/{ref}/execute`: the request row and its ExecutionRequested, atomically.

The hot path: the request row, the ExecutionRequested and the audit record go in
with ONE statement (a data-modifying CTE), so they commit together or not at all.
A repeated `externalId` hits the unique constraint, inserts nothing and answers the
first execution's id with 200; concurrent duplicates wait on the constraint's index
entry and see the winner's row.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Response
from pydantic import Field
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from cadenza_common.db.tables import execution_requests, workflow_versions
from cadenza_common.events import AuditRecorded, ExecutionRequested, new_event_id, utcnow
from cadenza_trigger_api.audit import redact
from cadenza_trigger_api.auth import Principal
from cadenza_trigger_api.context import AppContext, Snapshot
from cadenza_trigger_api.deps import Ctx, Executor
from cadenza_trigger_api.errors import InvalidState, NotFound
from cadenza_trigger_api.outbox import outbox_row
from cadenza_trigger_api.routes.workflows import Status, find
from cadenza_trigger_api.spec import check_input, input_validator
from cadenza_trigger_api.wire import CamelModel

router = APIRouter(prefix="/api/workflows", tags=["executions"])

SNAPSHOT_CACHE_MAX = 1000

INSERT_WITH_OUTBOX = sa.text(
    """
    WITH req AS (
        INSERT INTO execution_requests
            (id, org_id, workflow_id, workflow_version, external_id, input, requested_by)
        VALUES (:id, :org_id, :workflow_id, :version, :external_id, CAST(:input AS jsonb), :by)
        ON CONFLICT (org_id, workflow_id, external_id) DO NOTHING
        RETURNING id
    )
    INSERT INTO outbox (topic, key, value, headers)
    SELECT v.topic, v.key, v.value, CAST(v.headers AS jsonb)
    FROM req, (VALUES
            (1, CAST(:t1 AS text), CAST(:k1 AS text), CAST(:v1 AS bytea), CAST(:h1 AS text)),
            (2, :t2, :k2, CAST(:v2 AS bytea), :h2))
        AS v(n, topic, key, value, headers)
    ORDER BY v.n
    RETURNING id
    """
)


class ExecuteRequest(CamelModel):
    input: dict[str, Any] = Field(default_factory=dict)
    external_id: str | None = Field(default=None, min_length=1, max_length=200)
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)


class ExecuteResponse(CamelModel):
    execution_id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int
    external_id: str | None
    status: str
    created: bool
    created_at: datetime


@router.post("/{ref}/execute", status_code=202, response_model=ExecuteResponse,
             responses={200: {"model": ExecuteResponse, "description": "a repeat of externalId"}})
async def execute_workflow(
    ref: str, body: ExecuteRequest, response: Response, ctx: Ctx, who: Executor
) -> ExecuteResponse:
    await ctx.limiter.hit(who.org_id, utcnow())
    async with ctx.engine.connect() as conn:
        wf = await find(conn, who.org_id, ref)
        _check_executable(wf)
        version = body.version or wf.latest_version
        snapshot = await _snapshot(ctx, conn, wf.id, version)
        check_input(snapshot.validator, body.input)
        existing = await _existing(conn, who, wf.id, body.external_id)
        if existing is None:
            execution_id, created_at = await _insert(conn, ctx, who, wf, version, snapshot, body)
            await conn.commit()
            if execution_id is not None:
                ctx.metrics.executions_requested.labels(wf.slug).inc()
                return _answer(execution_id, wf.id, version, body.external_id, True, created_at)
            existing = await _existing(conn, who, wf.id, body.external_id)
    assert existing is not None
    response.status_code = 200
    return _answer(existing.id, wf.id, existing.workflow_version, body.external_id, False,
                   existing.created_at)


def _answer(execution_id: uuid.UUID, workflow_id: uuid.UUID, version: int,
            external_id: str | None, created: bool, at: datetime) -> ExecuteResponse:
    return ExecuteResponse(
        execution_id=execution_id, workflow_id=workflow_id, workflow_version=version,
        external_id=external_id, status="pending", created=created, created_at=at,
    )


def _check_executable(wf: Row[Any]) -> None:
    status = Status(wf.status)
    if status is not Status.ACTIVE:
        reason = {
            Status.DRAFT: "a draft workflow cannot be executed; publish it first",
            Status.PAUSED: "the workflow is paused; resume it to start executions",
            Status.ARCHIVED: "an archived workflow cannot be executed",
        }[status]
        raise InvalidState(reason)


async def _snapshot(
    ctx: AppContext, conn: AsyncConnection, workflow_id: uuid.UUID, version: int
) -> Snapshot:
    # versions are immutable, so a cached snapshot never goes stale
    key = (workflow_id, version)
    cached = ctx.snapshots.get(key)
    if cached is not None:
        return cached
    spec = (
        await conn.execute(
            sa.select(workflow_versions.c.spec).where(
                workflow_versions.c.workflow_id == workflow_id,
                workflow_versions.c.version == version,
            )
        )
    ).scalar_one_or_none()
    if spec is None:
        raise NotFound(f"the workflow has no version {version}")
    if len(ctx.snapshots) >= SNAPSHOT_CACHE_MAX:
        ctx.snapshots.clear()
    snapshot = ctx.snapshots[key] = Snapshot(spec, input_validator(spec))
    return snapshot


async def _existing(
    conn: AsyncConnection, who: Principal, workflow_id: uuid.UUID, external_id: str | None
) -> Any:
    # idempotency guard: a repeated externalId answers the first execution
    if external_id is None:
        return None
    return (
        await conn.execute(
            sa.select(execution_requests.c.id, execution_requests.c.workflow_version,
                      execution_requests.c.created_at).where(
                execution_requests.c.org_id == who.org_id,
                execution_requests.c.workflow_id == workflow_id,
                execution_requests.c.external_id == external_id,
            )
        )
    ).first()


async def _insert(
    conn: AsyncConnection, ctx: AppContext, who: Principal, wf: Row[Any], version: int,
    snapshot: Snapshot, body: ExecuteRequest,
) -> tuple[uuid.UUID | None, datetime]:
    execution_id = new_event_id()
    now = utcnow()
    requested = ExecutionRequested(
        execution_id=execution_id, org_id=who.org_id, workflow_id=wf.id,
        workflow_version=version, workflow=snapshot.spec, input=body.input,
        external_id=body.external_id, initiated_by=who.actor(),
        jitter_seed=secrets.randbits(31), occurred_at=now,
    )
    audited = AuditRecorded(
        org_id=who.org_id, actor=who.actor(), action="execution.requested",
        resource_type="execution", resource_id=str(execution_id), execution_id=execution_id,
        after=redact({"workflowId": str(wf.id), "workflowVersion": version,
                      "externalId": body.external_id}),
        occurred_at=now,
    )
    rows = [outbox_row(ctx.topics.executions_commands, requested),
            outbox_row(ctx.topics.audit_records, audited)]
    params: dict[str, Any] = {
        "id": execution_id, "org_id": who.org_id, "workflow_id": wf.id, "version": version,
        "external_id": body.external_id, "input": orjson.dumps(body.input).decode(),
        "by": who.key_id,
    }
    for n, row in enumerate(rows, start=1):
        params |= {f"t{n}": row["topic"], f"k{n}": row["key"], f"v{n}": row["value"],
                   f"h{n}": orjson.dumps(row["headers"]).decode()}
    inserted = (await conn.execute(INSERT_WITH_OUTBOX, params)).all()
    return (execution_id if inserted else None), now
