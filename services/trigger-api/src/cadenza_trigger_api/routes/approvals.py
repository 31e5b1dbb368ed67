"""Approvals: the caller's inbox of open tasks with signed links, and deciding by signed link."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Query
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from cadenza_common import approval_links
from cadenza_common.approval_links import DecisionToken, ExpiredToken, InvalidToken
from cadenza_common.db.tables import api_keys, approval_decisions, approval_tasks, outbox
from cadenza_common.events import Actor, ApprovalDecisionSubmitted, utcnow
from cadenza_trigger_api import audit
from cadenza_trigger_api.auth import Principal
from cadenza_trigger_api.context import AppContext
from cadenza_trigger_api.deps import Ctx, Cursor, Limit, Reader
from cadenza_trigger_api.errors import BadRequest, Conflict, Forbidden, Gone, InvalidState, NotFound
from cadenza_trigger_api.outbox import outbox_row
from cadenza_trigger_api.pagination import (
    fetch_page,
)
from cadenza_trigger_api.wire import CamelModel, Page

router = APIRouter(prefix="/api/approvals", tags=["approvals"])

MAX_LINK_TTL = timedelta(hours=24)


class InvalidDecisionToken(BadRequest):
    slug, title = "invalid-decision-token", "The decision link is malformed or forged"


class ExpiredDecisionToken(Gone):
    slug, title = "expired-decision-token", "The decision link has expired"


class UsedDecisionToken(Conflict):
    slug, title = "used-decision-token", "The decision link was already used"


class DecisionLinks(CamelModel):
    approve: str
    reject: str
    expires_at: datetime


class InboxItem(CamelModel):
    task_id: uuid.UUID
    execution_id: uuid.UUID
    node_id: str
    attempt: int
    approvers: list[str]
    required: int
    four_eyes: bool
    instructions: str
    context: dict[str, Any]
    expires_at: datetime | None
    created_at: datetime
    links: DecisionLinks


class DecisionAccepted(CamelModel):
    task_id: uuid.UUID
    execution_id: uuid.UUID
    decision: Literal["approve", "reject"]
    status: Literal["accepted"] = "accepted"


def _identities(who: Principal) -> list[str]:
    return [f"role:{who.role.value}", f"key:{who.key_id}"]


@router.get("", response_model=Page[InboxItem])
async def inbox(ctx: Ctx, who: Reader, limit: Limit = None, cursor: Cursor = None
                ) -> Page[InboxItem]:
    size = ctx.page_size(limit)
    mine = array(_identities(who))
    t = approval_tasks
    query = sa.select(t).where(
        t.c.org_id == who.org_id, t.c.status == "open",
        sa.or_(t.c.approvers.has_any(mine),
               sa.and_(t.c.escalated_at.is_not(None), t.c.escalate_to.has_any(mine))),
    )
    async with ctx.engine.connect() as conn:
        rows, nxt = await fetch_page(conn, query, t.c.created_at, t.c.id, cursor, size)
    now = utcnow()
    return Page[InboxItem](items=[_item(ctx, who, r, now) for r in rows], next_cursor=nxt)


def _item(ctx: AppContext, who: Principal, row: Row[Any], now: datetime) -> InboxItem:
    expires = now + MAX_LINK_TTL
    if row.expires_at is not None:
        expires = min(expires, row.expires_at)
    key = approval_links.links_key(ctx.settings.security)
    urls = {
        decision: _link(ctx, approval_links.sign(key, DecisionToken(
            token_id=secrets.token_urlsafe(16), task_id=row.id, org_id=row.org_id,
            execution_id=row.execution_id, node_id=row.node_id, decision=decision,
            expires_at=expires, decided_by=who.key_id,
        )))
        for decision in ("approve", "reject")
    }
    return InboxItem(
        task_id=row.id, execution_id=row.execution_id, node_id=row.node_id, attempt=row.attempt,
        approvers=row.approvers, required=row.required, four_eyes=row.four_eyes,
        instructions=row.instructions, context=row.context, expires_at=row.expires_at,
        created_at=row.created_at,
        links=DecisionLinks(approve=urls["approve"], reject=urls["reject"], expires_at=expires),
    )


def _link(ctx: AppContext, token: str) -> str:
    return f"{ctx.settings.public_base_url.rstrip('/')}/api/approvals/decide?token={token}"


@router.post("/decide", status_code=202, response_model=DecisionAccepted)
async def decide_by_link(
    ctx: Ctx, token: Annotated[str, Query(min_length=1, max_length=4000)]
) -> DecisionAccepted:
    decided = _verify(ctx, token)
    async with ctx.engine.begin() as conn:
        await _check_unused(conn, decided)
        task = (
            await conn.execute(
                sa.select(approval_tasks.c.status, approval_tasks.c.attempt).where(
                    approval_tasks.c.id == decided.task_id,
                    approval_tasks.c.org_id == decided.org_id,
                )
            )
        ).first()
        if task is None:
            raise NotFound("the approval task no longer exists")
        if task.status != "open":
            raise InvalidState(f"the approval task is {task.status}")
        actor = Actor(kind="signed_link", id=decided.decided_by,
                      roles=await _roles_of(conn, decided))
        event = ApprovalDecisionSubmitted(
            execution_id=decided.execution_id, org_id=decided.org_id, node_id=decided.node_id,
            attempt=task.attempt, decision=decided.decision, decided_by=actor,
            token_id=decided.token_id,
        )
        row = outbox_row(ctx.topics.approvals_decisions, event)
        await conn.execute(outbox.insert().values(row))
        resource = ("execution", str(decided.execution_id))
        await audit.record(conn, ctx.topics, (decided.org_id, actor),
                           f"execution.{decided.decision}", resource,
                           execution_id=decided.execution_id,
                           after={"stepId": decided.node_id, "decision": decided.decision,
                                  "via": "signed_link"})
    return DecisionAccepted(task_id=decided.task_id, execution_id=decided.execution_id,
                            decision=decided.decision)


def _verify(ctx: AppContext, token: str) -> DecisionToken:
    key = approval_links.links_key(ctx.settings.security)
    try:
        return approval_links.verify(key, token, utcnow())
    except ExpiredToken:
        raise ExpiredDecisionToken("the decision link has expired") from None
    except InvalidToken as exc:
        raise InvalidDecisionToken(str(exc)) from None


async def _check_unused(conn: AsyncConnection, token: DecisionToken) -> None:
    used = (
        await conn.execute(
            sa.select(approval_decisions.c.id).where(
                approval_decisions.c.token_id == token.token_id
            )
        )
    ).first()
    if used is not None:
        raise UsedDecisionToken("this decision link was already used")


async def _roles_of(conn: AsyncConnection, token: DecisionToken) -> list[str]:
    key = (
        await conn.execute(
            sa.select(api_keys.c.role, api_keys.c.revoked_at).where(
                api_keys.c.id == token.decided_by, api_keys.c.org_id == token.org_id
            )
        )
    ).first()
    if key is None:
        return []
    if key.revoked_at is not None:
        raise Forbidden("the API key this link was issued to has been revoked")
    return [key.role]
