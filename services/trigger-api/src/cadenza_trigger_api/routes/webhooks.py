"""Webhook subscriptions: URL, event types, and a `whsec_` signing secret shown once."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Response
from pydantic import Field, HttpUrl
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from cadenza_common.db.tables import webhook_subscriptions
from cadenza_common.events import new_event_id, utcnow
from cadenza_common.webhook_signing import generate_secret
from cadenza_trigger_api import audit
from cadenza_trigger_api.deps import Ctx, Cursor, Editor, Limit, Reader
from cadenza_trigger_api.errors import Conflict, NotFound
from cadenza_trigger_api.pagination import (
    fetch_page,
)
from cadenza_trigger_api.wire import CamelModel, Page

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])

EventType = Annotated[str, Field(pattern=r"^[a-z0-9*][a-z0-9_.*-]{0,99}$")]


Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]


class WebhookCreate(CamelModel):
    name: Name | None = Field(
        default=None, description="what a workflow's `webhook_emit: {subscription: ...}` names")
    url: Annotated[HttpUrl, Field(max_length=2000)]
    event_types: Annotated[list[EventType], Field(min_length=1, max_length=50)]
    allow_private_network: bool = False


class WebhookOut(CamelModel):
    id: uuid.UUID
    name: str | None = None
    url: str
    event_types: list[str]
    allow_private_network: bool
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="the signing secret (`whsec_...`); shown only here")


def _out(row: Row[Any]) -> WebhookOut:
    return WebhookOut(id=row.id, name=row.name, url=row.url, event_types=row.event_types,
                      allow_private_network=row.allow_private_network, created_at=row.created_at)


@router.get("", response_model=Page[WebhookOut])
async def list_webhooks(ctx: Ctx, who: Reader, limit: Limit = None, cursor: Cursor = None
                        ) -> Page[WebhookOut]:
    size = ctx.page_size(limit)
    w = webhook_subscriptions
    query = sa.select(w).where(w.c.org_id == who.org_id, w.c.deleted_at.is_(None))
    async with ctx.engine.connect() as conn:
        rows, nxt = await fetch_page(conn, query, w.c.created_at, w.c.id, cursor, size)
    return Page[WebhookOut](items=[_out(r) for r in rows], next_cursor=nxt)


@router.post("", status_code=201, response_model=WebhookCreated)
async def create_webhook(body: WebhookCreate, ctx: Ctx, who: Editor) -> WebhookCreated:
    secret = generate_secret()
    try:
        async with ctx.engine.begin() as conn:
            row = (await conn.execute(
                webhook_subscriptions.insert().values(
                    id=new_event_id(), org_id=who.org_id, name=body.name, url=str(body.url),
                    event_types=body.event_types,
                    allow_private_network=body.allow_private_network,
                    secret_ciphertext=ctx.box.encrypt(secret,
                                                      context=ctx.org_context(who.org_id)),
                ).returning(webhook_subscriptions)
            )).one()
            out = _out(row)
            await audit.record(conn, ctx.topics, who, "webhook.created",
                               ("webhook", str(row.id)),
                               after=out.model_dump(mode="json", by_alias=True))
    except IntegrityError:
        raise Conflict(f"a webhook subscription named {body.name!r} already exists") from None
    return WebhookCreated(**out.model_dump(), secret=secret)


@router.delete("/{webhook_id}", status_code=204, response_class=Response)
async def delete_webhook(webhook_id: uuid.UUID, ctx: Ctx, who: Editor) -> Response:
    w = webhook_subscriptions
    async with ctx.engine.begin() as conn:
        row = (await conn.execute(
            w.update().where(w.c.id == webhook_id, w.c.org_id == who.org_id,
                             w.c.deleted_at.is_(None))
            .values(deleted_at=utcnow()).returning(w)
        )).first()
        if row is None:
            raise NotFound(f"webhook subscription {webhook_id} not found")
        await audit.record(conn, ctx.topics, who, "webhook.deleted", ("webhook", str(row.id)),
                           before=_out(row).model_dump(mode="json", by_alias=True))
    return Response(status_code=204)
