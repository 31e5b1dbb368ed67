"""API keys: list, mint (the plaintext is shown once), revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Path, Response
from pydantic import Field
from sqlalchemy.engine import Row

from cadenza_common.db.tables import api_keys
from cadenza_common.events import utcnow
from cadenza_trigger_api import audit
from cadenza_trigger_api.auth import Role
from cadenza_trigger_api.deps import Admin, Ctx, Cursor, Limit
from cadenza_trigger_api.errors import NotFound
from cadenza_trigger_api.pagination import (
    fetch_page,
)
from cadenza_trigger_api.wire import CamelModel, Page

router = APIRouter(prefix="/api/api-keys", tags=["api-keys"])

KeyId = Annotated[str, Path(min_length=1, max_length=64)]


class KeyCreate(CamelModel):
    name: str = Field(min_length=1, max_length=200)
    role: Role


class KeyOut(CamelModel):
    id: str
    name: str
    role: Role
    created_by: str | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="the key itself; shown only in this response")


def _out(row: Row[Any]) -> KeyOut:
    return KeyOut(
        id=row.id, name=row.name, role=Role(row.role), created_by=row.created_by,
        created_at=row.created_at, revoked_at=row.revoked_at, last_used_at=row.last_used_at,
    )


PUBLIC = [c for c in api_keys.c if c.name != "secret_hash"]


@router.get("", response_model=Page[KeyOut])
async def list_keys(ctx: Ctx, who: Admin, limit: Limit = None, cursor: Cursor = None
                    ) -> Page[KeyOut]:
    size = ctx.page_size(limit)
    query = sa.select(*PUBLIC).where(api_keys.c.org_id == who.org_id)
    async with ctx.engine.connect() as conn:
        rows, nxt = await fetch_page(
            conn, query, api_keys.c.created_at, api_keys.c.id, cursor, size, parse_id=str
        )
    return Page[KeyOut](items=[_out(r) for r in rows], next_cursor=nxt)


@router.post("", status_code=201, response_model=KeyCreated)
async def create_key(body: KeyCreate, ctx: Ctx, who: Admin) -> KeyCreated:
    new = ctx.hasher.mint()
    async with ctx.engine.begin() as conn:
        row = (
            await conn.execute(
                api_keys.insert()
                .values(id=new.key_id, org_id=who.org_id, name=body.name, role=body.role.value,
                        secret_hash=new.secret_hash, created_by=who.key_id)
                .returning(*PUBLIC)
            )
        ).one()
        out = _out(row)
        await audit.record(conn, ctx.topics, who, "api_key.created", ("api_key", new.key_id),
                           after=out.model_dump(mode="json", by_alias=True))
    return KeyCreated(**out.model_dump(), key=new.plaintext)


@router.delete("/{key_id}", status_code=204, response_class=Response)
async def revoke_key(key_id: KeyId, ctx: Ctx, who: Admin) -> Response:
    async with ctx.engine.begin() as conn:
        before = (
            await conn.execute(
                sa.select(*PUBLIC).where(api_keys.c.id == key_id, api_keys.c.org_id == who.org_id)
                .with_for_update()
            )
        ).first()
        if before is None:
            raise NotFound(f"API key {key_id!r} not found")
        if before.revoked_at is None:
            after = (
                await conn.execute(
                    api_keys.update().where(api_keys.c.id == key_id)
                    .values(revoked_at=utcnow()).returning(*PUBLIC)
                )
            ).one()
            await audit.record(conn, ctx.topics, who, "api_key.revoked", ("api_key", key_id),
                               before=_out(before).model_dump(mode="json", by_alias=True),
                               after=_out(after).model_dump(mode="json", by_alias=True))
    ctx.authenticator.forget(key_id)
    return Response(status_code=204)
