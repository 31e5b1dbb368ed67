"""Sub-workflows: publish refuses unresolvable references; execute bundles the snapshots."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from cadenza_common.events import Event, ExecutionRequested
from cadenza_common.settings import KafkaSettings
from cadenza_trigger_api.context import AppContext
from cadenza_trigger_api.outbox import OutboxRelay

from .conftest import Org, Publish, read_events

pytestmark = pytest.mark.integration


def _spec(*refs: dict[str, Any]) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [
        {"id": f"child_{i}", "type": "sub_workflow", "workflow": ref} for i, ref in enumerate(refs)
    ]
    return {"nodes": nodes or [{"id": "t", "type": "transform", "expression": "1"}]}


def _slug(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def test_publish_refuses_a_sub_workflow_that_does_not_resolve(
    client: httpx.AsyncClient, org: Org
) -> None:
    slug = _slug("parent")
    await client.post("/api/workflows", headers=org.headers(), json={
        "slug": slug, "name": slug, "spec": _spec({"slug": "nowhere"})})

    answer = await client.post(f"/api/workflows/{slug}/publish", headers=org.headers())
    after = await client.get(f"/api/workflows/{slug}", headers=org.headers())

    assert answer.status_code == 422, answer.text
    assert answer.json()["type"].endswith("/unresolvable-sub-workflow")
    assert answer.json()["errors"][0]["path"] == "nodes[0].workflow"
    assert after.json()["latestVersion"] is None


async def test_publish_refuses_a_pinned_version_that_does_not_exist(
    client: httpx.AsyncClient, org: Org, publish: Publish
) -> None:
    child = _slug("child")
    await publish(org, child, _spec())
    slug = _slug("parent")
    await client.post("/api/workflows", headers=org.headers(), json={
        "slug": slug, "name": slug, "spec": _spec({"slug": child, "version": 2})})

    answer = await client.post(f"/api/workflows/{slug}/publish", headers=org.headers())

    assert answer.status_code == 422, answer.text
    assert "no published version 2" in answer.json()["errors"][0]["message"]


async def test_execute_bundles_every_sub_workflow_snapshot_recursively(
    client: httpx.AsyncClient, org: Org, publish: Publish, relay: OutboxRelay, ctx: AppContext,
    live_kafka: KafkaSettings,
) -> None:
    grandchild, child, parent = _slug("grandchild"), _slug("child"), _slug("parent")
    grand = await publish(org, grandchild, _spec())
    kid = await publish(org, child, _spec({"slug": grandchild}))
    await publish(org, parent, _spec({"slug": child}, {"slug": child, "version": 1}))

    answer = await client.post(f"/api/workflows/{parent}/execute", headers=org.headers(),
                               json={"input": {}})
    execution_id = answer.json()["executionId"]

    def want(event: Event) -> bool:
        return isinstance(event, ExecutionRequested) and str(event.execution_id) == execution_id

    [event] = await read_events(live_kafka, ctx.topics.executions_commands, want, count=1)
    assert isinstance(event, ExecutionRequested)
    assert set(event.sub_workflows) == {child, f"{child}@1", grandchild}
    assert event.sub_workflows[child].workflow_id == uuid.UUID(kid["id"])
    assert event.sub_workflows[child].workflow_version == 1
    assert event.sub_workflows[child].workflow["nodes"][0]["workflow"] == {"slug": grandchild}
    assert event.sub_workflows[grandchild].workflow_id == uuid.UUID(grand["id"])
    assert event.sub_workflows[grandchild].workflow["slug"] == grandchild


async def test_execute_refuses_when_a_sub_workflow_was_archived_since_publish(
    client: httpx.AsyncClient, org: Org, publish: Publish
) -> None:
    child, parent = _slug("child"), _slug("parent")
    await publish(org, child, _spec())
    await publish(org, parent, _spec({"slug": child}))
    await client.post(f"/api/workflows/{child}/archive", headers=org.headers())

    answer = await client.post(f"/api/workflows/{parent}/execute", headers=org.headers(),
                               json={"input": {}})

    assert answer.status_code == 422, answer.text
    assert child in answer.json()["detail"]
