"""Executions read from the audit-sink's projections; approve and cancel go through the outbox."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from cadenza_common.db.tables import execution_runs, outbox, step_runs
from cadenza_common.events import ApprovalDecisionSubmitted, CancelRequested
from cadenza_common.kafka import decode
from cadenza_trigger_api.auth import Role
from cadenza_trigger_api.context import AppContext

from .conftest import Org, Publish

pytestmark = pytest.mark.integration


async def _project_run(ctx: AppContext, org: Org, workflow_id: str, status: str = "running"
                       ) -> uuid.UUID:
    """Stand in for the audit-sink: one execution run with two steps."""
    execution_id = uuid.uuid4()
    now = datetime.now(UTC)
    async with ctx.engine.begin() as conn:
        await conn.execute(execution_runs.insert().values(
            id=execution_id, org_id=org.id, workflow_id=uuid.UUID(workflow_id),
            workflow_version=1, workflow_slug="read", status=status, input={"customer": "a"},
            started_at=now))
        await conn.execute(step_runs.insert(), [
            {"execution_id": execution_id, "node_id": "fetch", "org_id": org.id,
             "node_type": "service_call", "status": "succeeded", "attempts": 2,
             "output": {"ok": True}, "scheduled_at": now},
            {"execution_id": execution_id, "node_id": "approve", "org_id": org.id,
             "node_type": "human_approval", "status": "running", "attempts": 1,
             "output": None, "scheduled_at": now + timedelta(seconds=1)},
        ])
    return execution_id


async def _outbox_events(ctx: AppContext, key: str) -> list[Any]:
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(
            sa.select(outbox.c.value, outbox.c.headers).where(outbox.c.key == key)
            .order_by(outbox.c.id))).all()
    return [decode(r.value, [(k, v.encode()) for k, v in r.headers]) for r in rows]


async def test_reads_an_execution_with_its_steps(
    client: httpx.AsyncClient, org: Org, publish: Publish, ctx: AppContext
) -> None:
    wf = await publish(org, "read")
    execution_id = await _project_run(ctx, org, wf["id"])

    response = await client.get(f"/api/executions/{execution_id}", headers=org.headers(Role.VIEWER))

    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "running"
    assert body["input"] == {"customer": "a"}
    assert [s["nodeId"] for s in body["steps"]] == ["fetch", "approve"]
    assert body["steps"][0]["attempts"] == 2
    assert body["steps"][0]["output"] == {"ok": True}


async def test_a_just_requested_execution_reads_as_pending(
    client: httpx.AsyncClient, org: Org, publish: Publish
) -> None:
    await publish(org, "pend")
    started = await client.post("/api/workflows/pend/execute", headers=org.headers(),
                                json={"input": {"customer": "z"}, "externalId": "e-1"})

    one = await client.get(f"/api/executions/{started.json()['executionId']}",
                           headers=org.headers())
    listed = await client.get("/api/executions?externalId=e-1&workflow=pend",
                              headers=org.headers())

    assert one.json()["status"] == "pending"
    assert one.json()["steps"] == []
    assert [e["id"] for e in listed.json()["items"]] == [started.json()["executionId"]]


async def test_lists_executions_with_filters_and_cursor(
    client: httpx.AsyncClient, org: Org, publish: Publish, ctx: AppContext
) -> None:
    wf = await publish(org, "many")
    ids = [await _project_run(ctx, org, wf["id"], status=s)
           for s in ("running", "succeeded", "succeeded")]

    succeeded = await client.get("/api/executions?status=succeeded", headers=org.headers())
    page1 = await client.get("/api/executions?limit=2", headers=org.headers())
    page2 = await client.get(f"/api/executions?limit=2&cursor={page1.json()['nextCursor']}",
                             headers=org.headers())

    assert {e["id"] for e in succeeded.json()["items"]} == {str(i) for i in ids[1:]}
    seen = [e["id"] for e in page1.json()["items"] + page2.json()["items"]]
    assert sorted(seen) == sorted(str(i) for i in ids)


async def test_other_orgs_executions_answer_404(
    client: httpx.AsyncClient, org: Org, other_org: Org, publish: Publish, ctx: AppContext
) -> None:
    wf = await publish(org, "iso")
    execution_id = await _project_run(ctx, org, wf["id"])

    read = await client.get(f"/api/executions/{execution_id}", headers=other_org.headers())
    cancel = await client.post(f"/api/executions/{execution_id}/cancel",
                               headers=other_org.headers())
    approve = await client.post(f"/api/executions/{execution_id}/approve",
                                headers=other_org.headers(),
                                json={"stepId": "approve", "decision": "approve"})
    listed = await client.get("/api/executions", headers=other_org.headers())

    assert (read.status_code, cancel.status_code, approve.status_code) == (404, 404, 404)
    assert listed.json()["items"] == []


async def test_approve_publishes_a_decision_by_the_key(
    client: httpx.AsyncClient, org: Org, publish: Publish, ctx: AppContext
) -> None:
    wf = await publish(org, "appr")
    execution_id = await _project_run(ctx, org, wf["id"])

    response = await client.post(
        f"/api/executions/{execution_id}/approve", headers=org.headers(Role.APPROVER),
        json={"stepId": "approve", "decision": "reject", "comment": "no"})
    events = await _outbox_events(ctx, str(execution_id))

    assert response.status_code == 202
    (decision,) = [e for e in events if isinstance(e, ApprovalDecisionSubmitted)]
    assert decision.node_id == "approve"
    assert decision.decision == "reject"
    assert decision.comment == "no"
    assert decision.decided_by.kind == "api_key"
    assert decision.decided_by.id == org.key_id(Role.APPROVER)
    assert decision.decided_by.roles == ["approver"]


async def test_approve_needs_the_approver_or_admin_role(
    client: httpx.AsyncClient, org: Org, publish: Publish, ctx: AppContext
) -> None:
    wf = await publish(org, "apr2")
    execution_id = await _project_run(ctx, org, wf["id"])

    response = await client.post(
        f"/api/executions/{execution_id}/approve", headers=org.headers(Role.OPERATOR),
        json={"stepId": "approve", "decision": "approve"})

    assert response.status_code == 403


async def test_cancel_publishes_cancel_requested_and_refuses_ended_executions(
    client: httpx.AsyncClient, org: Org, publish: Publish, ctx: AppContext
) -> None:
    wf = await publish(org, "canc")
    running = await _project_run(ctx, org, wf["id"])
    ended = await _project_run(ctx, org, wf["id"], status="succeeded")

    ok = await client.post(f"/api/executions/{running}/cancel", headers=org.headers(Role.OPERATOR),
                           json={"reason": "oops"})
    refused = await client.post(f"/api/executions/{ended}/cancel", headers=org.headers())
    events = await _outbox_events(ctx, str(running))

    assert ok.status_code == 202
    assert refused.status_code == 409
    (cancel,) = [e for e in events if isinstance(e, CancelRequested)]
    assert cancel.reason == "oops"
    assert cancel.requested_by.id == org.key_id(Role.OPERATOR)


async def test_execution_ids_that_are_not_uuids_are_422(client: httpx.AsyncClient, org: Org
                                                        ) -> None:
    response = await client.get("/api/executions/not-a-uuid", headers=org.headers())

    assert response.status_code == 422
    assert orjson.loads(response.content)["type"].endswith("validation-error")
