"""Audit records for every control-plane change (secrets redacted), and reading the audit log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import pytest
import sqlalchemy as sa

from cadenza_common.db.tables import audit_log, outbox
from cadenza_common.events import AuditRecorded
from cadenza_common.kafka import decode
from cadenza_trigger_api.auth import Role, parse_key
from cadenza_trigger_api.context import AppContext

from .conftest import Org, Publish

pytestmark = pytest.mark.integration


async def _audit_rows(ctx: AppContext, org: Org) -> list[tuple[bytes, AuditRecorded]]:
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(
            sa.select(outbox.c.value, outbox.c.headers)
            .where(outbox.c.key == str(org.id), outbox.c.topic == ctx.topics.audit_records)
            .order_by(outbox.c.id))).all()
    found = []
    for r in rows:
        event = decode(r.value, [(k, v.encode()) for k, v in r.headers])
        assert isinstance(event, AuditRecorded)
        found.append((r.value, event))
    return found


async def test_every_change_is_audited_and_no_secret_reaches_an_audit_record(
    client: httpx.AsyncClient, org: Org, publish: Publish, ctx: AppContext, upstream: str
) -> None:
    h = org.headers()
    wf = await publish(org, "aud")
    await client.patch("/api/workflows/aud", headers=h, json={"description": "d"})
    await client.post("/api/workflows/aud/pause", headers=h)
    await client.post("/api/workflows/aud/resume", headers=h)
    started = await client.post("/api/workflows/aud/execute", headers=h,
                                json={"input": {"customer": "c"}})
    execution_id = started.json()["executionId"]
    await client.post(f"/api/executions/{execution_id}/cancel", headers=h)
    await client.post(f"/api/executions/{execution_id}/approve", headers=h,
                      json={"stepId": "s", "decision": "approve"})
    conn_secret = "sk_live_do_not_leak_42"
    created = await client.post("/api/service-connections", headers=h, json={
        "name": "svc", "baseUrl": upstream, "authType": "bearer", "apiKey": conn_secret})
    await client.patch(f"/api/service-connections/{created.json()['id']}", headers=h,
                       json={"apiKey": conn_secret + "2"})
    await client.delete(f"/api/service-connections/{created.json()['id']}", headers=h)
    hook = await client.post("/api/webhooks", headers=h, json={
        "url": "https://hooks.example.com/x", "eventTypes": ["execution.failed"]})
    await client.delete(f"/api/webhooks/{hook.json()['id']}", headers=h)
    key = await client.post("/api/api-keys", headers=h, json={"name": "k", "role": "viewer"})
    await client.delete(f"/api/api-keys/{key.json()['id']}", headers=h)
    await client.post("/api/workflows/aud/archive", headers=h)

    records = await _audit_rows(ctx, org)

    actions = [event.action for _, event in records]
    assert actions == [
        "workflow.created", "workflow.published", "workflow.updated", "workflow.paused",
        "workflow.resumed", "execution.requested", "execution.cancel_requested",
        "execution.approve", "connection.created", "connection.updated", "connection.deleted",
        "webhook.created", "webhook.deleted", "api_key.created", "api_key.revoked",
        "workflow.archived",
    ]
    # the key's secret part as the API parses it (a urlsafe secret may itself hold "_")
    secrets = [conn_secret, hook.json()["secret"], key.json()["key"],
               parse_key(key.json()["key"])[1]]
    for raw, _ in records:
        for secret in secrets:
            assert secret.encode() not in raw
    by_action = {event.action: event for _, event in records}
    assert by_action["workflow.paused"].before["status"] == "active"  # type: ignore[index]
    assert by_action["workflow.paused"].after["status"] == "paused"  # type: ignore[index]
    assert by_action["workflow.created"].resource_id == wf["id"]
    assert by_action["execution.requested"].execution_id == uuid.UUID(execution_id)
    assert by_action["connection.created"].actor.id == org.key_id()


async def test_audit_log_reads_the_sinks_rows_with_filters(
    client: httpx.AsyncClient, org: Org, other_org: Org, ctx: AppContext
) -> None:
    now = datetime.now(UTC)
    async with ctx.engine.begin() as conn:  # stand in for the audit-sink
        await conn.execute(audit_log.insert(), [
            {"org_id": org.id, "org_seq": i, "event_id": uuid.uuid4(),
             "actor": {"kind": "api_key", "id": actor, "roles": ["admin"]}, "action": action,
             "resource_type": "workflow", "resource_id": f"w{i}", "execution_id": None,
             "before": None, "after": {"n": i}, "occurred_at": now, "prev_hash": "0" * 64,
             "hash": f"{i:064d}"}
            for i, (actor, action) in enumerate(
                [("a", "workflow.created"), ("b", "workflow.updated"), ("a", "workflow.updated")],
                start=1)
        ])

    by_actor = await client.get("/api/audit-log?actor=a", headers=org.headers(Role.VIEWER))
    by_action = await client.get("/api/audit-log?action=workflow.updated&limit=1",
                                 headers=org.headers())
    page2 = await client.get(
        f"/api/audit-log?action=workflow.updated&limit=1&cursor={by_action.json()['nextCursor']}",
        headers=org.headers())
    foreign = await client.get("/api/audit-log", headers=other_org.headers())

    assert [e["seq"] for e in by_actor.json()["items"]] == [3, 1]
    assert [e["resourceId"] for e in by_action.json()["items"]] == ["w3"]
    assert [e["resourceId"] for e in page2.json()["items"]] == ["w2"]
    assert foreign.json()["items"] == []
