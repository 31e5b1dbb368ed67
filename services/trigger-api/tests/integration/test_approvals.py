"""The approvals inbox with signed links, and deciding through a link without an API key."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa

from cadenza_common import approval_links
from cadenza_common.approval_links import DecisionToken
from cadenza_common.db.tables import approval_decisions, approval_tasks, outbox
from cadenza_common.events import ApprovalDecisionSubmitted
from cadenza_common.kafka import decode
from cadenza_trigger_api.auth import Role
from cadenza_trigger_api.context import AppContext

from .conftest import Org

pytestmark = pytest.mark.integration


async def _task(ctx: AppContext, org: Org, approvers: list[str], *, status: str = "open",
                expires_in: timedelta | None = timedelta(hours=1)) -> uuid.UUID:
    """Stand in for the approvals service: one task."""
    task_id = uuid.uuid4()
    async with ctx.engine.begin() as conn:
        await conn.execute(approval_tasks.insert().values(
            id=task_id, org_id=org.id, execution_id=uuid.uuid4(), node_id="review",
            approvers=approvers, initiated_by={"kind": "api_key", "id": "k", "roles": []},
            instructions="check it", status=status,
            expires_at=None if expires_in is None else datetime.now(UTC) + expires_in))
    return task_id


def _token(link: str) -> str:
    return parse_qs(urlsplit(link).query)["token"][0]


async def _decisions_in_outbox(
    ctx: AppContext, task_execution: str
) -> list[ApprovalDecisionSubmitted]:
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(sa.select(outbox.c.value, outbox.c.headers)
                                   .where(outbox.c.key == task_execution))).all()
    events = [decode(r.value, [(k, v.encode()) for k, v in r.headers]) for r in rows]
    return [e for e in events if isinstance(e, ApprovalDecisionSubmitted)]


async def test_inbox_lists_open_tasks_for_the_callers_role_or_key(
    client: httpx.AsyncClient, org: Org, ctx: AppContext
) -> None:
    by_role = await _task(ctx, org, ["role:approver"])
    by_key = await _task(ctx, org, [f"key:{org.key_id(Role.APPROVER)}"])
    await _task(ctx, org, ["role:admin"])
    await _task(ctx, org, ["role:approver"], status="closed")

    response = await client.get("/api/approvals", headers=org.headers(Role.APPROVER))

    items = response.json()["items"]
    assert {i["taskId"] for i in items} == {str(by_role), str(by_key)}
    link = items[0]["links"]["approve"]
    token = approval_links.verify(approval_links.links_key(ctx.settings.security), _token(link),
                                  datetime.now(UTC))
    assert token.decided_by == org.key_id(Role.APPROVER)
    assert token.decision == "approve"
    assert token.expires_at <= datetime.now(UTC) + timedelta(hours=1)


async def test_links_are_minted_afresh_for_each_listing(
    client: httpx.AsyncClient, org: Org, ctx: AppContext
) -> None:
    await _task(ctx, org, ["role:approver"], expires_in=None)

    first = await client.get("/api/approvals", headers=org.headers(Role.APPROVER))
    second = await client.get("/api/approvals", headers=org.headers(Role.APPROVER))

    key = approval_links.links_key(ctx.settings.security)
    now = datetime.now(UTC)
    ids = {approval_links.verify(key, _token(r.json()["items"][0]["links"][d]), now).token_id
           for r in (first, second) for d in ("approve", "reject")}
    assert len(ids) == 4
    expiry = approval_links.verify(key, _token(first.json()["items"][0]["links"]["approve"]), now)
    assert expiry.expires_at <= now + timedelta(hours=24, seconds=5)


async def test_a_signed_link_publishes_the_decision_without_an_api_key(
    client: httpx.AsyncClient, org: Org, ctx: AppContext
) -> None:
    await _task(ctx, org, ["role:approver"])
    inbox = await client.get("/api/approvals", headers=org.headers(Role.APPROVER))
    item = inbox.json()["items"][0]

    response = await client.post(urlsplit(item["links"]["reject"]).path,
                                 params={"token": _token(item["links"]["reject"])})
    (decision,) = await _decisions_in_outbox(ctx, item["executionId"])

    assert response.status_code == 202
    assert decision.decision == "reject"
    assert decision.decided_by.kind == "signed_link"
    assert decision.decided_by.id == org.key_id(Role.APPROVER)
    assert decision.decided_by.roles == ["approver"]
    assert decision.token_id is not None


async def test_a_used_link_answers_409(client: httpx.AsyncClient, org: Org, ctx: AppContext
                                       ) -> None:
    task_id = await _task(ctx, org, ["role:approver"])
    inbox = await client.get("/api/approvals", headers=org.headers(Role.APPROVER))
    item = inbox.json()["items"][0]
    token = _token(item["links"]["approve"])
    decided = approval_links.verify(approval_links.links_key(ctx.settings.security), token,
                                    datetime.now(UTC))
    async with ctx.engine.begin() as conn:  # the approvals service accepted it
        await conn.execute(approval_decisions.insert().values(
            id=uuid.uuid4(), event_id=uuid.uuid4(), task_id=task_id, org_id=org.id,
            execution_id=uuid.UUID(item["executionId"]), node_id="review",
            decided_by={"kind": "signed_link", "id": decided.decided_by}, decision="approve",
            accepted=True, token_id=decided.token_id))

    response = await client.post("/api/approvals/decide", params={"token": token})

    assert response.status_code == 409
    assert response.json()["type"].endswith("used-decision-token")


async def test_forged_and_expired_links_are_refused(
    client: httpx.AsyncClient, org: Org, ctx: AppContext
) -> None:
    task_id = await _task(ctx, org, ["role:approver"])
    claims = DecisionToken(token_id="t1", task_id=task_id, org_id=org.id,
                           execution_id=uuid.uuid4(), node_id="review", decision="approve",
                           expires_at=datetime.now(UTC) - timedelta(seconds=1),
                           decided_by=org.key_id(Role.APPROVER))
    key = approval_links.links_key(ctx.settings.security)
    expired = approval_links.sign(key, claims)
    forged = approval_links.sign(b"not-the-key" * 3, claims.model_copy(
        update={"expires_at": datetime.now(UTC) + timedelta(hours=1)}))

    e = await client.post("/api/approvals/decide", params={"token": expired})
    f = await client.post("/api/approvals/decide", params={"token": forged})
    g = await client.post("/api/approvals/decide", params={"token": "garbage"})

    assert e.status_code == 410
    assert f.status_code == 400
    assert g.status_code == 400
    assert f.json()["type"].endswith("invalid-decision-token")
