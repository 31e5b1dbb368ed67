"""The audit log (written by the audit-sink from `audit.records` and execution history)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Query

from cadenza_common.db.tables import audit_log
from cadenza_trigger_api.deps import Ctx, Cursor, Limit, Reader
from cadenza_trigger_api.errors import BadRequest
from cadenza_trigger_api.wire import CamelModel, Page, decode_cursor, encode_cursor

router = APIRouter(prefix="/api/audit-log", tags=["audit-log"])

Text = Annotated[str | None, Query(max_length=200)]


class AuditEntry(CamelModel):
    seq: int
    event_id: uuid.UUID
    actor: dict[str, Any]
    action: str
    resource_type: str
    resource_id: str
    execution_id: uuid.UUID | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    occurred_at: datetime
    recorded_at: datetime
    hash: str


@router.get("", response_model=Page[AuditEntry])
async def list_audit_log(
    ctx: Ctx,
    who: Reader,
    limit: Limit = None,
    cursor: Cursor = None,
    actor: Text = None,
    action: Text = None,
    resource_type: Annotated[str | None, Query(alias="resourceType", max_length=50)] = None,
    resource_id: Annotated[str | None, Query(alias="resourceId", max_length=200)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Page[AuditEntry]:
    size = ctx.page_size(limit)
    a = audit_log
    query = sa.select(a).where(a.c.org_id == who.org_id)
    if actor is not None:
        query = query.where(a.c.actor["id"].astext == actor)
    if action is not None:
        query = query.where(a.c.action == action)
    if resource_type is not None:
        query = query.where(a.c.resource_type == resource_type)
    if resource_id is not None:
        query = query.where(a.c.resource_id == resource_id)
    if since is not None:
        query = query.where(a.c.occurred_at >= since)
    if until is not None:
        query = query.where(a.c.occurred_at < until)
    if cursor:
        (below,) = decode_cursor(cursor, 1)
        if not isinstance(below, int):
            raise BadRequest("invalid cursor")
        query = query.where(a.c.org_seq < below)
    query = query.order_by(a.c.org_seq.desc()).limit(size + 1)
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    nxt = None
    if len(rows) > size:
        rows = rows[:size]
        nxt = encode_cursor([rows[-1].org_seq])
    items = [
        AuditEntry(
            seq=r.org_seq, event_id=r.event_id, actor=r.actor, action=r.action,
            resource_type=r.resource_type, resource_id=r.resource_id, execution_id=r.execution_id,
            before=r.before, after=r.after, occurred_at=r.occurred_at, recorded_at=r.recorded_at,
            hash=r.hash,
        )
        for r in rows
    ]
    return Page[AuditEntry](items=items, next_cursor=nxt)
