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
from fastapi import APIRouter, Response
from pydantic import Field

from cadenza_common.events import (
    AuditRecorded,
    ExecutionRequested,
    WorkflowSnapshot,
    new_event_id,
    utcnow,
)
from cadenza_trigger_api import subworkflows
from cadenza_trigger_api.audit import redact
from cadenza_trigger_api.auth import Principal
from cadenza_trigger_api.context import AppContext, Snapshot
from cadenza_trigger_api.deps import Ctx, Executor
from cadenza_trigger_api.errors import InvalidState, NotFound
from cadenza_trigger_api.intake import AdmittedWorkflow
from cadenza_trigger_api.outbox import outbox_row
from cadenza_trigger_api.routes.workflows import Status
from cadenza_trigger_api.spec import check_input, input_validator
from cadenza_trigger_api.wire import CamelModel

router = APIRouter(prefix="/api/workflows", tags=["executions"])

SNAPSHOT_CACHE_MAX = 1000
WORKFLOW_CACHE_MAX = 1000

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
    now = utcnow()
    known, counted = await _execute_known(ctx, who, ref, body, response, now)
    if known is not None:
        return known
    wf = await ctx.intake.admit(who.org_id, ref, now, counted=counted)
    if wf is None:
        raise NotFound(f"workflow {ref!r} not found")
    _check_executable(wf.status)
    version = body.version or wf.latest_version
    assert version is not None  # an active workflow has been published
    snapshot = await _snapshot(ctx, wf.id, version)
    check_input(snapshot.validator, body.input)
    children = await subworkflows.bundle(ctx.intake, who.org_id, snapshot.spec)
    execution_id = new_event_id()
    # idempotency guard: on a repeated externalId the unique constraint inserts nothing
    created = await ctx.intake.insert(*_rows(ctx, who, wf, version, snapshot, body,
                                             execution_id, now, children))
    _remember(ctx, who, ref, wf)
    return await _outcome(ctx, who, wf, version, body, response, execution_id, now, created)


async def _execute_known(
    ctx: AppContext, who: Principal, ref: str, body: ExecuteRequest, response: Response,
    now: datetime,
) -> tuple[ExecuteResponse | None, bool]:
    """One statement for a workflow this replica has executed before (see `intake`).

    Returns the answer and whether the request was counted against the rate limit. No
    answer when the workflow is not known here, needs sub-workflows bundled, or changed
    since (paused, archived, republished): then the caller takes the full way.
    """
    wf = ctx.workflows.get((who.org_id, ref))
    if wf is None:
        return None, False
    version = body.version or wf.latest_version
    assert version is not None
    snapshot = ctx.snapshots.get((wf.id, version))
    if snapshot is None or snapshot.has_sub_workflows:
        return None, False
    check_input(snapshot.validator, body.input)
    execution_id = new_event_id()
    admitted = await ctx.intake.admit_and_insert(
        *_rows(ctx, who, wf, version, snapshot, body, execution_id, now, {}), now,
        pinned=body.version is not None,
    )
    if admitted is None or not admitted.current:
        ctx.workflows.pop((who.org_id, ref), None)
        return None, admitted is not None
    return await _outcome(ctx, who, wf, version, body, response, execution_id, now,
                          admitted.created), True


def _remember(ctx: AppContext, who: Principal, ref: str, wf: AdmittedWorkflow) -> None:
    if len(ctx.workflows) >= WORKFLOW_CACHE_MAX:
        ctx.workflows.clear()
    ctx.workflows[(who.org_id, ref)] = wf


async def _outcome(
    ctx: AppContext, who: Principal, wf: AdmittedWorkflow, version: int, body: ExecuteRequest,
    response: Response, execution_id: uuid.UUID, now: datetime, created: bool,
) -> ExecuteResponse:
    """202 with the new execution, or 200 with the first one of a repeated externalId."""
    if created:
        ctx.metrics.executions_requested.labels(wf.slug).inc()
        return _answer(execution_id, wf.id, version, body.external_id, True, now)
    assert body.external_id is not None
    first = await ctx.intake.existing(who.org_id, wf.id, body.external_id)
    assert first is not None
    response.status_code = 200
    return _answer(first["id"], wf.id, first["workflow_version"], body.external_id, False,
                   first["created_at"])


def _answer(execution_id: uuid.UUID, workflow_id: uuid.UUID, version: int,
            external_id: str | None, created: bool, at: datetime) -> ExecuteResponse:
    return ExecuteResponse(
        execution_id=execution_id, workflow_id=workflow_id, workflow_version=version,
        external_id=external_id, status="pending", created=created, created_at=at,
    )


_NOT_EXECUTABLE = {
    Status.DRAFT: "a draft workflow cannot be executed; publish it first",
    Status.PAUSED: "the workflow is paused; resume it to start executions",
    Status.ARCHIVED: "an archived workflow cannot be executed",
}


def _check_executable(status: str) -> None:
    reason = _NOT_EXECUTABLE.get(Status(status))
    if reason is not None:
        raise InvalidState(reason)


async def _snapshot(ctx: AppContext, workflow_id: uuid.UUID, version: int) -> Snapshot:
    # versions are immutable, so a cached snapshot never goes stale
    key = (workflow_id, version)
    cached = ctx.snapshots.get(key)
    if cached is not None:
        return cached
    spec = await ctx.intake.version_spec(workflow_id, version)
    if spec is None:
        raise NotFound(f"the workflow has no version {version}")
    if len(ctx.snapshots) >= SNAPSHOT_CACHE_MAX:
        ctx.snapshots.clear()
    has_sub_workflows = next(subworkflows.references(spec), None) is not None
    snapshot = ctx.snapshots[key] = Snapshot(spec, input_validator(spec), has_sub_workflows)
    return snapshot


def _rows(
    ctx: AppContext, who: Principal, wf: AdmittedWorkflow, version: int, snapshot: Snapshot,
    body: ExecuteRequest, execution_id: uuid.UUID, now: datetime,
    children: dict[str, WorkflowSnapshot],
) -> tuple[list[Any], list[dict[str, Any]]]:
    requested = ExecutionRequested(
        execution_id=execution_id, org_id=who.org_id, workflow_id=wf.id,
        workflow_version=version, workflow=snapshot.spec, input=body.input,
        external_id=body.external_id, initiated_by=who.actor(),
        jitter_seed=secrets.randbits(31), occurred_at=now, sub_workflows=children,
    )
    audited = AuditRecorded(
        org_id=who.org_id, actor=who.actor(), action="execution.requested",
        resource_type="execution", resource_id=str(execution_id), execution_id=execution_id,
        after=redact({"workflowId": str(wf.id), "workflowVersion": version,
                      "externalId": body.external_id}),
        occurred_at=now,
    )
    request = [execution_id, who.org_id, wf.id, version, body.external_id,
               orjson.dumps(body.input).decode(), who.key_id, now]
    rows = [outbox_row(ctx.topics.executions_commands, requested),
            outbox_row(ctx.topics.audit_records, audited)]
    return request, rows
