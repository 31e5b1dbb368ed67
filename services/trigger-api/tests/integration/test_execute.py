"""Execute: the request row and its ExecutionRequested, idempotency, input schema, rate limit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import pytest
import sqlalchemy as sa

from cadenza_common.db.tables import outbox
from cadenza_common.events import Event, ExecutionRequested, utcnow
from cadenza_common.settings import KafkaSettings
from cadenza_trigger_api.auth import Role
from cadenza_trigger_api.context import AppContext
from cadenza_trigger_api.outbox import OutboxRelay

from .conftest import MakeOrg, Org, Publish, read_events

pytestmark = pytest.mark.integration

T = TypeVar("T")


def _requested(execution_id: str) -> object:
    def want(event: Event) -> bool:
        return isinstance(event, ExecutionRequested) and str(event.execution_id) == execution_id

    return want


async def test_execute_answers_202_and_publishes_the_version_snapshot(
    client: httpx.AsyncClient, org: Org, publish: Publish, relay: OutboxRelay, ctx: AppContext,
    live_kafka: KafkaSettings,
) -> None:
    wf = await publish(org, "snap")
    version = (await client.get("/api/workflows/snap/versions/1", headers=org.headers())).json()

    response = await client.post("/api/workflows/snap/execute", headers=org.headers(Role.OPERATOR),
                                 json={"input": {"customer": "ada"}})
    execution_id = response.json()["executionId"]
    events = await read_events(live_kafka, ctx.topics.executions_commands,
                               _requested(execution_id), count=1)  # type: ignore[arg-type]

    assert response.status_code == 202
    assert response.json()["created"] is True
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, ExecutionRequested)
    assert event.workflow == version["spec"]
    assert event.workflow_id == uuid.UUID(wf["id"])
    assert event.workflow_version == 1
    assert event.input == {"customer": "ada"}
    assert event.initiated_by.kind == "api_key"
    assert event.initiated_by.id == org.key_id(Role.OPERATOR)
    assert event.initiated_by.roles == ["operator"]


async def test_twenty_concurrent_duplicates_make_one_execution_and_one_event(
    client: httpx.AsyncClient, org: Org, publish: Publish, relay: OutboxRelay, ctx: AppContext,
    live_kafka: KafkaSettings,
) -> None:
    await publish(org, "idem")
    body = {"input": {"customer": "bob"}, "externalId": "order-42"}

    responses = await asyncio.gather(*[
        client.post("/api/workflows/idem/execute", headers=org.headers(), json=body)
        for _ in range(20)
    ])
    ids = {r.json()["executionId"] for r in responses}
    (execution_id,) = ids
    events = await read_events(live_kafka, ctx.topics.executions_commands,
                               _requested(execution_id), count=1,  # type: ignore[arg-type]
                               settle_s=2.0)

    assert sorted(r.status_code for r in responses) == [200] * 19 + [202]
    assert len(events) == 1
    assert events[0].external_id == "order-42"  # type: ignore[attr-defined]


async def test_repeat_after_the_fact_returns_the_same_execution_with_200(
    client: httpx.AsyncClient, org: Org, publish: Publish
) -> None:
    await publish(org, "again")
    body = {"input": {"customer": "c"}, "externalId": "x-1"}

    first = await client.post("/api/workflows/again/execute", headers=org.headers(), json=body)
    second = await client.post("/api/workflows/again/execute", headers=org.headers(), json=body)

    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["executionId"] == second.json()["executionId"]
    assert second.json()["created"] is False


async def test_input_is_validated_against_the_inputs_schema(
    client: httpx.AsyncClient, org: Org, publish: Publish
) -> None:
    await publish(org, "schema")

    response = await client.post("/api/workflows/schema/execute", headers=org.headers(),
                                 json={"input": {"customer": 7}})

    assert response.status_code == 422
    assert response.json()["type"] == "https://cadenza.dev/problems/invalid-input"
    assert response.json()["errors"][0]["path"] == "input.customer"


async def test_draft_paused_and_archived_workflows_cannot_execute(
    client: httpx.AsyncClient, org: Org, publish: Publish
) -> None:
    await client.post("/api/workflows", headers=org.headers(), json={"slug": "dr", "name": "d"})
    await publish(org, "pa")
    await client.post("/api/workflows/pa/pause", headers=org.headers())
    await publish(org, "ar")
    await client.post("/api/workflows/ar/archive", headers=org.headers())
    body = {"input": {"customer": "c"}}

    codes = [
        (await client.post(f"/api/workflows/{s}/execute", headers=org.headers(), json=body))
        .status_code
        for s in ("dr", "pa", "ar")
    ]

    assert codes == [409, 409, 409]


async def test_a_specific_version_can_be_executed_and_a_missing_one_is_404(
    client: httpx.AsyncClient, org: Org, publish: Publish
) -> None:
    await publish(org, "vers")
    await client.post("/api/workflows/vers/publish", headers=org.headers())
    body = {"input": {"customer": "c"}}

    v1 = await client.post("/api/workflows/vers/execute", headers=org.headers(),
                           json={**body, "version": 1})
    v9 = await client.post("/api/workflows/vers/execute", headers=org.headers(),
                           json={**body, "version": 9})

    assert v1.json()["workflowVersion"] == 1
    assert v9.status_code == 404


async def in_one_window(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run `attempt`, again if a minute began meanwhile (a new rate-limit window)."""
    for _ in range(2):
        minute = utcnow().minute
        result = await attempt()
        if utcnow().minute == minute:
            break
        await asyncio.sleep(1)
    return result


async def test_rate_limit_answers_429_with_retry_after_past_the_limit(
    client: httpx.AsyncClient, make_org: MakeOrg, publish: Publish
) -> None:
    org = await make_org(executions_per_minute=3)
    await publish(org, "rl")
    body = {"input": {"customer": "c"}}

    async def four() -> list[httpx.Response]:
        return [
            (await client.post("/api/workflows/rl/execute", headers=org.headers(), json=body))
            for _ in range(4)
        ]

    codes = await in_one_window(four)

    assert [r.status_code for r in codes] == [202, 202, 202, 429]
    assert codes[-1].json()["type"] == "https://cadenza.dev/problems/rate-limited"
    assert 1 <= int(codes[-1].headers["retry-after"]) <= 60


async def test_a_workflow_executed_before_is_checked_again_on_every_execute(
    client: httpx.AsyncClient, org: Org, publish: Publish, ctx: AppContext
) -> None:
    await publish(org, "warm")
    body = {"input": {"customer": "c"}}

    async def execute() -> httpx.Response:
        return await client.post("/api/workflows/warm/execute", headers=org.headers(), json=body)

    first, second = await execute(), await execute()
    known = (org.id, "warm") in ctx.workflows
    await client.post("/api/workflows/warm/pause", headers=org.headers())
    paused = await execute()
    await client.post("/api/workflows/warm/resume", headers=org.headers())
    resumed = await execute()
    await client.post("/api/workflows/warm/publish", headers=org.headers())
    republished = await execute()
    await client.post("/api/workflows/warm/archive", headers=org.headers())
    archived = await execute()

    assert known
    assert [r.status_code for r in (first, second, paused, resumed, republished, archived)] == [
        202, 202, 409, 202, 202, 409]
    assert [r.json()["workflowVersion"] for r in (first, second, resumed, republished)] == [
        1, 1, 1, 2]


async def test_a_request_that_finds_the_workflow_changed_is_counted_once(
    client: httpx.AsyncClient, make_org: MakeOrg, publish: Publish
) -> None:
    org = await make_org(executions_per_minute=3)
    await publish(org, "rl2")
    body = {"input": {"customer": "c"}}

    async def execute() -> int:
        response = await client.post("/api/workflows/rl2/execute", headers=org.headers(),
                                     json=body)
        return response.status_code

    async def two_then_republish_then_two() -> list[int]:
        codes = [await execute(), await execute()]
        await client.post("/api/workflows/rl2/publish", headers=org.headers())
        return [*codes, await execute(), await execute()]

    assert await in_one_window(two_then_republish_then_two) == [202, 202, 202, 429]


@pytest.mark.parametrize(("role", "status"), [
    (Role.VIEWER, 403), (Role.APPROVER, 403), (Role.OPERATOR, 202), (Role.EDITOR, 202),
])
async def test_execute_needs_operator_editor_or_admin(
    client: httpx.AsyncClient, org: Org, publish: Publish, role: Role, status: int
) -> None:
    await publish(org, "roles")

    response = await client.post("/api/workflows/roles/execute", headers=org.headers(role),
                                 json={"input": {"customer": "c"}})

    assert response.status_code == status


async def test_another_orgs_workflow_cannot_be_executed(
    client: httpx.AsyncClient, org: Org, other_org: Org, publish: Publish
) -> None:
    wf = await publish(org, "private")

    response = await client.post(f"/api/workflows/{wf['id']}/execute",
                                 headers=other_org.headers(), json={"input": {"customer": "c"}})

    assert response.status_code == 404


async def test_outbox_rows_wait_while_kafka_is_unreachable_then_deliver(
    client: httpx.AsyncClient, org: Org, publish: Publish, ctx: AppContext,
    live_kafka: KafkaSettings,
) -> None:
    await publish(org, "down")
    execution_id = (await client.post("/api/workflows/down/execute", headers=org.headers(),
                                      json={"input": {"customer": "c"}})).json()["executionId"]
    dead = live_kafka.model_copy(update={"bootstrap_servers": "127.0.0.1:1"})
    stop = asyncio.Event()
    down = asyncio.create_task(OutboxRelay(ctx.pool, dead, retry_s=0.2).run(stop))
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.wait_for(down, 10)
    async with ctx.engine.connect() as conn:
        unsent_while_down = (await conn.execute(
            sa.select(sa.func.count()).select_from(outbox).where(
                outbox.c.sent_at.is_(None), outbox.c.key == execution_id))).scalar_one()

    stop = asyncio.Event()
    up = asyncio.create_task(OutboxRelay(ctx.pool, live_kafka).run(stop))
    events = await read_events(live_kafka, ctx.topics.executions_commands,
                               _requested(execution_id), count=1)  # type: ignore[arg-type]
    stop.set()
    await asyncio.wait_for(up, 30)

    assert unsent_while_down == 1
    assert len(events) == 1
